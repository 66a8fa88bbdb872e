"""Optional vLLM generation backend (``model.backend: vllm``), for GPU executors.

Same inputs and outputs as the transformers backend in :mod:`cleancurate.udfs.rewrite`:
one revision per (query, parent text, temperature, top-p, seed). vLLM takes the
sampling settings and seed per request, and prefix caching lets every grid sample of
a document share the prompt's KV cache. The job works without vLLM installed; only
this backend needs it.
"""

from typing import Callable

import pandas as pd

from cleancurate.models import ModelError, resolve
from cleancurate.schemas.udf import GENERATION_COLUMNS
from cleancurate.udfs.rewrite import build_prompts

_ENGINES: dict = {}


def _engine(path: str, dtype: str):
    try:
        from vllm import LLM
    except ImportError as exc:
        raise ModelError(
            "model.backend 'vllm' needs the vllm package on the executors "
            "(pip install 'cleancurate[vllm]'), or set model.backend: transformers"
        ) from exc
    key = (path, dtype)
    if key not in _ENGINES:
        _ENGINES[key] = LLM(model=path, trust_remote_code=False, enable_prefix_caching=True,
                            dtype="auto" if dtype == "auto" else dtype, seed=0)
    return _ENGINES[key]


def make_vllm_rewrite_fn(model_cfg: dict, runtime_cfg: dict, curation_cfg: dict) -> Callable[..., pd.DataFrame]:
    """Factory: one vLLM engine per Python worker and a batch function over pandas Series."""
    from vllm import SamplingParams

    path, _ = resolve(model_cfg["name"])
    llm = _engine(path, model_cfg["dtype"])
    tokenizer = llm.get_tokenizer()

    def fn(queries: pd.Series, parents: pd.Series, temps: pd.Series, top_ps: pd.Series, seeds: pd.Series) -> pd.DataFrame:
        prompts = build_prompts(tokenizer, curation_cfg["prompt"], curation_cfg.get("system_prompt"),
                                queries.fillna("").tolist(), parents.fillna("").tolist())
        params = [SamplingParams(temperature=float(t), top_p=float(p), seed=int(s) % (2 ** 31),
                                 max_tokens=curation_cfg["max_new_tokens"])
                  for t, p, s in zip(temps, top_ps, seeds)]
        rows = []
        for out in llm.generate(prompts, params, use_tqdm=False):
            first = out.outputs[0]
            rows.append((first.text.strip(), len(first.token_ids), None))
        return pd.DataFrame(rows, columns=GENERATION_COLUMNS)

    return fn
