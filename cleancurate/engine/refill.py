"""Continuous batching: rows that finish are replaced by waiting rows in the same step.

One concern: a running batch that rows join and leave (``refill=True`` of
:func:`~cleancurate.engine.generate.generate_batch`, ``runtime.gen_refill``). All rows
of a call form one queue (in the micro-batches' order); at most ``batch_size`` rows
(and the token budget) decode at a time; when rows finish, waiting rows draw their
first token from their prompt's logits (a prompt is still prefilled once for all its
rows) and join the running batch in the same step. Their KV rows are merged into the
batch's cache right-aligned (left padding, per-row attention mask and positions). Each
row draws its ``k``-th uniform at its own ``k``-th token, whenever it joined, so rows
sample as they would alone.

Off by default: on CPU it measured no faster than micro-batches (bench/README.md), and
on GPU the default is the compiled step, whose shapes are fixed. It needs a cache of
plain ``DynamicLayer`` (:class:`_RefillUnsupported` otherwise). The vLLM backend
batches continuously on its own.
"""

import warnings
from collections import Counter, deque
from typing import Sequence

from cleancurate.batching import error_text
from cleancurate.engine.decode import _add_stats, _draw, _texts
from cleancurate.engine.kvcache import _cache_kw, _grow_layer_type, _plain_layers, _prefill
from cleancurate.engine.sampling import _Sampler

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
