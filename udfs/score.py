"""The candidate scorer UDF: every quality signal of a candidate in one pass.

Reads: ``query``, ``text`` (the candidate, raw), ``original``.
Adds: ``clean_text``, ``stripped_preamble``, ``meta_text``, ``form_fault``,
``readability``, ``repeat_ratio``, ``compression_ratio``, ``length_ratio`` (text
statistics), ``ppl``, ``scored_tokens`` (perplexity), ``retention`` (how much of the
original the candidate carries, by the same model), ``relevance``, ``similarity``,
``safety`` (embeddings), ``harm`` (the configured harm check, :mod:`cleancurate.engine.harm`:
the head over the same embeddings, or the guard model), ``helpfulness`` (relevance or the
LLM judge) and ``error``.

The batch function is :func:`cleancurate.engine.scorer.score_candidates`; the factory
loads the worker's causal LM, encoder, (``metrics.helpfulness: judge``) judge and
(``harm.backend: guard``) guard model once, so each executor process imports torch and
holds the models once, instead of once per chained UDF.
"""

from typing import Callable, Iterator, Tuple

import pandas as pd

from cleancurate.engine.harm import backend as harm_backend
from cleancurate.engine.harm import load_guard
from cleancurate.engine.scorer import score_candidates
from cleancurate.schemas.udf import SCORES


def make_scorer(cfg: dict, strip: bool) -> Callable[..., pd.DataFrame]:
    """Factory: load (or reuse) the worker's models and return the batch function."""
    from cleancurate.models import get_model

    mc, rc, mt = cfg["model"], cfg["runtime"], cfg["metrics"]
    lm = get_model(mc["name"], "causal-lm", mc["device"], mc["dtype"], mc["allow_network"], rc.get("num_threads"))
    enc = get_model(mt["embedder"], "encoder", mc["device"], "auto", mc["allow_network"])
    judge = None
    if mt["helpfulness"] == "judge":
        judge = get_model(mt.get("judge_model") or mc["name"], "causal-lm", mc["device"], mc["dtype"],
                          mc["allow_network"], rc.get("num_threads"))
    guard = load_guard(cfg) if harm_backend(cfg) == "guard" else None

    def fn(queries: pd.Series, texts: pd.Series, originals: pd.Series) -> pd.DataFrame:
        return score_candidates(lm, enc, judge, queries.fillna("").tolist(), texts.fillna("").tolist(),
                                originals.fillna("").tolist(), strip=strip, cfg=cfg, guard=guard)

    return fn


def scorer_udf(cfg: dict, strip: bool = True):
    """Spark iterator pandas UDF ``(query, text, original) -> struct<SCORES>``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(SCORES)
    def score(batches: Iterator[Tuple[pd.Series, pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        fn = make_scorer(cfg, strip)
        for queries, texts, originals in batches:
            yield fn(queries, texts, originals)

    return score.asNondeterministic()
