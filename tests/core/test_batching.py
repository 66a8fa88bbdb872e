import pytest

from cleancurate.batching import error_text, is_oom, plan_microbatches, run_with_backoff


def test_microbatches_cover_every_row_once_and_respect_the_budget():
    lengths = [5, 100, 7, 33, 33, 64, 1, 250, 12]
    batches = plan_microbatches(lengths, token_budget=128)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        if len(b) > 1:
            assert len(b) * max(lengths[i] for i in b) <= 128
    # the 250-token row is over budget and runs alone
    assert [7] in batches


def test_microbatches_are_length_sorted_and_capped():
    lengths = [10] * 7
    batches = plan_microbatches(lengths, token_budget=10_000, max_rows=3)
    assert [len(b) for b in batches] == [3, 3, 1]


def test_keys_group_equal_prompts():
    lengths = [4, 4, 4, 4]
    keys = ["b", "a", "b", "a"]
    assert plan_microbatches(lengths, 10_000, keys=keys) == [[1, 3, 0, 2]]


class FakeOOM(RuntimeError):
    pass


def test_backoff_halves_on_oom_and_isolates_a_failing_row():
    calls = []

    def fn(part):
        calls.append(list(part))
        if len(part) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        if "bad" in part:
            raise ValueError("cannot score this row")
        return [x.upper() for x in part]

    out = run_with_backoff(["a", "b", "bad", "c", "d"], fn, lambda item, exc: f"ERR:{error_text(exc)}")
    assert out == ["A", "B", "ERR:ValueError: cannot score this row", "C", "D"]
    # 5 rows fail (OOM) -> halves of 2 and 3 -> the 3 fail again -> "bad" alone fails, "c", "d" pass
    assert [len(c) for c in calls] == [5, 2, 3, 1, 2]


def test_oom_detection():
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("CUDA out of memory"))
    assert not is_oom(ValueError("bad value"))
    assert error_text(MemoryError("x")).startswith("oom:")


def test_backoff_rejects_a_batch_function_that_drops_rows():
    # a function that returns one result per call, whatever it is given, is split until it fits
    out = run_with_backoff([1, 2, 3], lambda part: [sum(part)], lambda item, exc: "err")
    assert out == [1, 2, 3]
