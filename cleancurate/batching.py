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
