"""The safety screen of originals: harm probability of every valid (query, response).

Reads: ``query``, ``response``. Adds: ``harm`` (probability that the response is a
harmful answer to the query, by :class:`cleancurate.safety.HarmHead` over the
encoder's embeddings; NaN when it could not be scored), ``error``.

The job runs it on every valid row before selection: an original the screen flags is
never curated (a language model must not polish harmful text), and by default leaves
the clean mix for the quarantine table (``harm.screen_action``).

Three layers: :func:`screen_batch` (pure), :func:`make_screen_fn` (loads the
worker's encoder once), :func:`screen_udf` (the Spark wrapper).
"""

from typing import Callable, Iterator, Sequence, Tuple

import pandas as pd

from cleancurate.batching import error_text
from cleancurate.schemas.udf import SCREEN, SCREEN_COLUMNS


def screen_batch(model, tokenizer, head, queries: Sequence[str], responses: Sequence[str]) -> pd.DataFrame:
    """Harm probability per (query, response), in input order; a failing row gets an ``error``."""
    from cleancurate.udfs.similarity import embed

    n = len(queries)
    if n == 0:
        return pd.DataFrame({"harm": [], "error": []})[SCREEN_COLUMNS]
    try:
        q = embed(model, tokenizer, list(queries))
        t = embed(model, tokenizer, list(responses))
        return pd.DataFrame({"harm": head.score(q, t, responses), "error": [None] * n})[SCREEN_COLUMNS]
    except Exception as exc:  # noqa: BLE001 - isolate the failing row by halving
        if n == 1:
            return pd.DataFrame({"harm": [float("nan")], "error": [error_text(exc)]})[SCREEN_COLUMNS]
        mid = n // 2
        return pd.concat([screen_batch(model, tokenizer, head, queries[:mid], responses[:mid]),
                          screen_batch(model, tokenizer, head, queries[mid:], responses[mid:])], ignore_index=True)


def make_screen_fn(cfg: dict) -> Callable[[pd.Series, pd.Series], pd.DataFrame]:
    """Factory: the worker's cached encoder and the configured head, and a batch function."""
    from cleancurate.models import get_model
    from cleancurate.udfs.score import harm_head

    mc = cfg["model"]
    enc = get_model(cfg["metrics"]["embedder"], "encoder", mc["device"], "auto", mc["allow_network"])
    head = harm_head(cfg)
    if head is None:
        raise ValueError("the safety screen needs harm.head_file; set harm.screen: false to run without it")

    def fn(queries: pd.Series, responses: pd.Series) -> pd.DataFrame:
        return screen_batch(enc.model, enc.tokenizer, head, queries.fillna("").tolist(), responses.fillna("").tolist())

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
