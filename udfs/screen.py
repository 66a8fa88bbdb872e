"""The safety screen of originals: harm probability of every valid (query, response).

Reads: ``query``, ``response``. Adds: ``harm`` (probability that the response is a
harmful answer to the query, by the configured harm check: the head over the encoder's
embeddings or the guard model, :mod:`cleancurate.engine.harm`; NaN when it could not be
scored), ``error`` (:data:`RETURN_TYPE`).

The job runs it on every valid row before selection: an original the screen flags is
never curated (a language model must not polish harmful text), and by default leaves
the clean mix for the quarantine table (``harm.screen_action``). The batch function is
:func:`cleancurate.engine.harm.check_batch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pandas as pd

from cleancurate.engine.harm import backend, check_batch, load_guard
from cleancurate.schemas.udf import SCREEN as RETURN_TYPE  # noqa: F401  (the Spark type of the batch function)

if TYPE_CHECKING:
    from cleancurate.config import Config


def make_screen_fn(cfg: Config) -> Callable[[pd.Series, pd.Series], pd.DataFrame]:
    """Factory: the worker's cached models for the configured check, and a batch function."""
    from cleancurate.models import load

    kind = backend(cfg.harm)
    if kind is None:
        raise ValueError("the safety screen needs a harm check: harm.head_file (harm.backend head) or "
                         "harm.guard_model (harm.backend guard); set harm.screen: false to run without it")
    enc = load(cfg, "encoder") if kind == "head" else None
    guard = load_guard(cfg) if kind == "guard" else None

    def fn(queries: pd.Series, responses: pd.Series) -> pd.DataFrame:
        return check_batch(cfg.harm, cfg.runtime, enc, guard, queries.fillna("").tolist(),
                           responses.fillna("").tolist())

    return fn
