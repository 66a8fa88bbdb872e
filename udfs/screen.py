"""The safety screen of originals: harm probability of every valid (query, response).

Reads: ``query``, ``response``. Adds: ``harm`` (probability that the response is a
harmful answer to the query, by the configured harm check: the head over the encoder's
embeddings or the guard model, :mod:`cleancurate.engine.harm`; NaN when it could not be
scored), ``error``.

The job runs it on every valid row before selection: an original the screen flags is
never curated (a language model must not polish harmful text), and by default leaves
the clean mix for the quarantine table (``harm.screen_action``).

The batch function is :func:`cleancurate.engine.harm.check_batch`;
:func:`make_screen_fn` loads the worker's encoder and head, or its guard model, once;
:func:`screen_udf` is the Spark wrapper.
"""

from typing import Callable, Iterator, Tuple

import pandas as pd

from cleancurate.engine.harm import backend, check_batch, load_guard
from cleancurate.schemas.udf import SCREEN


def make_screen_fn(cfg: dict) -> Callable[[pd.Series, pd.Series], pd.DataFrame]:
    """Factory: the worker's cached models for the configured check, and a batch function."""
    from cleancurate.models import get_model

    kind = backend(cfg)
    if kind is None:
        raise ValueError("the safety screen needs a harm check: harm.head_file (harm.backend head) or "
                         "harm.guard_model (harm.backend guard); set harm.screen: false to run without it")
    mc = cfg["model"]
    enc, guard = None, None
    if kind == "head":
        enc = get_model(cfg["metrics"]["embedder"], "encoder", mc["device"], "auto", mc["allow_network"])
    else:
        guard = load_guard(cfg)

    def fn(queries: pd.Series, responses: pd.Series) -> pd.DataFrame:
        return check_batch(cfg, enc, guard, queries.fillna("").tolist(), responses.fillna("").tolist())

    return fn


def screen_udf(cfg: dict):
    """Spark iterator pandas UDF ``(query, response) -> struct<harm, error>``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(SCREEN)
    def screen(batches: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        fn = make_screen_fn(cfg)
        for queries, responses in batches:
            yield fn(queries, responses)

    return screen.asNondeterministic()
