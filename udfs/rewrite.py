"""Rewrite generation: sample revisions of a response for a grid of settings.

Reads: ``query``, ``parent_text``, ``temperature``, ``top_p``, ``seed``.
Adds: ``text``, ``gen_tokens``, ``error``.

A generation that runs out of tokens is cut back to its last complete sentence.

Generation is batched across documents *and* across sampling settings: every row
keeps its own temperature and top-p, and draws its uniform numbers from its own
generator seeded with the row's seed, so no grouping by setting is needed. Prompts
are left-padded; identical prompts (one parent's sampling grid) are prefilled once
and share their KV cache; only the last position's logits are computed per step.

The decode loop runs on the model's device: sampling (:func:`sample_next`) works on
the logits where they are and sorts only the head of each row, the done mask and the
output tokens are tensors, the attention mask is allocated once, and a step moves
one small tensor to the host (which rows finished, which rows need a wider look at
the vocabulary; rows that do add a few more small transfers in that step). Decode
modes (``decode=`` of :func:`generate_batch`): ``dynamic`` grows the KV cache (the CPU
default, and bit-identical to the loop this module had before); ``static`` writes into
a preallocated KV cache; ``compiled`` adds a decode step compiled into a CUDA graph
(the GPU default). Finished rows are not replaced from a queue (no continuous
batching): a row that stops early idles until its micro-batch ends, which keeps a
micro-batch a fixed set of rows and so keeps the guarantee below; the vLLM backend
batches continuously.

Determinism, exactly:

- **Same micro-batch, same decode mode, same machine and software: same texts.** A
  row's text is a function of its prompt, settings and seed *and of its micro-batch*
  (which other prompts share it, their order, the padded length). Reruns repeat it bit
  for bit (tests check this).
- **The job forms the same micro-batches on a rerun or a resume.** Requests are
  repartitioned by ``doc_id`` into ``runtime.partitions`` partitions and sorted by
  ``(doc_id, cand_id)``, Arrow batches are cut every ``runtime.arrow_batch_rows`` rows,
  and :func:`~cleancurate.batching.plan_microbatches` orders rows by (length, prompt,
  position). So a resumed round reproduces its texts as long as the ``runtime``
  settings and the hardware are the same (``runtime`` is left out of the config hash:
  changing it is allowed, and may change texts). Automatic GPU sizes come from the
  card's total memory and the model's shape, not from free memory, for this reason.
  An out-of-memory retry splits a micro-batch, which changes it.
- **Not guaranteed: independence from the batch.** Kernels reduce in a different order
  for different shapes. On CPU in float32 a row's logits differ by 3e-5 to 4e-4
  between a batch of 4 prompts and the prompt alone (measured on the 2-core test
  machine: MKL multiplies fewer than 4 rows another way, and padding changes the
  attention's length), and by about 4e-5 between the ``static`` and ``dynamic``
  caches, so a token differs only when a row's uniform falls that close to a boundary
  of its CDF: texts usually agree (16 of 16 in ``bench.generation``, batch 16 vs 1),
  but not always. On GPU in bfloat16 the differences are far larger and texts part
  after a few tokens (issue 12: 0 of 16 identical, batch 16 vs 1, on an H200).
  ``compiled`` pads a micro-batch with idle rows to a recorded shape; the padding is
  part of the micro-batch and as deterministic as the rest.
"""

import inspect
import warnings
from typing import Callable, Iterator, Sequence, Tuple

import pandas as pd

from cleancurate.attention import use_gqa_decode
from cleancurate.batching import error_text, generation_sizes, is_oom, plan_microbatches, run_with_backoff
from cleancurate.prompts import chat_prompt, user_message
from cleancurate.schemas.udf import GENERATION, GENERATION_COLUMNS
from cleancurate.udfs.quality import trim_unfinished

#: widths of the vocabulary head tried before a full sort (see :func:`_pick`)
HEAD_WIDTHS = (64, 1024)
#: decode modes of :func:`generate_batch`
DECODE_MODES = ("auto", "dynamic", "static", "compiled")
_CPU_GEN_BATCH = 16  # runtime.gen_batch_size default; also the CPU value of "auto"


def build_prompts(tokenizer, instruction: str, system: str | None, queries: Sequence[str], texts: Sequence[str]) -> list[str]:
    """Chat-formatted revision prompts with the corpus text inside delimiters."""
    return [chat_prompt(tokenizer, user_message(instruction, q, t), system) for q, t in zip(queries, texts)]


def stop_token_ids(tokenizer) -> set[int]:
    """End-of-sequence ids, including the chat template's end-of-turn marker."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


# --- sampling ---------------------------------------------------------------------------------


def draw_uniforms(seeds: Sequence[int], steps: int):
    """The first ``steps`` uniforms of each row's generator, as one ``[rows, steps]`` CPU tensor.

    Row ``i`` uses ``torch.Generator().manual_seed(seeds[i])``; drawing ``steps`` numbers
    at once gives the same numbers as drawing one per step, and lets the decode loop
    move them to the device once per micro-batch.
    """
    import torch

    out = torch.empty((len(seeds), steps), dtype=torch.float32)
    for i, s in enumerate(seeds):
        out[i] = torch.rand(steps, generator=torch.Generator().manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF))
    return out


def _tempered_probs(logits, temps):
    import torch

    return torch.softmax(logits.float() / temps.clamp(min=1e-5)[:, None], dim=-1)


def _pick(probs, ps, u, width: int):
    """Top-p inverse-CDF pick among the ``width`` most likely tokens of each row.

    The reference is a full stable descending sort of each row: keep the shortest
    prefix whose mass reaches top-p, and return the first position whose cumulative
    kept mass reaches ``u`` times the kept total. Only the head is sorted here; the
    pick equals the reference's where the answer does not depend on the rest:

    - the kept prefix ends inside the head (``(cum - p) < top_p`` is monotone along the
      sorted row, so the kept set is a prefix): the kept total is exact;
    - top-p 1.0 with a kept prefix that runs past the head: the total is bracketed from
      a float64 sum of the row (its error bound covers any summation order) and by how a
      float32 cumulative sum can stop short of 1.0; the pick is exact when both ends of
      the bracket land on the same head position;
    - and the picked token's probability is above the head's smallest, so no token
      tied with it was left outside the head in another order.

    On CPU the cumulative sums are sequential with a float64 accumulator, so a head's
    sums are exactly the first ``width`` sums of the full row and the pick is bit-
    identical to the reference (tests check this). On GPU the scan differs by length:
    the pick is a correct top-p sample, repeatable for the same inputs.

    Returns:
        (tokens, exact): ``exact`` is False for rows to redo with a wider head.
    """
    import torch

    v = probs.shape[-1]
    if width >= v:
        vals, idx = torch.sort(probs, dim=-1, descending=True, stable=True)
    else:
        vals, idx = torch.topk(probs, width, dim=-1)
        # topk orders equal values arbitrarily; the reference orders them by token id
        by_id = idx.argsort(dim=-1)
        vals, idx = vals.gather(1, by_id), idx.gather(1, by_id)
        vals, order = torch.sort(vals, dim=-1, descending=True, stable=True)
        idx = idx.gather(1, order)
    cum = vals.cumsum(-1)
    keep = (cum - vals) < ps[:, None]
    keep[:, 0] = True
    kept = (vals * keep).cumsum(-1)
    target = (u * kept[:, -1])[:, None].contiguous()
    pos = torch.searchsorted(kept, target).clamp(max=vals.shape[-1] - 1)
    tokens = idx.gather(1, pos).squeeze(1)
    if width >= v:
        return tokens, torch.ones_like(tokens, dtype=torch.bool)
    inside = ~keep[:, -1]
    safe = vals.gather(1, pos).squeeze(1) > vals[:, -1]
    exact = inside & safe
    full_p = ~inside & (ps >= 1.0)
    # on CPU the check is free; on a GPU it would cost a sync, so the bracket is always computed
    if probs.device.type != "cpu" or bool(full_p.any()):
        # float64 sum of the row: any order is within 2 * v * 2^-53 of the sequential one
        total64 = probs.sum(-1, dtype=torch.float64)
        err = 4.0 * v * 2.0**-53 * total64.clamp(min=1.0)
        hi = (total64 + err).float()
        # when the float32 sum reaches 1.0 the reference drops the rest of the tail; its
        # kept total is then at least 1 - 2^-23 (bounded here with room to spare)
        lo = torch.minimum((total64 - err).float(), torch.full_like(hi, 1.0 - 2.0**-20))
        p_lo = torch.searchsorted(kept, (u * lo)[:, None].contiguous())
        p_hi = torch.searchsorted(kept, (u * hi)[:, None].contiguous())
        landed = (p_lo == p_hi).squeeze(1) & (p_hi.squeeze(1) < vals.shape[-1])
        pos_hi = p_hi.clamp(max=vals.shape[-1] - 1)
        safe_hi = vals.gather(1, pos_hi).squeeze(1) > vals[:, -1]
        ok = full_p & landed & safe_hi
        tokens = torch.where(ok, idx.gather(1, pos_hi).squeeze(1), tokens)
        exact = exact | ok
    return tokens, exact


def _resolve(probs, ps, u, tokens, rows):
    """Redo ``rows`` (a 1-D index tensor on the device) with wider heads, then a full sort."""
    v = probs.shape[-1]
    for width in HEAD_WIDTHS[1:] + (v,):
        if rows.numel() == 0:
            break
        got, exact = _pick(probs[rows], ps[rows], u[rows], width)
        tokens[rows] = got
        rows = rows[~exact]
    return tokens


def sample_next(logits, temperatures, top_ps, generators):
    """One token per row from its own (temperature, top-p) and generator.

    Temperature 0 is greedy. Otherwise the row's distribution is tempered, cut to the
    smallest prefix (by probability, ties by token id) whose mass reaches top-p, and
    sampled by inverse CDF with one uniform number drawn from the row's own generator,
    so a row's draw never depends on the other rows of the batch. Runs on the logits'
    device and sorts only the head of each row (see :func:`_pick`).

    Returns:
        Token ids, a 1-D tensor on the logits' device.
    """
    import torch

    device = logits.device
    temps = torch.tensor([float(t) for t in temperatures], dtype=torch.float32).to(device)
    ps = torch.tensor([float(p) for p in top_ps], dtype=torch.float32).to(device)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(device)
    probs = _tempered_probs(logits, temps)
    tokens, exact = _pick(probs, ps, u, HEAD_WIDTHS[0])
    greedy = temps <= 0.0
    exact |= greedy
    tokens = _resolve(probs, ps, u, tokens, (~exact).nonzero().squeeze(1))
    return torch.where(greedy, logits.argmax(-1), tokens)


class _Sampler:
    """Per-row sampling state of one micro-batch, on the model's device."""

    def __init__(self, temperatures, top_ps, seeds, steps: int, device):
        import torch

        self.temps = torch.tensor([float(t) for t in temperatures], dtype=torch.float32).to(device)
        self.ps = torch.tensor([float(p) for p in top_ps], dtype=torch.float32).to(device)
        self.u = draw_uniforms(seeds, steps).to(device)
        self.greedy = self.temps <= 0.0
        self.any_greedy = any(float(t) <= 0.0 for t in temperatures)
        self.stats = {"rows": 0, "wider": 0}  # row-steps sampled, and those that needed a wider head

    def first(self, logits, step: int):
        """Tokens from the first head, which rows need more, and the probabilities."""
        import torch

        probs = _tempered_probs(logits, self.temps)
        tokens, exact = _pick(probs, self.ps, self.u[:, step], HEAD_WIDTHS[0])
        if self.any_greedy:
            tokens = torch.where(self.greedy, logits.argmax(-1), tokens)
            exact = exact | self.greedy
        self.stats["rows"] += len(tokens)
        return tokens, exact, probs

    def rest(self, probs, tokens, rows, step: int):
        self.stats["wider"] += int(rows.numel())
        return _resolve(probs, self.ps, self.u[:, step], tokens, rows)

    def keep(self, rows) -> None:
        """Keep only ``rows`` (an index tensor on the device): the others are done."""
        self.temps, self.ps, self.u, self.greedy = self.temps[rows], self.ps[rows], self.u[rows], self.greedy[rows]


# --- decoding ---------------------------------------------------------------------------------

_COMPILED: dict = {}  # id(model) -> compiled forward (one per worker and model)
_BROKEN: dict = {}  # id(model) -> decode modes that failed in this worker (not tried again)
_FALLBACK = {"compiled": "static", "static": "dynamic"}
_STATIC: dict = {}  # the one StaticCache kept for reuse: "key" -> (id(model), rows, length), "cache"
_STATIC_ROUND = 256  # static cache lengths grow in these steps: few shapes, few CUDA graph recordings


def _cache_kw(model) -> str:
    # transformers 5 renamed past_key_values to cache; support both
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def release_decode_cache() -> None:
    """Free the static KV cache this worker keeps between micro-batches (benchmarks, notebooks)."""
    _STATIC.clear()


def _static_cache(model, past, rows: int, length: int, sel):
    """A static KV cache of ``rows`` rows, at least ``length`` long, holding ``past`` for rows ``sel``.

    One cache is kept and reused while the row count stays the same and it is long
    enough, so a compiled decode step sees the same tensors in every micro-batch and a
    CUDA graph is recorded once per shape. It stays allocated between calls: the
    automatic sizes (:func:`~cleancurate.batching.generation_sizes`) leave room beside it.

    Returns:
        (cache, its length).
    """
    from transformers import StaticCache

    key = _STATIC.get("key")
    if key and key[0] == id(model) and key[1] == rows and key[2] >= length:
        cache = _STATIC["cache"]
        cache.reset()
    else:
        grown = max(length, key[2] if key and key[:2] == (id(model), rows) else 0)
        grown = -(-grown // _STATIC_ROUND) * _STATIC_ROUND
        _STATIC.clear()  # one cache at a time: a KV cache can take most of the GPU
        cache = StaticCache(config=model.config, max_cache_len=grown)
        _STATIC.update(key=(id(model), rows, grown), cache=cache)
    for i, layer in enumerate(past.layers):
        cache.update(layer.keys.index_select(0, sel), layer.values.index_select(0, sel), i)
    return cache, _STATIC["key"][2]


class _FastPathFailed(RuntimeError):
    """A static cache or a compiled step could not be built or run (not out of memory)."""


def _step_fn(model, compiled: bool):
    """The decode step: the model itself, or its compiled form (errors become :class:`_FastPathFailed`)."""
    if not compiled:
        return model
    import torch

    fn = _COMPILED.get(id(model))
    if fn is None:
        try:
            fn = _COMPILED[id(model)] = torch.compile(model, mode="reduce-overhead", dynamic=False, fullgraph=False)
        except Exception as exc:  # noqa: BLE001
            raise _FastPathFailed(str(exc)) from exc

    def step(**kwargs):
        try:
            return fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - compiler errors surface on the first call
            if is_oom(exc):
                raise
            raise _FastPathFailed(str(exc)) from exc

    return step


def _padded_rows(b: int, cap: int) -> int:
    """Rows a compiled micro-batch of ``b`` rows runs with: the next power of two (at least 8),
    within ``max(b, cap)``, so the last, smaller micro-batch reuses a recorded shape."""
    return min(max(8, 1 << (b - 1).bit_length()), max(b, cap))


def _generate_group(model, tokenizer, prompt_ids: list[list[int]], temps, top_ps, seeds, max_new_tokens: int,
                    stops: set[int], decode: str = "dynamic", stats: dict | None = None, row_cap: int = 0,
                    drop_finished: bool = True):
    """Decode one micro-batch. Identical prompts (the sampling grid of one parent)
    are prefilled once and their KV cache is shared by index, so a 5x5 grid costs one
    prompt forward pass, not 25. In ``compiled`` mode the batch is padded with idle rows
    (copies of the first prompt that are done from the start) to a shape already recorded."""
    import torch

    device = next(model.parameters()).device
    real = len(prompt_ids)
    static = decode in ("static", "compiled")
    b = _padded_rows(real, row_cap) if decode == "compiled" else real
    if b > real:
        k = b - real
        prompt_ids = list(prompt_ids) + [prompt_ids[0]] * k
        temps, top_ps, seeds = list(temps) + [0.0] * k, list(top_ps) + [1.0] * k, list(seeds) + [0] * k
    uniq: dict[tuple, int] = {}
    owner = [uniq.setdefault(tuple(p), len(uniq)) for p in prompt_ids]
    uprompts = [list(p) for p in uniq]
    longest = max(len(p) for p in uprompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(uprompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(uprompts), longest), dtype=torch.long)
    for i, p in enumerate(uprompts):
        ids[i, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, longest - len(p):] = 1
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    cache_kw = _cache_kw(model)
    sel = torch.tensor(owner, dtype=torch.long)
    sel_dev = sel.to(device)
    sampler = _Sampler(temps, top_ps, seeds, max_new_tokens, device)
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    out = torch.zeros((b, max_new_tokens), dtype=torch.long, device=device)
    n_out = torch.zeros(b, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    done[real:] = True
    step_fn = _step_fn(model, decode == "compiled")
    # a compiled step with CUDA graphs mutates the static cache in place: not under inference_mode
    grad_ctx = torch.no_grad() if static else torch.inference_mode()
    with grad_ctx:
        res = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position.to(device),
                    use_cache=True, logits_to_keep=1)
        past = getattr(res, cache_kw)
        logits = res.logits[:, -1, :]
        shared = len(uprompts) != b or owner != list(range(b))
        if shared:
            logits = logits[sel_dev]
        width = longest + max_new_tokens
        if static:
            # a static cache may be longer than this batch needs: the causal mask hides its tail
            try:
                past, width = _static_cache(model, past, b, width, sel_dev)
            except Exception as exc:  # noqa: BLE001 - e.g. a transformers without this cache API
                if is_oom(exc):
                    raise
                raise _FastPathFailed(str(exc)) from exc
        elif shared:
            past.reorder_cache(sel_dev)
        # the whole attention mask at once: prompt padding, then one column per new token
        full_mask = torch.ones((b, width), dtype=torch.long)
        full_mask[:, :longest] = mask[sel]
        full_mask = full_mask.to(device)
        pos = position[sel][:, -1:].to(device)
        # rows still decoding (indices into the micro-batch); the dynamic cache drops finished rows
        # so no step is spent on them (a static cache and a CUDA graph keep fixed shapes instead)
        live = torch.arange(b, device=device)
        compact = drop_finished and not static
        for step in range(max_new_tokens):
            tok, exact, probs = sampler.first(logits, step)
            stop = torch.isin(tok, stop_ids)
            was_done = done[live]
            # the step's one transfer: rows the first head could not settle, rows now done
            flags = torch.cat([~exact, was_done | stop]).cpu()
            n = len(tok)
            wider = flags[:n].nonzero().squeeze(1)
            if wider.numel():
                tok = sampler.rest(probs, tok, wider.to(device), step)
                stop = torch.isin(tok, stop_ids)
                ended = (was_done | stop).cpu()
            else:
                ended = flags[n:]
            out[live, step] = tok
            n_out[live] += (~(was_done | stop)).long()
            done[live] = was_done | stop
            if bool(ended.all()) or step == max_new_tokens - 1:
                break
            if compact and bool(ended.any()):
                keep = (~ended).nonzero().squeeze(1).to(device)
                live, tok, pos, full_mask = live[keep], tok[keep], pos[keep], full_mask[keep]
                past.reorder_cache(keep)
                sampler.keep(keep)
            feed = torch.where(done[live], pad_id, tok)[:, None]
            pos = pos + 1
            step_mask = full_mask if static else full_mask[:, : longest + step + 1]
            res = step_fn(input_ids=feed, attention_mask=step_mask, position_ids=pos,
                          use_cache=True, logits_to_keep=1, **{cache_kw: past})
            if not static:
                past = getattr(res, cache_kw)
            logits = res.logits[:, -1, :]
    if stats is not None:
        for k, val in sampler.stats.items():
            stats[k] = stats.get(k, 0) + val
    counts, rows, finished_rows = n_out.tolist()[:real], out.tolist()[:real], done.tolist()[:real]
    texts = [tokenizer.decode(r[:n], skip_special_tokens=True).strip() for r, n in zip(rows, counts)]
    # a row that hit max_new_tokens stopped mid-sentence: keep its complete sentences only
    return [(t if finished_rows[i] else trim_unfinished(t), counts[i]) for i, t in enumerate(texts)]


def _resolve_decode(decode: str, model) -> str:
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode != "auto":
        return decode
    device = next(model.parameters()).device
    # measured on CPU: the dynamic cache is fastest there; on GPU see bench/README.md
    return "compiled" if device.type == "cuda" else "dynamic"


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
            on CPU). A compiled step that fails to build falls back to ``static``, a
            static cache that cannot be built to ``dynamic``, for the rest of the worker.
        drop_finished: in ``dynamic`` mode, drop rows from the batch (and their KV cache)
            as they finish, so later steps run only the rows still decoding. Texts are
            the same as without (tests check it on CPU); ``static``/``compiled`` keep
            fixed shapes.
        stats: optional dict that receives sampler counters (``rows``: row-steps,
            ``wider``: those that needed more than the first head) and ``decode``, the
            mode that ran.

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
    mode = _resolve_decode(decode, model)
    use_gqa_decode(model)  # decode steps attend without copying the KV cache per query head
    while mode in _BROKEN.get(id(model), ()):
        mode = _FALLBACK[mode]
    budget = token_budget or 10**12

    def run(part):
        nonlocal mode
        args = (model, tokenizer, [encoded[i] for i in part], [temperatures[i] for i in part],
                [top_ps[i] for i in part], [seeds[i] for i in part], max_new_tokens, stops)
        while True:
            try:
                return _generate_group(*args, decode=mode, stats=stats, row_cap=batch_size or 0,
                                       drop_finished=drop_finished)
            except _FastPathFailed as exc:
                # a worker without a working compiler (or cache API) still generates, a little slower
                warnings.warn(f"decode={mode!r} failed, using {_FALLBACK[mode]!r} instead: {exc.__cause__!r}")
                _BROKEN.setdefault(id(model), set()).add(mode)
                mode = _FALLBACK[mode]

    for batch in plan_microbatches(lengths, budget, max_rows=batch_size, keys=list(prompts)):
        outs = run_with_backoff(batch, run, lambda i, exc: error_text(exc))
        for i, out in zip(batch, outs):
            if isinstance(out, str):
                errors[i] = out
            else:
                texts[i], counts[i] = out
    if stats is not None:
        stats["decode"] = mode
    df = pd.DataFrame({"text": texts, "gen_tokens": pd.Series(counts, dtype="int32"), "error": errors})
    return df[GENERATION_COLUMNS]


def make_rewrite_fn(model_cfg: dict, runtime_cfg: dict, curation_cfg: dict) -> Callable[..., pd.DataFrame]:
    """Factory: the worker's cached model and a batch function over pandas Series."""
    from cleancurate.models import get_model

    backend = model_cfg.get("backend", "transformers")
    if backend == "vllm":
        from cleancurate.udfs.vllm_backend import make_vllm_rewrite_fn

        return make_vllm_rewrite_fn(model_cfg, runtime_cfg, curation_cfg)
    lm = get_model(
        model_cfg["name"], "causal-lm", model_cfg["device"], model_cfg["dtype"],
        model_cfg["allow_network"], runtime_cfg.get("num_threads"),
    )

    def fn(queries: pd.Series, parents: pd.Series, temps: pd.Series, top_ps: pd.Series, seeds: pd.Series) -> pd.DataFrame:
        prompts = build_prompts(
            lm.tokenizer, curation_cfg["prompt"], curation_cfg.get("system_prompt"),
            queries.fillna("").tolist(), parents.fillna("").tolist(),
        )
        return generate_batch(
            lm.model, lm.tokenizer, prompts, temps.tolist(), top_ps.tolist(), seeds.tolist(),
            max_new_tokens=curation_cfg["max_new_tokens"], batch_size=runtime_cfg.get("gen_batch_size"),
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
