"""KV caches and decode modes of the decode loop, and the prompt prefill that fills them.

One concern: where a micro-batch keeps its keys and values, and which step function
reads them. Decode modes (``decode=`` of :func:`~cleancurate.engine.generate.generate_batch`):

- ``dynamic`` grows the KV cache in place, in buffers with room for the whole
  generation (:func:`_grow_layer_type`), instead of transformers' ``torch.cat`` of the
  whole cache per layer per step: the same logits, bit for bit, on CPU, where tests
  check it; on CUDA attention gets views of a larger buffer, which may pick another
  kernel. A cache whose layers are not plain ``DynamicLayer`` keeps concatenating.
- ``static`` writes into one preallocated ``StaticCache``, kept for reuse between
  micro-batches (:func:`_static_cache`).
- ``compiled`` adds a decode step compiled into a CUDA graph (:func:`_step_fn`), one
  recording per shape, so micro-batches are padded to a few shapes (:func:`_padded_rows`).

A static cache or compiled step that cannot be built raises :class:`_FastPathFailed`;
the caller falls back to the next simpler mode.
"""

import inspect

from cleancurate.batching import is_oom

_COMPILED: dict = {}  # id(model) -> compiled forward (one per worker and model)
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


def left_padded(prompts: list[list[int]], pad_id: int):
    """Token ids left-padded to the longest prompt, their attention mask and positions (CPU, long).

    Left padding puts every prompt's last token in the last column, where the next token
    is read; positions count real tokens only, so a padded prompt is computed as if alone.
    """
    import torch

    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, longest - len(p):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _prefill(model, prompts: list[list[int]], pad_id: int, cache_kw: str):
    """One forward pass over distinct ``prompts``, left-padded to the longest.

    Returns:
        (KV cache, last-position logits ``[prompts, vocab]``, attention mask and positions
        ``[prompts, longest]`` on the CPU).
    """
    import torch

    device = next(model.parameters()).device
    ids, mask, position = left_padded(prompts, pad_id)
    res = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position.to(device),
                use_cache=True, logits_to_keep=1)
    return getattr(res, cache_kw), res.logits[:, -1, :], mask, position
