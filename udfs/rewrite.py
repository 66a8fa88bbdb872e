"""Rewrite generation: sample revisions of a response for a grid of settings.

Reads: ``query``, ``parent_text``, ``temperature``, ``top_p``, ``seed``.
Adds: ``text``, ``gen_tokens``, ``error``.

The model engine does the work: prompts from :mod:`cleancurate.engine.prompting`, then
:func:`cleancurate.engine.generate.generate_batch` (transformers, the default; its
module says what determinism it promises) or
:func:`cleancurate.engine.vllm_backend.generate_batch_vllm` (``model.backend: vllm``).
This module is the factory that gets the worker's model and the Spark wrapper.
"""

from typing import Callable, Iterator, Tuple

import pandas as pd

from cleancurate.engine.generate import generate_batch
from cleancurate.engine.prompting import build_prompts, stop_token_ids
from cleancurate.engine.vllm_backend import generate_batch_vllm, vllm_engine
from cleancurate.schemas.udf import GENERATION


def _prompts(tokenizer, curation_cfg: dict, queries: pd.Series, parents: pd.Series) -> list[str]:
    return build_prompts(tokenizer, curation_cfg["prompt"], curation_cfg.get("system_prompt"),
                         queries.fillna("").tolist(), parents.fillna("").tolist())


def _make_vllm_fn(model_cfg: dict, curation_cfg: dict) -> Callable[..., pd.DataFrame]:
    """The vLLM backend's batch function, on the worker's one engine."""
    llm = vllm_engine(model_cfg["name"], model_cfg["dtype"], model_cfg.get("max_context"))
    tokenizer = llm.get_tokenizer()
    stops = stop_token_ids(tokenizer)
    max_new = curation_cfg["max_new_tokens"]

    def fn(queries: pd.Series, parents: pd.Series, temps: pd.Series, top_ps: pd.Series, seeds: pd.Series) -> pd.DataFrame:
        return generate_batch_vllm(llm, _prompts(tokenizer, curation_cfg, queries, parents), temps.tolist(),
                                   top_ps.tolist(), seeds.tolist(), max_new_tokens=max_new, stops=stops)

    return fn


def make_rewrite_fn(model_cfg: dict, runtime_cfg: dict, curation_cfg: dict) -> Callable[..., pd.DataFrame]:
    """Factory: the worker's cached model (or vLLM engine) and a batch function over pandas Series."""
    from cleancurate.models import get_model

    backend = model_cfg.get("backend", "transformers")
    if backend == "vllm":
        return _make_vllm_fn(model_cfg, curation_cfg)
    lm = get_model(
        model_cfg["name"], "causal-lm", model_cfg["device"], model_cfg["dtype"],
        model_cfg["allow_network"], runtime_cfg.get("num_threads"),
    )

    def fn(queries: pd.Series, parents: pd.Series, temps: pd.Series, top_ps: pd.Series, seeds: pd.Series) -> pd.DataFrame:
        return generate_batch(
            lm.model, lm.tokenizer, _prompts(lm.tokenizer, curation_cfg, queries, parents),
            temps.tolist(), top_ps.tolist(), seeds.tolist(),
            max_new_tokens=curation_cfg["max_new_tokens"], batch_size=runtime_cfg.get("gen_batch_size"),
            refill=bool(runtime_cfg.get("gen_refill")),
        )

    return fn


def rewrite_udf(model_cfg: dict, runtime_cfg: dict, curation_cfg: dict):
    """Spark iterator pandas UDF ``(query, parent_text, temperature, top_p, seed) -> struct<text, gen_tokens, error>``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(GENERATION)
    def rewrite(
        batches: Iterator[Tuple[pd.Series, pd.Series, pd.Series, pd.Series, pd.Series]],
    ) -> Iterator[pd.DataFrame]:
        fn = make_rewrite_fn(model_cfg, runtime_cfg, curation_cfg)
        for queries, parents, temps, top_ps, seeds in batches:
            yield fn(queries, parents, temps, top_ps, seeds)

    return rewrite.asNondeterministic()
