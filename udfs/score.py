"""The candidate scorer: every quality signal of a candidate in one pass.

Reads: ``query``, ``text`` (the candidate, raw), ``original``. Adds: the scores of the
candidate contract (:mod:`cleancurate.schemas.candidate`; :data:`RETURN_TYPE`): text
statistics, perplexity, retention (where the gate still needs it), embedding signals,
the configured harm check, helpfulness and the first error.

The batch function is :func:`cleancurate.engine.scorer.score_candidates`; the factory
loads the worker's causal LM, encoder, (``metrics.helpfulness: judge``) judge and
(``harm.backend: guard``) guard model once, so each executor process imports torch and
holds the models once, instead of once per chained UDF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pandas as pd

from cleancurate.engine.harm import backend as harm_backend
from cleancurate.engine.harm import load_guard
from cleancurate.engine.scorer import score_candidates
from cleancurate.engine.served import load_or_serve
from cleancurate.schemas.udf import SCORES as RETURN_TYPE  # noqa: F401  (the Spark type of the batch function)

if TYPE_CHECKING:
    from cleancurate.config import Config


def make_scorer(cfg: Config, strip: bool) -> Callable[..., pd.DataFrame]:
    """Factory: load (or reuse) the worker's models and return the batch function.

    ``strip``: candidates have a leading announcement stripped and are held against the
    gate's early rules; originals (round 0) are scored as they are.
    """
    from cleancurate.models import load

    lm, enc = load(cfg, "lm"), load(cfg, "encoder")
    judge = load_or_serve(cfg, "judge") if cfg.metrics.helpfulness == "judge" else None
    guard = load_guard(cfg) if harm_backend(cfg.harm) == "guard" else None

    def fn(queries: pd.Series, texts: pd.Series, originals: pd.Series) -> pd.DataFrame:
        return score_candidates(lm, enc, judge, queries.fillna("").tolist(), texts.fillna("").tolist(),
                                originals.fillna("").tolist(), strip=strip, cfg=cfg, guard=guard)

    return fn
