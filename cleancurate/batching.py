"""Token-budget micro-batching with out-of-memory back-off.

Rows are sorted by length, packed into micro-batches whose padded size
(rows x longest row) stays under a token budget, run, and put back in input order.
A micro-batch that runs out of memory is halved and retried; a single row that
still fails gets an error string instead of a result, so one bad row never
fails a whole batch.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_microbatches(
    lengths: Sequence[int], token_budget: int, max_rows: int | None = None, keys: Sequence | None = None,
) -> list[list[int]]:
    """Group row indices into micro-batches under ``token_budget`` padded tokens.

    Rows are taken longest first, so each batch pads to its first row. A row longer
    than the budget forms a batch of its own.

    Args:
        lengths: token length of each row.
        token_budget: max of (rows in batch x longest row in batch).
        max_rows: optional cap on rows per batch.
        keys: optional tie-break among equal lengths, so equal keys (e.g. one prompt
            sampled many times) land next to each other.

    Returns:
        Lists of row indices; every index appears exactly once.
    """
    if keys is None:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    else:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        n = max(1, lengths[i])
        new_max = max(cur_max, n)
        fits = (len(cur) + 1) * new_max <= token_budget and (max_rows is None or len(cur) < max_rows)
        if cur and not fits:
            batches.append(cur)
            cur, cur_max = [], 0
            new_max = n
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def is_oom(exc: BaseException) -> bool:
    """True for CUDA or host out-of-memory errors."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def run_with_backoff(
    items: Sequence[T],
    fn: Callable[[list[T]], list[R]],
    on_error: Callable[[T, BaseException], R],
) -> list[R]:
    """Run ``fn`` over ``items``; on failure halve and retry, down to single rows.

    Out-of-memory errors and other errors are treated alike: a batch that fails is
    split, so the rows that can run do, and only a row that fails alone is reported
    through ``on_error``.
    """
    try:
        out = fn(list(items))
        if len(out) != len(items):
            raise RuntimeError(f"batch function returned {len(out)} results for {len(items)} rows")
        return out
    except Exception as exc:  # noqa: BLE001 - every row-level failure must be recorded
        if is_oom(exc):
            _free_cuda()
        if len(items) == 1:
            return [on_error(items[0], exc)]
        mid = len(items) // 2
        return run_with_backoff(items[:mid], fn, on_error) + run_with_backoff(items[mid:], fn, on_error)


def _free_cuda() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def error_text(exc: BaseException, limit: int = 300) -> str:
    """Short, single-line error description for tables."""
    kind = "oom" if is_oom(exc) else type(exc).__name__
    msg = " ".join(str(exc).split())
    return f"{kind}: {msg}"[:limit]


# --- sizes chosen by the device -------------------------------------------------------------
#
# On a GPU the right number of generation rows depends on the card and the model: decode
# reads every weight once per step, so more rows are nearly free until the KV cache fills
# the memory. The sizes below come from the card's *total* memory and the model's shape,
# not from the memory free at the moment: free memory changes with what else this worker
# has loaded (the scorer's models arrive after the first generation), and sizes that
# changed between a run and its resume would form other micro-batches and other texts.

_GIB = 1024**3


def text_config(config):
    """The text part of a model config (a multimodal config holds it inside; a plain one is it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def kv_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """Bytes of KV cache one token takes in every layer (keys and values)."""
    cfg = text_config(config)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def _usable_bytes(model, fraction: float, reserve_gib: float) -> tuple[int, int] | None:
    """(bytes left for batches, weight bytes) on the model's CUDA device; None off CUDA."""
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(fraction * total - weights - reserve_gib * _GIB), weights


def generation_sizes(
    model, prompt_tokens: int, max_new_tokens: int, *, fraction: float = 0.8, reserve_gib: float = 4.0,
    max_rows: int = 512,
) -> tuple[int, int] | None:
    """Generation rows and token budget that fit the GPU, or None on CPU (keep the configured ones).

    Each row holds ``prompt_tokens + max_new_tokens`` tokens of KV cache plus about six
    float32 copies of a vocabulary-sized row (logits, probabilities, sort workspace).
    ``reserve_gib`` is left for the scorer's models and activations.

    Returns:
        (rows, token_budget): rows a multiple of 8 when at least 8 (matrix shapes the
        tensor cores like), at most ``max_rows``; the budget is rows x (prompt + new tokens).
    """
    got = _usable_bytes(model, fraction, reserve_gib)
    if got is None:
        return None
    usable, _ = got
    dtype_bytes = next(model.parameters()).element_size()
    per_token = kv_bytes_per_token(model.config, dtype_bytes)
    row_tokens = prompt_tokens + max_new_tokens
    per_row = per_token * row_tokens + 6 * 4 * text_config(model.config).vocab_size
    rows = max(1, min(max_rows, usable // per_row))
    if rows >= 8:
        rows -= rows % 8
    return int(rows), int(rows * row_tokens)


def scoring_token_budget(model, *, fraction: float = 0.8, reserve_gib: float = 4.0,
                         largest: int = 131072) -> int | None:
    """Scoring token budget (padded rows x longest row) that fits the GPU, or None on CPU.

    Per padded token: the layer activations of one layer at a time (hidden states,
    attention and MLP intermediates). The output layer runs on a fixed number of scored
    positions at a time (``engine.perplexity._NLL_CHUNK``), so its float32 logits are a
    fixed amount set aside, not a per-token cost. Rounded down to a power of two.
    """
    got = _usable_bytes(model, fraction, reserve_gib)
    if got is None:
        return None
    usable, _ = got
    cfg = text_config(model.config)
    dtype_bytes = next(model.parameters()).element_size()
    inter = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    logits_chunk = 4096 * cfg.vocab_size * (2 + 4 + 4 + 4)  # bf16 logits, float32 copy, softmax, grad-free workspace
    per_token = dtype_bytes * (8 * cfg.hidden_size + 3 * inter) + 16  # + ids, positions, targets
    budget = max(1024, min(largest, (usable - logits_chunk) // per_token))
    return 1 << (int(budget).bit_length() - 1)


def resolve_score_compile(model, configured: bool | None) -> bool:
    """Whether scoring compiles the model body: as configured, else (``None``) on CUDA only.

    Measured on an H100 (bench/README.md): compiled scoring ran at MFU 0.53 against 0.45
    eager, after a first call of ~100 s; on CPU the compilation outweighs the gain for a
    job's worth of rows."""
    if configured is not None:
        return bool(configured)
    return next(model.parameters()).device.type == "cuda"


def resolve_scoring_budget(model, configured: int | None, cpu_default: int = 1024) -> int:
    """The configured scoring token budget, or (``None``) one sized from the GPU's memory
    (:func:`scoring_token_budget`), or ``cpu_default`` off CUDA."""
    if configured:
        return int(configured)
    return scoring_token_budget(model) or cpu_default
