"""The harm check: harm probability of a (query, response), and the worker's harm head.

:func:`screen_batch` scores each (query, response) with :class:`cleancurate.safety.HarmHead`
over the encoder's embeddings (NaN and an ``error`` for a row that could not be scored).
The curation job's safety screen runs it on every valid original before selection (a
language model must not polish harmful text); the evaluation job runs it as its
``harm_head`` judge. :func:`harm_head` parses the configured head once per worker.
"""

from typing import Sequence

import pandas as pd

from cleancurate.batching import error_text
from cleancurate.engine.embedding import embed
from cleancurate.schemas.udf import SCREEN_COLUMNS

_HEADS: dict = {}


def harm_head(cfg: dict):
    """The configured :class:`cleancurate.safety.HarmHead` (parsed once per worker), or None."""
    text = (cfg.get("harm") or {}).get("head") or ""
    if not text:
        return None
    if text not in _HEADS:
        from cleancurate.safety import HarmHead

        _HEADS[text] = HarmHead.from_json(text)
    return _HEADS[text]


def screen_batch(model, tokenizer, head, queries: Sequence[str], responses: Sequence[str]) -> pd.DataFrame:
    """Harm probability per (query, response), in input order; a failing row gets an ``error``."""
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
