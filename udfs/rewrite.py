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
output tokens are tensors, the attention mask is allocated once per micro-batch (with
``refill``, once per merge), and a step moves
one small tensor to the host (which rows finished, which rows need a wider look at
the vocabulary; rows that do add a few more small transfers in that step). Decode
modes (``decode=`` of :func:`generate_batch`): ``dynamic`` grows the KV cache (the CPU
default, and bit-identical to the loop this module had before; it grows in place,
in buffers with room for the whole generation, instead of transformers' ``torch.cat``
of the whole cache per layer per step: the same logits, bit for bit, on CPU, where tests
check it; on CUDA attention gets views of a larger buffer, which may pick another
kernel); ``static`` writes
into a preallocated KV cache; ``compiled`` adds a decode step compiled into a CUDA graph
(the GPU default).

Micro-batches are fixed sets of rows: in ``dynamic`` mode a row that finishes leaves
its batch, but no waiting row takes its place. ``refill=True`` (``runtime.gen_refill``)
batches continuously instead: all rows of a call form one queue (in the micro-batches'
order), at most ``batch_size`` rows (and the token budget) decode at a time, and when
rows finish, waiting rows draw their first token from their prompt's logits (a prompt
is still prefilled once for all its rows) and join the running batch in the same step;
their KV rows are merged into the batch's cache right-aligned (left padding, per-row
attention mask and positions). Each row draws its ``k``-th uniform at its own ``k``-th
token, whenever it joined. It is off by default: on the CPU benchmark (64 rows, batch
16, up to 128 tokens) it decoded as many steps with as many rows per step as the
micro-batches (the longest rows set the length of the run) and ran between 6% slower
and 4% faster; on GPU the default is the compiled step, whose shapes are fixed.
The vLLM backend batches continuously.

Determinism, exactly:

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
  for different shapes. On CPU in float32 a row's logits differ by 3e-5 to 4e-4
  between a batch of 4 prompts and the prompt alone (measured on the 2-core test
  machine: MKL multiplies fewer than 4 rows another way, and padding changes the
  attention's length), and by about 4e-5 between the ``static`` and ``dynamic``
  caches, so a token differs only when a row's uniform falls that close to a boundary
  of its CDF: texts usually agree (16 of 16 in ``bench.generation``, batch 16 vs 1),
  but not always. ``refill`` changes a row's batch in the same way (other rows, and
  left padding as wide as the longest row in the batch), so its texts may differ from
  the micro-batch path's at that level: 64 of 64 agreed on the CPU benchmark. When one
  admission holds every row (no more rows than ``batch_size``), ``refill`` runs the
  micro-batch's own prefill and steps: the same texts, bit for bit (tests check it).
  With float64 logits a row's text equals its text decoded alone (tests check it),
  which is what per-row seeds and step counts promise. On GPU in bfloat16 the
  differences are far larger and texts part after a few tokens (issue 12: 0 of 16
  identical, batch 16 vs 1, on an H200). ``compiled`` pads a micro-batch with idle
  rows to a recorded shape; the padding is part of the micro-batch and as deterministic
  as the rest.
"""

import inspect
import warnings
from collections import Counter, deque
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
    """Per-row sampling state of a running batch, on the model's device.

    Each row has its own step counter: at its ``k``-th token a row uses the ``k``-th
    uniform of its own generator, whatever the other rows of the batch are doing, so rows
    can join a running batch (continuous batching) and still draw what they would draw alone.
    """

    def __init__(self, temperatures, top_ps, seeds, steps: int, device, stats: dict | None = None):
        import torch

        self.temps = torch.tensor([float(t) for t in temperatures], dtype=torch.float32).to(device)
        self.ps = torch.tensor([float(p) for p in top_ps], dtype=torch.float32).to(device)
        self.u = draw_uniforms(seeds, steps).to(device)
        self.step = torch.zeros(len(seeds), dtype=torch.long, device=device)  # tokens each row has drawn
        self.any_greedy = any(float(t) <= 0.0 for t in temperatures)
        # row-steps sampled, and those that needed a wider head (a shared dict adds up several samplers)
        self.stats = stats if stats is not None else {"rows": 0, "wider": 0}
        self._u_now = None

    @property
    def greedy(self):
        return self.temps <= 0.0

    def first(self, logits):
        """Tokens from the first head, which rows need more, and the probabilities."""
        import torch

        self._u_now = self.u.gather(1, self.step[:, None]).squeeze(1)
        probs = _tempered_probs(logits, self.temps)
        tokens, exact = _pick(probs, self.ps, self._u_now, HEAD_WIDTHS[0])
        if self.any_greedy:
            greedy = self.greedy
            tokens = torch.where(greedy, logits.argmax(-1), tokens)
            exact = exact | greedy
        self.stats["rows"] += len(tokens)
        return tokens, exact, probs

    def rest(self, probs, tokens, rows):
        """Redo ``rows`` (an index tensor on the device) of the last :meth:`first` with wider heads."""
        self.stats["wider"] += int(rows.numel())
        return _resolve(probs, self.ps, self._u_now, tokens, rows)

    def advance(self) -> None:
        """Every row has drawn its token of this step."""
        self.step += 1

    def keep(self, rows) -> None:
        """Keep only ``rows`` (an index tensor on the device): the others are done."""
        self.temps, self.ps, self.u, self.step = self.temps[rows], self.ps[rows], self.u[rows], self.step[rows]

    def extend(self, other: "_Sampler") -> None:
        """Append ``other``'s rows (rows joining a running batch) after this sampler's."""
        import torch

        self.temps = torch.cat([self.temps, other.temps])
        self.ps = torch.cat([self.ps, other.ps])
        self.u = torch.cat([self.u, other.u])
        self.step = torch.cat([self.step, other.step])
        self.any_greedy = self.any_greedy or other.any_greedy


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


# --- a KV cache that grows in place -----------------------------------------------------------

_GROW: dict = {}  # "layer": the GrowLayer class, built on first use (transformers is imported lazily)


def _grow_layer_type():
    """transformers' ``DynamicLayer`` with its keys and values in buffers that have room to grow.

    ``DynamicLayer.update`` concatenates each new column onto the whole cache, a copy of the
    cache of every layer at every decode step. Here ``keys``/``values`` are the exact-length
    views ``buffer[:, :, :n]`` and ``update`` writes new columns into the room behind them,
    so attention gets tensors of the same shape and values as from ``DynamicLayer`` (the
    same logits, bit for bit, on CPU: tests compare them) without the copy. A layer that runs out of
    room reallocates (callers size the room so that it does not). ``reorder_cache`` and
    ``batch_select_indices`` select rows of the buffers; ``crop`` works as inherited.
    """
    if "layer" not in _GROW:
        from transformers.cache_utils import DynamicLayer

        class GrowLayer(DynamicLayer):
            def __init__(self, keys_buffer, values_buffer, length: int):
                super().__init__()
                self.device = keys_buffer.device
                self.is_initialized = True
                self._hold(keys_buffer, values_buffer, length)

            def _hold(self, kbuf, vbuf, length: int) -> None:
                self.kbuf, self.vbuf = kbuf, vbuf
                self.keys, self.values = kbuf[:, :, :length], vbuf[:, :, :length]

            def update(self, key_states, value_states, *args, **kwargs):
                n = self.keys.shape[-2]
                m = n + key_states.shape[-2]
                if m > self.kbuf.shape[-2]:
                    self._hold(_with_room(self.keys, 2 * m), _with_room(self.values, 2 * m), n)
                self.kbuf[:, :, n:m].copy_(key_states)
                self.vbuf[:, :, n:m].copy_(value_states)
                self._hold(self.kbuf, self.vbuf, m)
                return self.keys, self.values

            def reorder_cache(self, beam_idx) -> None:
                # select from the filled columns only, into buffers with the same room
                idx, room = beam_idx.to(self.kbuf.device), self.kbuf.shape[-2]
                self._hold(_with_room(self.keys.index_select(0, idx), room),
                           _with_room(self.values.index_select(0, idx), room), self.keys.shape[-2])

            batch_select_indices = reorder_cache

        _GROW["layer"] = GrowLayer
    return _GROW["layer"]


def _with_room(t, width: int):
    """``t`` (rows, heads, length, dim) copied into the front of a new buffer ``width`` columns long."""
    buf = t.new_empty(t.shape[:2] + (width,) + t.shape[3:])
    buf[:, :, : t.shape[2]] = t
    return buf


def _plain_layers(past):
    """The cache's layers if all are plain ``DynamicLayer`` (what a GrowLayer can take over), else None."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # a transformers without per-layer caches
        return None
    layers = getattr(past, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return layers


def _grow_cache(past, sel, width: int) -> bool:
    """Move a prefilled cache into GrowLayers ``width`` columns long, taking rows ``sel`` (None: all).

    Returns False, leaving ``past`` as it is, when its layers are not plain ``DynamicLayer``
    (sliding-window models, older transformers): those keep concatenating.
    """
    layers = _plain_layers(past)
    if layers is None:
        return False
    grow = _grow_layer_type()

    def take(t):
        return _with_room(t if sel is None else t.index_select(0, sel), width)

    past.layers = [grow(take(layer.keys), take(layer.values), layer.keys.shape[-2]) for layer in layers]
    return True


# --- one micro-batch --------------------------------------------------------------------------


def _prefill(model, prompts: list[list[int]], pad_id: int, cache_kw: str):
    """One forward pass over distinct ``prompts``, left-padded to the longest.

    Returns:
        (KV cache, last-position logits ``[prompts, vocab]``, attention mask and positions
        ``[prompts, longest]`` on the CPU).
    """
    import torch

    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, longest - len(p):] = 1
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    res = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position.to(device),
                use_cache=True, logits_to_keep=1)
    return getattr(res, cache_kw), res.logits[:, -1, :], mask, position


def _draw(sampler: _Sampler, logits, stop_ids, ending):
    """Each row's next token, settled with one small host transfer.

    ``ending`` (a bool per row, on the device): rows that end with this token whatever it
    is. Returns (tokens, which are stop tokens, which rows ended: a host bool tensor).
    """
    import torch

    tok, exact, probs = sampler.first(logits)
    stop = torch.isin(tok, stop_ids)
    # the step's one transfer: rows the first head could not settle, rows now done
    flags = torch.cat([~exact, ending | stop]).cpu()
    n = len(tok)
    wider = flags[:n].nonzero().squeeze(1)
    if not wider.numel():
        return tok, stop, flags[n:]
    tok = sampler.rest(probs, tok, wider.to(logits.device))
    stop = torch.isin(tok, stop_ids)
    return tok, stop, (ending | stop).cpu()


def _texts(tokenizer, tokens: list[list[int]], counts: list[int], stopped: list[bool]) -> list[tuple[str, int]]:
    """(text, token count) per row; a row that hit max_new_tokens stopped mid-sentence and keeps
    only its complete sentences."""
    texts = [tokenizer.decode(r[:n], skip_special_tokens=True).strip() for r, n in zip(tokens, counts)]
    return [(t if stopped[i] else trim_unfinished(t), counts[i]) for i, t in enumerate(texts)]


def _add_stats(stats: dict | None, counts: dict) -> None:
    if stats is not None:
        for k, val in counts.items():
            stats[k] = stats.get(k, 0) + val


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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cache_kw = _cache_kw(model)
    sel = torch.tensor(owner, dtype=torch.long)
    sel_dev = sel.to(device)
    sampler = _Sampler(temps, top_ps, seeds, max_new_tokens, device)
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    out = torch.zeros((b, max_new_tokens), dtype=torch.long, device=device)
    n_out = torch.zeros(b, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    done[real:] = True
    counts = {"prefills": 1, "decode_steps": 0, "decoded_row_steps": 0, "idle_row_steps": 0}
    step_fn = _step_fn(model, decode == "compiled")
    # a compiled step with CUDA graphs mutates the static cache in place: not under inference_mode
    grad_ctx = torch.no_grad() if static else torch.inference_mode()
    with grad_ctx:
        past, logits, mask, position = _prefill(model, [list(p) for p in uniq], pad_id, cache_kw)
        longest = mask.shape[1]
        shared = len(uniq) != b or owner != list(range(b))
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
        elif not _grow_cache(past, sel_dev if shared else None, width) and shared:
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
            was_done = done[live]
            tok, stop, ended = _draw(sampler, logits, stop_ids, was_done)
            out[live, step] = tok
            n_out[live] += (~(was_done | stop)).long()
            done[live] = was_done | stop
            sampler.advance()
            if bool(ended.all()) or step == max_new_tokens - 1:
                break
            if compact and bool(ended.any()):
                keep = (~ended).nonzero().squeeze(1).to(device)
                live, tok, pos, full_mask = live[keep], tok[keep], pos[keep], full_mask[keep]
                past.reorder_cache(keep)
                sampler.keep(keep)
            elif not compact:
                counts["idle_row_steps"] += int(ended.sum())
            feed = torch.where(done[live], pad_id, tok)[:, None]
            pos = pos + 1
            step_mask = full_mask if static else full_mask[:, : longest + step + 1]
            res = step_fn(input_ids=feed, attention_mask=step_mask, position_ids=pos,
                          use_cache=True, logits_to_keep=1, **{cache_kw: past})
            counts["decode_steps"] += 1
            counts["decoded_row_steps"] += len(feed)
            if not static:
                past = getattr(res, cache_kw)
            logits = res.logits[:, -1, :]
    _add_stats(stats, {**sampler.stats, **counts})
    return _texts(tokenizer, out.tolist()[:real], n_out.tolist()[:real], done.tolist()[:real])


# --- continuous batching ----------------------------------------------------------------------

#: a running batch takes new rows once at least this share of its rows (and at least one) is free:
#: each admission copies the batch's KV cache. On CPU, admitting at 1, 25% or 50% free ran alike.
_REFILL_FREE = 0.25


class _RefillUnsupported(RuntimeError):
    """The model's KV cache is not made of plain ``DynamicLayer``: rows cannot join a running batch."""


class _PromptKV:
    """The prompts of a stream, each prefilled once: its KV cache (per layer, the keys and values
    of one row, ``[1, heads, length, dim]``) and its next-token logits.

    The prompts new to an admission are prefilled together, left-padded (as in a micro-batch);
    a prompt is forgotten when its last waiting row has been admitted.
    """

    def __init__(self, model, pad_id: int, cache_kw: str, waiting: Sequence[tuple]):
        self.model, self.pad_id, self.cache_kw = model, pad_id, cache_kw
        self.left = Counter(waiting)
        self.entries: dict[tuple, tuple] = {}
        self.prefills = 0

    def take(self, prompts: list[tuple]) -> list[tuple]:
        """(per-layer (keys, values), logits) of each prompt, prefilling the ones not held."""
        new = list(dict.fromkeys(p for p in prompts if p not in self.entries))
        if new:
            past, logits, mask, _ = _prefill(self.model, [list(p) for p in new], self.pad_id, self.cache_kw)
            layers = _plain_layers(past)
            if layers is None:
                raise _RefillUnsupported(f"{type(past).__name__} with layers {getattr(past, 'layers', None)}")
            self.prefills += 1
            longest = mask.shape[1]
            for i, p in enumerate(new):
                start = longest - len(p)
                kv = [(lay.keys[i:i + 1, :, start:], lay.values[i:i + 1, :, start:]) for lay in layers]
                self.entries[p] = (kv, logits[i])
        out = [self.entries[p] for p in prompts]
        for p in prompts:
            self.left[p] -= 1
            if not self.left[p]:
                del self.entries[p]
        return out


def _merge_rows(old, keep: int, joining: list[tuple[int, object]], width: int, room: int):
    """A buffer of ``width + room`` columns holding the last ``keep`` columns of ``old`` (rows, heads,
    columns, dim; or None), then, for each ``(count, piece)`` of ``joining``, ``count`` copies of
    ``piece`` (one row): every row right-aligned at column ``width``, zeros to its left."""
    ref = joining[0][1]
    n_old = 0 if old is None else old.shape[0]
    buf = ref.new_empty((n_old + sum(c for c, _ in joining), ref.shape[1], width + room, ref.shape[3]))
    if n_old:
        buf[:n_old, :, : width - keep].zero_()
        buf[:n_old, :, width - keep: width] = old[:, :, old.shape[2] - keep:]
    r = n_old
    for count, piece in joining:
        length = piece.shape[2]
        buf[r: r + count, :, : width - length].zero_()
        buf[r: r + count, :, width - length: width] = piece
        r += count
    return buf


class _Stream:
    """The running batch of continuous batching, and the tokens of every row of the call.

    Rows sit right-aligned on the KV cache's sequence axis: each row's newest column is the
    cache's last one, and the columns left of its prompt are padding (zeros in the cache,
    0 in the attention mask); positions are per row, so padding changes no position. When
    rows join, the batch is copied into new buffers together with their prompts' KV, and
    columns that are padding for every row are dropped: right after a merge the cache is
    as wide as its longest row (between merges it grows a column per step). Finished rows
    leave at once (their KV rows are dropped).

    A step is :meth:`sample` (every row draws a token; rows that ended leave), then
    :meth:`admit` (waiting rows draw their first token from their prompt's logits and
    join), then :meth:`forward` (one decode step of everyone), so a slot freed in a step
    is filled in the same step.
    """

    def __init__(self, model, encoded, temps, top_ps, seeds, max_new_tokens: int, stops: set[int]):
        import torch

        self.model, self.encoded = model, encoded
        self.temps, self.top_ps, self.seeds = temps, top_ps, seeds
        self.max_new = max_new_tokens
        self.device = next(model.parameters()).device
        self.cache_kw = _cache_kw(model)
        self.stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=self.device)
        n = len(encoded)
        self.out = torch.zeros((n, max_new_tokens), dtype=torch.long, device=self.device)
        self.n_out = torch.zeros(n, dtype=torch.long, device=self.device)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.counts = {"rows": 0, "wider": 0, "decode_steps": 0, "decoded_row_steps": 0, "idle_row_steps": 0,
                       "merges": 0}
        self.clear()

    def clear(self) -> None:
        """Empty the running batch."""
        self.rows: list[int] = []  # row ids of the call, in batch order
        self.cached: list[int] = []  # columns each row has in the cache (prompt + tokens fed)
        self.length = 0  # columns in the cache
        self.rows_dev = self.cache = self.mask = self.pos = self.logits = self.tok = self.sampler = None

    def _draw(self, sampler: _Sampler, logits, rows_dev):
        """Draw and record the next token of ``rows_dev``; returns (tokens, host bool: rows that ended)."""
        step = sampler.step
        tok, stop, ended = _draw(sampler, logits, self.stop_ids, step >= self.max_new - 1)
        self.out[rows_dev, step] = tok
        self.n_out[rows_dev] += (~stop).long()
        self.stopped[rows_dev] = stop
        sampler.advance()
        return tok, ended

    def sample(self) -> list[int]:
        """Every row draws its next token; the rows that ended leave. Returns them."""
        tok, ended = self._draw(self.sampler, self.logits, self.rows_dev)
        finished = [r for r, e in zip(self.rows, ended.tolist()) if e]
        if not finished:
            self.tok = tok
            return finished
        stay = (~ended).nonzero().squeeze(1)
        if not stay.numel():
            self.clear()
            return finished
        keep = stay.to(self.device)
        self.cache.reorder_cache(keep)  # may fail (out of memory): the row lists are changed only after it
        self.sampler.keep(keep)
        self.rows_dev, self.mask, self.pos, self.tok = self.rows_dev[keep], self.mask[keep], self.pos[keep], tok[keep]
        self.rows = [self.rows[i] for i in stay.tolist()]
        self.cached = [self.cached[i] for i in stay.tolist()]
        return finished

    def admit(self, rows: list[int], prompts: _PromptKV) -> list[int]:
        """``rows`` draw their first token from their prompt's logits (each distinct prompt
        prefilled once) and join the batch. Returns the rows that ended at that token
        (they do not join)."""
        import torch

        keys = [tuple(self.encoded[r]) for r in rows]
        entries = prompts.take(keys)
        sampler = _Sampler([self.temps[r] for r in rows], [self.top_ps[r] for r in rows],
                           [self.seeds[r] for r in rows], self.max_new, self.device, stats=self.counts)
        rows_dev = torch.tensor(rows, dtype=torch.long, device=self.device)
        tok, ended = self._draw(sampler, torch.stack([e[1] for e in entries]), rows_dev)
        go = (~ended).nonzero().squeeze(1)
        finished = [r for r, e in zip(rows, ended.tolist()) if e]
        if not go.numel():
            return finished
        if finished:
            rows, keys, entries = ([x[i] for i in go.tolist()] for x in (rows, keys, entries))
            keep = go.to(self.device)
            sampler.keep(keep)
            rows_dev, tok = rows_dev[keep], tok[keep]
        self._merge(keys, entries)
        pos = torch.tensor([[len(k) - 1] for k in keys], dtype=torch.long, device=self.device)
        if self.sampler is None:
            self.sampler, self.rows_dev, self.pos, self.tok = sampler, rows_dev, pos, tok
        else:
            self.sampler.extend(sampler)
            self.rows_dev = torch.cat([self.rows_dev, rows_dev])
            self.pos, self.tok = torch.cat([self.pos, pos]), torch.cat([self.tok, tok])
        self.rows += rows
        self.cached += [len(k) for k in keys]
        return finished

    def _merge(self, keys: list[tuple], entries: list[tuple]) -> None:
        """New cache and mask buffers: the batch's rows, then one row per prompt of ``keys``, right-aligned."""
        import torch
        from transformers import DynamicCache

        runs: list[list] = []  # [count, entry] over consecutive rows with the same prompt
        for entry in entries:
            if runs and runs[-1][1] is entry:
                runs[-1][0] += 1
            else:
                runs.append([1, entry])
        keep = max(self.cached, default=0)
        width = max([keep] + [len(k) for k in keys])
        room = self.max_new  # the most columns a row adds after its prompt
        old = self.cache.layers if self.cache is not None else [None] * len(entries[0][0])
        grow = _grow_layer_type()
        layers = []
        for i, layer in enumerate(old):
            kv = [_merge_rows(None if layer is None else getattr(layer, name), keep,
                              [(c, e[0][i][j]) for c, e in runs], width, room)
                  for j, name in enumerate(("keys", "values"))]
            layers.append(grow(*kv, width))
        n_old = len(self.rows)
        mask = torch.ones((n_old + len(keys), width + room), dtype=torch.long, device=self.device)
        if n_old:
            mask[:n_old, : width - keep] = 0
            mask[:n_old, width - keep: width] = self.mask[:, self.length - keep: self.length]
        for row, key in enumerate(keys, start=n_old):
            mask[row, : width - len(key)] = 0
        self.cache = DynamicCache()
        self.cache.layers = layers
        self.mask, self.length = mask, width
        self.counts["merges"] += 1

    def forward(self) -> None:
        """One decode step of the batch: feed each row its last token, keep its next logits."""
        self.pos = self.pos + 1
        res = self.model(input_ids=self.tok[:, None], attention_mask=self.mask[:, : self.length + 1],
                         position_ids=self.pos, use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        self.cache = getattr(res, self.cache_kw)
        self.logits = res.logits[:, -1, :]
        self.length += 1
        self.cached = [c + 1 for c in self.cached]
        self.counts["decode_steps"] += 1
        self.counts["decoded_row_steps"] += len(self.rows)


def _joining(waiting: deque, stream: _Stream, lengths: Sequence[int], batch_size: int, budget: int) -> list[int]:
    """Rows from the front of ``waiting`` that fit the batch: at most ``batch_size`` rows, and rows x
    (widest prompt or live row + max_new_tokens) within ``budget`` (one row always fits an empty batch)."""
    take: list[int] = []
    width = max(stream.cached, default=0)
    while waiting and len(stream.rows) + len(take) < batch_size:
        wider = max(width, lengths[waiting[0]])
        if (stream.rows or take) and (len(stream.rows) + len(take) + 1) * (wider + stream.max_new) > budget:
            break
        take.append(waiting.popleft())
        width = wider
    return take


def _generate_stream(model, tokenizer, queue: list[int], encoded, temps, top_ps, seeds, max_new_tokens: int,
                     stops: set[int], batch_size: int, budget: int, stats: dict | None = None):
    """Continuous batching over the rows ``queue`` (indices, in the order they may join).

    Up to ``batch_size`` rows (and ``budget`` tokens, counted as in
    :func:`~cleancurate.batching.plan_microbatches`) decode together; finished rows leave at
    once, and when at least :data:`_REFILL_FREE` of the rows are free the next waiting rows
    join in the same step (their prompts prefilled once per distinct prompt). Each row samples
    with its own settings, seed and step count and stops at its own stop token or
    ``max_new_tokens``.

    A failing admission or step (out of memory, or a model that rejects the merged cache)
    does not lose rows: streaming stops for the rest of the call, and every row that had not
    finished (running, joining, waiting) is returned to run on the fixed micro-batch path,
    whose halving and per-row errors take over. ``stats["refill_failures"]`` counts it.

    Returns:
        ({row: (text, gen_tokens)} for the rows that finished here, rows to run again).

    Raises:
        _RefillUnsupported: at the first admission, when the model's cache cannot be merged.
    """
    import torch

    stream = _Stream(model, encoded, temps, top_ps, seeds, max_new_tokens, stops)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = _PromptKV(model, pad_id, stream.cache_kw, [tuple(encoded[i]) for i in queue])
    lengths = [len(e) for e in encoded]
    waiting = deque(queue)
    finished: list[int] = []
    again: list[int] = []
    batch_size = max(1, int(batch_size))
    min_free = max(1, int(batch_size * _REFILL_FREE))
    failures = 0
    with torch.inference_mode():
        while waiting or stream.rows:
            joining: list[int] = []
            running = list(stream.rows)
            try:
                if stream.rows:
                    finished += stream.sample()
                while waiting and (not stream.rows or batch_size - len(stream.rows) >= min_free):
                    joining = _joining(waiting, stream, lengths, batch_size, budget)
                    if not joining:
                        break
                    finished += stream.admit(joining, prompts)
                if stream.rows:
                    stream.forward()
            except _RefillUnsupported:
                raise
            except Exception as exc:  # noqa: BLE001 - the rows go to the fixed path, which reports errors
                done = set(finished)
                again += [r for r in dict.fromkeys(running + stream.rows + joining + list(waiting)) if r not in done]
                waiting.clear()
                stream.clear()
                failures += 1
                warnings.warn(f"continuous batching stopped, the remaining {len(again)} rows run as micro-batches: "
                              f"{error_text(exc)}")
    _add_stats(stats, {**stream.counts, "prefills": prompts.prefills, "refill_failures": failures})
    results = _texts(tokenizer, stream.out[finished].tolist(), stream.n_out[finished].tolist(),
                     stream.stopped[finished].tolist())
    return dict(zip(finished, results)), again


def _resolve_decode(decode: str, model, refill: bool) -> str:
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode != "auto":
        return decode
    device = next(model.parameters()).device
    # measured on CPU: the dynamic cache is fastest there; on GPU see bench/README.md.
    # Continuous batching runs on the dynamic cache only.
    return "compiled" if device.type == "cuda" and not refill else "dynamic"


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
