"""Row batching (``cleancurate.batching``): micro-batches under a token budget, OOM backoff, and the
sizes chosen by the device for generation and scoring."""

from types import SimpleNamespace

import pytest
import torch

from cleancurate import batching
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


# --- sizes chosen by the device ---------------------------------------------------------------


def _fake_8b():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256)
    weight = torch.zeros(1, dtype=torch.bfloat16)
    return SimpleNamespace(config=cfg, parameters=lambda: iter([weight]))


def test_generation_and_scoring_sizes_follow_memory_and_kv_size(monkeypatch):
    model = _fake_8b()
    assert batching.kv_bytes_per_token(model.config, 2) == 131072  # 2 x 32 layers x 8 heads x 128 x 2 bytes
    monkeypatch.setattr(batching, "_usable_bytes", lambda m, f, r: (8 * 1024**3, 16 * 10**9))
    # per row: 364 tokens x 128 KiB of KV + 6 float32 vocabulary rows = 50,788,352 bytes
    assert batching.generation_sizes(model, 300, 64) == (168, 168 * 364)
    monkeypatch.setattr(batching, "_usable_bytes", lambda m, f, r: (64 * 1024**3, 16 * 10**9))
    assert batching.generation_sizes(model, 300, 64) == (512, 512 * 364)  # capped
    # scoring: 151,568 bytes of activations per token after a fixed 7.35 GB for one chunk of
    # 4,096 scored positions' logits: (64 GiB - 7.35 GB) / 151,568 = 404,901 -> capped at 131,072
    assert batching.scoring_token_budget(model) == 131072
    assert batching.resolve_scoring_budget(model, None) == 131072
    assert batching.resolve_scoring_budget(model, 2048) == 2048  # a pinned budget wins
    monkeypatch.setattr(batching, "_usable_bytes", lambda m, f, r: (9 * 1024**3, 16 * 10**9))
    # (9 GiB - 7.35 GB) / 151,568 = 15,233 -> 8,192 (a power of two)
    assert batching.scoring_token_budget(model) == 8192


def test_sizes_are_none_on_cpu(tiny_llama):
    assert batching.generation_sizes(tiny_llama, 100, 64) is None
    assert batching.scoring_token_budget(tiny_llama) is None
    assert batching.resolve_scoring_budget(tiny_llama, None) == 1024
