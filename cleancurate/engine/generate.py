"""Generation: one continuation per prompt, with per-row sampling settings and seeds.

:func:`generate_batch` is the transformers backend behind the rewrite UDF and the
evaluation job's answers. It plans length-sorted micro-batches (a row cap and a token
budget, :func:`~cleancurate.batching.plan_microbatches`), decodes each one
(:mod:`~cleancurate.engine.decode`, or continuous batching with ``refill``,
:mod:`~cleancurate.engine.refill`), halves a failing micro-batch and gives a row that
fails alone an ``error``. Batches mix documents *and* sampling settings: each row keeps
its own temperature, top-p and seed (:mod:`~cleancurate.engine.sampling`). A decode
mode that cannot be built (:mod:`~cleancurate.engine.kvcache`) falls back to a simpler
one for the rest of the worker.

Determinism, exactly (figures behind these statements: bench/README.md):

- **Same rows, same settings, same decode mode, same machine and software: same
  texts.** Without ``refill`` a row's text is a function of its prompt, settings and
  seed *and of its micro-batch* (which other prompts share it, their order, the padded
  length). With ``refill`` it is a function of the whole call: the queue, ``batch_size``
  and the token budget decide which rows share each step (when rows finish is itself
  determined by the same inputs). Reruns repeat it bit for bit (tests check both).
- **The job forms the same micro-batches on a rerun or a resume.** Requests are
  repartitioned by ``doc_id`` into ``runtime.partitions`` partitions and sorted by
  ``(doc_id, cand_id)``, Arrow batches are cut every ``runtime.arrow_batch_rows`` rows,
  and :func:`~cleancurate.batching.plan_microbatches` orders rows by (length, prompt,
  position). So a resumed round reproduces its texts as long as the ``runtime``
  settings and the hardware are the same (``runtime`` is left out of the config hash:
  changing it is allowed, and may change texts). Automatic GPU sizes come from the
  card's total memory and the model's shape, not from free memory, for this reason.
  An out-of-memory retry splits a micro-batch, which changes it; with ``refill``, a
  batch whose step or admission fails sends its unfinished rows to the micro-batch path
  (deterministic too, as long as the failure is).
- **Not guaranteed: independence from the batch.** Kernels reduce in a different order
  for different shapes, so a row's logits differ in the last bits between batches (and
  between the ``static`` and ``dynamic`` caches); a token differs only when a row's
  uniform falls that close to a boundary of its CDF, so on CPU in float32 texts usually
  agree, but not always. ``refill`` changes a row's batch in the same way (other rows,
  and left padding as wide as the longest row in the batch). When one admission holds
  every row (no more rows than ``batch_size``), ``refill`` runs the micro-batch's own
  prefill and steps: the same texts, bit for bit (tests check it). With float64 logits
  a row's text equals its text decoded alone (tests check it), which is what per-row
  seeds and step counts promise. On GPU in bfloat16 texts part after a few tokens.
  ``compiled`` pads a micro-batch with idle rows to a recorded shape; the padding is
  part of the micro-batch and as deterministic as the rest.
"""

import warnings
from typing import Sequence

import pandas as pd

from cleancurate.attention import use_gqa_decode
from cleancurate.batching import error_text, generation_sizes, plan_microbatches, run_with_backoff
from cleancurate.engine.decode import _generate_group, _resolve_decode
from cleancurate.engine.kvcache import _FastPathFailed
from cleancurate.engine.prompting import stop_token_ids
from cleancurate.engine.refill import _RefillUnsupported, _generate_stream
from cleancurate.schemas.udf import GENERATION_COLUMNS

_CPU_GEN_BATCH = 16  # runtime.gen_batch_size default; also the CPU value of "auto"
_BROKEN: dict = {}  # id(model) -> decode modes that failed in this worker (not tried again)
_FALLBACK = {"compiled": "static", "static": "dynamic"}


def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    temperatures: Sequence[float],
    top_ps: Sequence[float],
    seeds: Sequence[int],
    *,
    max_new_tokens: int = 256,
    batch_size: int | None = 16,
    token_budget: int | None = None,
    decode: str = "auto",
    refill: bool = False,
    stats: dict | None = None,
    drop_finished: bool = True,
) -> pd.DataFrame:
    """Generate one continuation per prompt with per-row settings and seeds.

    Rows are length-sorted into micro-batches (at most ``batch_size`` rows and, if
    given, ``token_budget`` padded prompt+generation tokens); a failing micro-batch is
    halved and retried, and a row that fails alone gets an ``error``.

    Args:
        batch_size: rows per micro-batch; None sizes rows and token budget from the
            GPU's memory and the model's KV size (:func:`~cleancurate.batching.generation_sizes`),
            or 16 on CPU.
        decode: ``dynamic`` (growing KV cache), ``static`` (preallocated KV cache),
            ``compiled`` (static cache and the decode step compiled with CUDA graphs,
            one recording per micro-batch shape) or ``auto`` (compiled on CUDA, dynamic
            on CPU or with ``refill=True``). A compiled step that fails to build falls back
            to ``static``, a static cache that cannot be built to ``dynamic``, for the rest
            of the worker.
        refill: continuous batching (``dynamic`` cache; ``decode="auto"`` picks it): the rows
            run as one queue in the micro-batches' order, at most ``batch_size`` rows (and the
            token budget) at a time, and rows that finish are replaced by waiting ones in the
            same step, so the batch does not shrink while rows wait. Off by default: on CPU it
            measured no faster (bench/README.md), and the GPU default is the compiled step.
            It changes which rows share a decode step, so texts may differ from the
            micro-batch path (see the module doc). When an admission or step fails, streaming
            stops for the call and every unfinished row goes to the micro-batch path (and its
            halving), with a warning; a model whose KV cache cannot be merged (not plain
            ``DynamicLayer``) uses that path, with a warning.
        drop_finished: in ``dynamic`` mode, drop rows from the batch (and their KV cache)
            as they finish, so later steps run only the rows still decoding. Texts are
            the same as without (tests check it on CPU); ``static``/``compiled`` keep
            fixed shapes.
        stats: optional dict that receives counters: ``rows`` (row-steps sampled),
            ``wider`` (those that needed more than the first head), ``prefills``,
            ``decode_steps``, ``decoded_row_steps`` (rows in those steps),
            ``idle_row_steps`` (rows in them that had already finished), ``merges`` (times
            rows joined a running batch, each a copy of its KV cache), and ``decode`` /
            ``refill``, what ran.

    Returns:
        DataFrame with ``text``, ``gen_tokens`` and ``error`` in input order.
    """
    n = len(prompts)
    texts: list[str | None] = [None] * n
    counts = [0] * n
    errors: list[str | None] = [None] * n
    if n == 0:
        return pd.DataFrame({"text": texts, "gen_tokens": counts, "error": errors})[GENERATION_COLUMNS]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    stops = stop_token_ids(tokenizer)
    lengths = [len(e) + max_new_tokens for e in encoded]
    if batch_size is None:
        sizes = generation_sizes(model, max(len(e) for e in encoded), max_new_tokens)
        batch_size, token_budget = sizes if sizes else (_CPU_GEN_BATCH, token_budget)
    mode = _resolve_decode(decode, model, refill)
    use_gqa_decode(model)  # decode steps attend without copying the KV cache per query head
    while mode in _BROKEN.get(id(model), ()):
        mode = _FALLBACK[mode]
    if refill and (mode != "dynamic" or not drop_finished):
        raise ValueError(f"refill=True needs decode='dynamic' (or 'auto') and drop_finished=True, got {mode!r}")
    streaming = bool(refill) and "refill" not in _BROKEN.get(id(model), ())
    budget = token_budget or 10**12
    row_settings = (encoded, temperatures, top_ps, seeds)

    def run(part):
        nonlocal mode
        args = (model, tokenizer, *([col[i] for i in part] for col in row_settings), max_new_tokens, stops)
        while True:
            try:
                return _generate_group(*args, decode=mode, stats=stats, row_cap=batch_size or 0,
                                       drop_finished=drop_finished)
            except _FastPathFailed as exc:
                # a worker without a working compiler (or cache API) still generates, a little slower
                warnings.warn(f"decode={mode!r} failed, using {_FALLBACK[mode]!r} instead: {exc.__cause__!r}")
                _BROKEN.setdefault(id(model), set()).add(mode)
                mode = _FALLBACK[mode]

    plan = plan_microbatches(lengths, budget, max_rows=batch_size, keys=list(prompts))
    if streaming:
        queue = [i for batch in plan for i in batch]
        try:
            done, again = _generate_stream(model, tokenizer, queue, *row_settings, max_new_tokens, stops,
                                           batch_size, budget, stats)
        except _RefillUnsupported as exc:
            warnings.warn(f"refill is not possible with this model's KV cache, using micro-batches: {exc}")
            _BROKEN.setdefault(id(model), set()).add("refill")
            done, again, streaming = {}, queue, False
        for i, (text, count) in done.items():
            texts[i], counts[i] = text, count
        # rows of a failed batch run again as micro-batches, planned as they would have been
        sub = plan_microbatches([lengths[i] for i in again], budget, max_rows=batch_size,
                                keys=[prompts[i] for i in again]) if again else []
        plan = [[again[j] for j in batch] for batch in sub]
    for batch in plan:
        outs = run_with_backoff(batch, run, lambda i, exc: error_text(exc))
        for i, out in zip(batch, outs):
            if isinstance(out, str):
                errors[i] = out
            else:
                texts[i], counts[i] = out
    if stats is not None:
        stats["decode"], stats["refill"] = mode, streaming
    df = pd.DataFrame({"text": texts, "gen_tokens": pd.Series(counts, dtype="int32"), "error": errors})
    return df[GENERATION_COLUMNS]
