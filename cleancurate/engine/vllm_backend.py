"""Optional vLLM generation backend (``model.backend: vllm``), for GPU executors.

Same inputs and outputs as the transformers backend
(:func:`cleancurate.engine.generate.generate_batch`): one text per prompt with per-row
temperature, top-p and seed. vLLM takes the sampling settings and seed per request,
batches continuously (finished requests are replaced at once) and, with prefix
caching, lets every grid sample of a document share the prompt's KV cache. The job
works without vLLM installed; only this backend needs it. Like the transformers
backend it stops at the chat template's end-of-turn markers, counts generated tokens
without the stop token, cuts a generation that ran out of tokens back to its last
sentence, and gives a row that fails an ``error`` instead of failing its batch.
:func:`vllm_engine` builds one engine per Python worker; :func:`generate_batch_vllm`
is the batch function.

Running it on a cluster:

- Install ``cleancurate[vllm]`` in the executors' Python environment (cluster image or
  ``spark.pyspark.python``); the driver does not need it.
- One task per GPU, so each Python worker owns one GPU and builds one engine, once:
  ``spark.executor.resource.gpu.amount=1``, ``spark.task.resource.gpu.amount=1`` and
  ``spark.python.worker.reuse=true`` (the engine lives as long as the worker;
  ``conf/gpu-cluster.yaml`` lists the rest).
- Set ``model.backend: vllm`` (``--set model.backend=vllm``) with ``model.name`` a
  local model directory. Scoring still runs the transformers model on the same GPU,
  so the engine takes only part of it: ``CLEANCURATE_VLLM_GPU_FRACTION`` (default
  0.5) is vLLM's ``gpu_memory_utilization``; set it in ``spark.executorEnv.*``.
- vLLM picks the GPU from ``CUDA_VISIBLE_DEVICES``; Spark's GPU address is honoured
  when the executor's discovery script exports it per task (one GPU per executor
  avoids the question).

Determinism: vLLM's seeded sampling is per request, but its batches form at run
time (continuous batching), so texts are not bit-reproducible across reruns the way
the transformers backend's are (see :mod:`cleancurate.engine.generate`).
"""

import os
from typing import Sequence

import pandas as pd

from cleancurate.batching import error_text, run_with_backoff
from cleancurate.models import ModelError, resolve
from cleancurate.schemas.udf import GENERATION_COLUMNS
from cleancurate.textrules import trim_unfinished

_ENGINES: dict = {}


def _engine(path: str, dtype: str, max_context: int | None = None):
    """The worker's vLLM engine for ``path`` (built on first use)."""
    try:
        from vllm import LLM
    except ImportError as exc:
        raise ModelError(
            "model.backend 'vllm' needs the vllm package on the executors "
            "(pip install 'cleancurate[vllm]'), or set model.backend: transformers"
        ) from exc
    key = (path, dtype, max_context)
    if key not in _ENGINES:
        extra = {"max_model_len": max_context} if max_context else {}
        _ENGINES[key] = LLM(model=path, trust_remote_code=False, enable_prefix_caching=True,
                            dtype="auto" if dtype == "auto" else dtype, seed=0,
                            gpu_memory_utilization=float(os.environ.get("CLEANCURATE_VLLM_GPU_FRACTION", "0.5")),
                            **extra)
    return _ENGINES[key]


def _row(completion, stops: set[int]) -> tuple[str, int] | str:
    """(text, generated tokens) of one completion, or an error string."""
    finish = getattr(completion, "finish_reason", None)
    if finish not in ("stop", "length"):
        return f"vllm: request ended with finish_reason={finish!r}"
    ids = list(completion.token_ids)
    # vLLM keeps the stop token in token_ids; the transformers backend does not count it
    n = len(ids) - (1 if finish == "stop" and ids and ids[-1] in stops else 0)
    text = completion.text.strip()
    return (trim_unfinished(text) if finish == "length" else text), n


def vllm_engine(name: str, dtype: str, max_context: int | None = None):
    """The worker's vLLM engine for the model ``name`` (a local model directory), built on first use."""
    path, _ = resolve(name)
    return _engine(path, dtype, max_context)


def generate_batch_vllm(llm, prompts: Sequence[str], temps: Sequence[float], top_ps: Sequence[float],
                        seeds: Sequence[int], *, max_new_tokens: int, stops: set[int]) -> pd.DataFrame:
    """One generation per prompt with per-row settings and seeds; a row vLLM rejects gets an ``error``.

    Args:
        llm: the worker's engine (:func:`vllm_engine`).
        stops: stop token ids (:func:`~cleancurate.engine.prompting.stop_token_ids` of the engine's tokenizer).

    Returns:
        DataFrame with ``text``, ``gen_tokens`` and ``error`` in input order.
    """
    from vllm import SamplingParams

    def generate(prompts: list[str], params: list) -> list:
        outs = llm.generate(prompts, params, use_tqdm=False)
        if len(outs) != len(prompts):
            raise RuntimeError(f"vllm returned {len(outs)} outputs for {len(prompts)} prompts")
        # LLM.generate returns outputs in the order of its inputs
        return [_row(o.outputs[0], stops) for o in outs]

    params = [SamplingParams(temperature=float(t), top_p=float(p), seed=int(s) % (2 ** 31),
                             max_tokens=max_new_tokens, stop_token_ids=sorted(stops))
              for t, p, s in zip(temps, top_ps, seeds)]
    # a request vLLM rejects (prompt over the context, ...) raises for the whole call:
    # halve and retry, so only that row gets an error
    outs = run_with_backoff(
        list(range(len(prompts))),
        lambda part: generate([prompts[i] for i in part], [params[i] for i in part]),
        lambda i, exc: error_text(exc),
    )
    rows = [(None, 0, out) if isinstance(out, str) else (out[0], out[1], None) for out in outs]
    df = pd.DataFrame(rows, columns=GENERATION_COLUMNS)
    df["gen_tokens"] = df["gen_tokens"].astype("int32")
    return df
