"""Perplexity of a response conditioned on its query.

Reads: ``query``, ``text`` (the response to score). Adds: ``ppl``, ``scored_tokens``, ``error``.

The batch function is :func:`cleancurate.engine.perplexity.score_batch`;
:func:`make_score_fn` loads the worker's cached model once and returns it with the
configured token budget, compilation, context and stride; :func:`perplexity_udf` is
the Spark iterator pandas UDF.
"""

from typing import Callable, Iterator, Tuple

import pandas as pd

from cleancurate.batching import resolve_score_compile, resolve_scoring_budget
from cleancurate.engine.perplexity import score_batch
from cleancurate.schemas.udf import PERPLEXITY


def make_score_fn(model_cfg: dict, runtime_cfg: dict) -> Callable[[pd.Series, pd.Series], pd.DataFrame]:
    """Factory: the worker's cached model and a batch function over pandas Series."""
    from cleancurate.models import get_model

    lm = get_model(
        model_cfg["name"], "causal-lm", model_cfg["device"], model_cfg["dtype"],
        model_cfg["allow_network"], runtime_cfg.get("num_threads"),
    )

    def fn(queries: pd.Series, texts: pd.Series) -> pd.DataFrame:
        return score_batch(
            lm.model, lm.tokenizer, queries.fillna("").tolist(), texts.fillna("").tolist(),
            token_budget=resolve_scoring_budget(lm.model, runtime_cfg["token_budget"]),
            compile=resolve_score_compile(lm.model, runtime_cfg.get("score_compile")), max_context=model_cfg.get("max_context"),
            stride=runtime_cfg["score_stride"],
        )

    return fn


def perplexity_udf(model_cfg: dict, runtime_cfg: dict):
    """Spark iterator pandas UDF ``(query, text) -> struct<ppl, scored_tokens, error>``.

    Build it once per job: the model cache key is the model spec, not the UDF.
    """
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(PERPLEXITY)
    def perplexity(batches: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        fn = make_score_fn(model_cfg, runtime_cfg)
        for queries, texts in batches:
            yield fn(queries, texts)

    return perplexity.asNondeterministic()
