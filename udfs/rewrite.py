"""Rewrite generation: sample revisions of a response for a grid of settings.

Reads: ``query``, ``parent_text``, ``temperature``, ``top_p``, ``seed``.
Adds: ``text``, ``gen_tokens``, ``error`` (:data:`RETURN_TYPE`).

The model engine does the work: prompts from :mod:`cleancurate.engine.prompting`, then
:func:`cleancurate.engine.generate.generate_batch` (transformers, the default; its
module says what determinism it promises) or
:func:`cleancurate.engine.vllm_backend.generate_batch_vllm` (``model.backend: vllm``) or
:func:`cleancurate.engine.served.generate_batch_served` (``model.backend: server``: an
OpenAI-compatible inference server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pandas as pd

from cleancurate.engine.generate import generate_batch
from cleancurate.engine.prompting import build_prompts, stop_token_ids
from cleancurate.engine.served import SERVER_RENDERS, ServerClient, generate_batch_served, stop_strings
from cleancurate.engine.vllm_backend import generate_batch_vllm, vllm_engine
from cleancurate.prompts import chat_messages, user_message
from cleancurate.schemas.udf import GENERATION as RETURN_TYPE  # noqa: F401  (the Spark type of the batch function)

if TYPE_CHECKING:
    from cleancurate.config import Config
    from cleancurate.configsections import CurationConfig


def _prompts(tokenizer, cur: CurationConfig, queries: pd.Series, parents: pd.Series) -> list[str]:
    return build_prompts(tokenizer, cur.prompt, cur.system_prompt, queries.fillna("").tolist(),
                         parents.fillna("").tolist())


def _make_vllm_fn(cfg: Config) -> Callable[..., pd.DataFrame]:
    """The vLLM backend's batch function, on the worker's one engine."""
    llm = vllm_engine(cfg.model.name, cfg.model.dtype, cfg.model.max_context)
    tokenizer = llm.get_tokenizer()
    stops = stop_token_ids(tokenizer)
    cur = cfg.curation

    def fn(queries: pd.Series, parents: pd.Series, temps: pd.Series, top_ps: pd.Series, seeds: pd.Series) -> pd.DataFrame:
        return generate_batch_vllm(llm, _prompts(tokenizer, cur, queries, parents), temps.tolist(),
                                   top_ps.tolist(), seeds.tolist(), max_new_tokens=cur.max_new_tokens, stops=stops)

    return fn


def served_tokenizer(cfg: Config):
    """The tokenizer served prompts are rendered with (``server.tokenizer``, else ``model.name``'s), or None
    when the server renders them (``server.tokenizer: server``)."""
    from cleancurate.models import load_tokenizer

    spec = cfg.server.tokenizer or cfg.model.name
    return None if spec == SERVER_RENDERS else load_tokenizer(spec, cfg.model.allow_network)


def _make_served_fn(cfg: Config) -> Callable[..., pd.DataFrame]:
    """The server backend's batch function: prompts rendered here (or chat messages), requests to the server."""
    client = ServerClient.from_config(cfg.server)
    tokenizer = served_tokenizer(cfg)
    stops = stop_strings(tokenizer)
    cur = cfg.curation

    def prompts(queries: pd.Series, parents: pd.Series) -> list:
        if tokenizer is not None:
            return _prompts(tokenizer, cur, queries, parents)
        return [chat_messages(user_message(cur.prompt, q, t), cur.system_prompt)
                for q, t in zip(queries.fillna("").tolist(), parents.fillna("").tolist())]

    def fn(queries: pd.Series, parents: pd.Series, temps: pd.Series, top_ps: pd.Series, seeds: pd.Series) -> pd.DataFrame:
        return generate_batch_served(client, prompts(queries, parents), temps.tolist(), top_ps.tolist(),
                                     seeds.tolist(), max_new_tokens=cur.max_new_tokens, stops=stops)

    return fn


def make_rewrite_fn(cfg: Config) -> Callable[..., pd.DataFrame]:
    """Factory: the worker's cached model (or vLLM engine, or server client) and a batch function over pandas Series."""
    from cleancurate.models import load

    if cfg.model.backend == "vllm":
        return _make_vllm_fn(cfg)
    if cfg.model.backend == "server":
        return _make_served_fn(cfg)
    lm = load(cfg, "lm")
    cur, rt = cfg.curation, cfg.runtime

    def fn(queries: pd.Series, parents: pd.Series, temps: pd.Series, top_ps: pd.Series, seeds: pd.Series) -> pd.DataFrame:
        return generate_batch(
            lm.model, lm.tokenizer, _prompts(lm.tokenizer, cur, queries, parents),
            temps.tolist(), top_ps.tolist(), seeds.tolist(),
            max_new_tokens=cur.max_new_tokens, batch_size=rt.gen_batch_size, refill=rt.gen_refill,
        )

    return fn
