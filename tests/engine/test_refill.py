"""Continuous batching (``cleancurate.engine.refill``): rows join running batches as others finish,
without losing rows or order, and write what they write alone."""

import pytest
import torch

from cleancurate.engine import generate as eng_generate
from cleancurate.engine import kvcache
from cleancurate.engine import refill as eng_refill
from cleancurate.engine.generate import generate_batch
from tests.engine.decoding import ScriptLM, grid_rows, ragged_rows
from tests.fakes import CharTokenizer


def test_refill_keeps_the_batch_full_and_returns_rows_in_input_order():
    lm = ScriptLM()
    # scripts of 9 tokens ("1"), 30+ (cut at 30, "2") and none ("3"); queue order: 1 1 1 2 2 3 3
    prompts = ["q 2", "q 1", "q 3", "q 1", "q 2", "q 3", "q 1"]
    stats: dict = {}
    out = generate_batch(lm, CharTokenizer(), prompts, [0.0, 1.0, 0.7, 0.0, 1.0, 0.0, 0.4], [1.0, 0.5, 1.0] * 2 + [1.0],
                         list(range(7)), max_new_tokens=30, batch_size=2, refill=True, stats=stats)
    assert out["text"].tolist() == ["One two three four five.", "Hi there.", "", "Hi there.",
                                    "One two three four five.", "", "Hi there."]
    assert out["gen_tokens"].tolist() == [30, 9, 0, 9, 30, 0, 9]
    assert out["error"].isna().all() and stats["refill"] is True
    # every distinct prompt is prefilled once, although its rows joined at different steps
    assert lm.prefill_rows == [1, 1, 1]
    # every decode step runs 2 rows until the queue is empty: a slot freed in a step is refilled in it.
    # Rows 1, 3 (9 steps), then 6 with 0; 4 joins when 6 ends (0 at its 10th token) and runs alone once 0
    # is done, as the "3" rows end at their first token and never take a slot
    assert lm.decode_rows == [2] * 38 + [1] * 9
    assert sum(lm.decode_rows) == stats["decoded_row_steps"] == 9 * 3 + 29 * 2
    assert not lm.fed_after_done


def test_a_failing_refill_or_step_loses_no_rows(monkeypatch):
    prompts = ["q 1", "q 2", "q !2", "q 3", "q 1", "q 2"]
    kw = dict(max_new_tokens=12, batch_size=2, refill=True)
    out = generate_batch(ScriptLM(), CharTokenizer(), prompts, [1.0] * 6, [1.0] * 6, list(range(6)), **kw)
    assert out["error"].isna().tolist() == [True, True, False, True, True, True]
    assert out["error"][2] == "RuntimeError: this prompt breaks the model"
    assert out["gen_tokens"].tolist() == [9, 12, 0, 0, 9, 12]

    class FailsOnce(ScriptLM):  # the 5th decode step fails, once
        def forward(self, input_ids, past_key_values=None, **kw):
            if past_key_values is not None and len(self.decode_rows) == 4 and not hasattr(self, "failed"):
                self.failed = True
                raise RuntimeError("a step failed")
            return super().forward(input_ids, past_key_values=past_key_values, **kw)

    good = prompts[:2] + prompts[3:]
    want = generate_batch(ScriptLM(), CharTokenizer(), good, [1.0] * 5, [1.0] * 5, list(range(5)), **kw)
    lm = FailsOnce()
    again = generate_batch(lm, CharTokenizer(), good, [1.0] * 5, [1.0] * 5, list(range(5)), **kw)
    assert lm.failed and again["error"].isna().all()
    assert again["text"].tolist() == want["text"].tolist()
    assert again["gen_tokens"].tolist() == want["gen_tokens"].tolist() == [9, 12, 0, 9, 12]


def test_a_failure_while_rows_leave_loses_no_rows(monkeypatch):
    """Dropping finished rows copies the cache and can run out of memory: the rows that had just
    finished and those still running all come back, with their texts."""
    prompts = ["q 1", "q 2", "q 3", "q 1", "q 2"]
    kw = dict(max_new_tokens=12, batch_size=3, refill=True)
    want = generate_batch(ScriptLM(), CharTokenizer(), prompts, [1.0] * 5, [1.0] * 5, list(range(5)), **kw)
    grow = kvcache._grow_layer_type()
    real = grow.reorder_cache
    calls = []

    def fails_once(self, beam_idx):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory while dropping rows")
        return real(self, beam_idx)

    monkeypatch.setattr(grow, "reorder_cache", fails_once)
    stats: dict = {}
    with pytest.warns(UserWarning, match="continuous batching stopped"):
        got = generate_batch(ScriptLM(), CharTokenizer(), prompts, [1.0] * 5, [1.0] * 5, list(range(5)),
                             stats=stats, **kw)
    assert calls and stats["refill_failures"] == 1
    assert got["error"].isna().all()
    assert got["text"].tolist() == want["text"].tolist()
    assert got["gen_tokens"].tolist() == want["gen_tokens"].tolist()
    assert (got["gen_tokens"] > 0).sum() == (want["gen_tokens"] > 0).sum() >= 3


def test_a_cache_that_cannot_be_merged_uses_micro_batches(tiny_llama, monkeypatch):
    monkeypatch.setattr(kvcache, "_plain_layers", lambda past: None)  # the dynamic cache keeps concatenating
    monkeypatch.setattr(eng_refill, "_plain_layers", lambda past: None)  # and rows cannot join a batch
    monkeypatch.setattr(eng_generate, "_BROKEN", {})
    prompts, temps, tops, seeds = grid_rows(2)
    stats: dict = {}
    with pytest.warns(UserWarning, match="refill is not possible"):
        got = generate_batch(tiny_llama, CharTokenizer(), prompts, temps, tops, seeds, max_new_tokens=8,
                             batch_size=3, refill=True, stats=stats)
    want = generate_batch(tiny_llama, CharTokenizer(), prompts, temps, tops, seeds, max_new_tokens=8,
                          batch_size=3)
    assert stats["refill"] is False and got["text"].tolist() == want["text"].tolist()
    after: dict = {}  # the worker remembers: no second try, no second warning
    generate_batch(tiny_llama, CharTokenizer(), prompts[:1], temps[:1], tops[:1], seeds[:1], max_new_tokens=2,
                   refill=True, stats=after)
    assert after["refill"] is False


def test_refill_needs_the_dynamic_cache(tiny_llama):
    with pytest.raises(ValueError, match="refill=True needs decode='dynamic'"):
        generate_batch(tiny_llama, CharTokenizer(), ["p"], [1.0], [1.0], [1], max_new_tokens=2, decode="static",
                       refill=True)
    stats: dict = {}
    generate_batch(tiny_llama, CharTokenizer(), ["p"], [1.0], [1.0], [1], max_new_tokens=2, refill=True, stats=stats)
    assert stats["decode"] == "dynamic" and stats["refill"] is True


def test_refill_repeats_itself_bit_for_bit(tiny_llama):
    prompts, temps, tops, seeds = ragged_rows(23)
    kw = dict(max_new_tokens=40, batch_size=4, refill=True)
    stats: dict = {}
    first = generate_batch(tiny_llama, CharTokenizer(), prompts, temps, tops, seeds, stats=stats, **kw)
    again = generate_batch(tiny_llama, CharTokenizer(), prompts, temps, tops, seeds, **kw)
    assert stats["merges"] > 5 and first["gen_tokens"].nunique() > 3  # rows joined running batches often
    assert first["text"].tolist() == again["text"].tolist()
    assert first["gen_tokens"].tolist() == again["gen_tokens"].tolist()


def test_refill_with_every_row_in_one_batch_is_the_micro_batch_path(tiny_llama):
    """One admission holds every row: the same prefill, steps and logits as the micro-batch."""
    prompts, temps, tops, seeds = grid_rows(3)
    kw = dict(max_new_tokens=30, batch_size=16)
    fixed = generate_batch(tiny_llama, CharTokenizer(), prompts, temps, tops, seeds, refill=False, **kw)
    refill = generate_batch(tiny_llama, CharTokenizer(), prompts, temps, tops, seeds, refill=True, **kw)
    assert fixed["gen_tokens"].nunique() > 1
    assert refill["text"].tolist() == fixed["text"].tolist()
    assert refill["gen_tokens"].tolist() == fixed["gen_tokens"].tolist()


@pytest.fixture(scope="module")
def tiny_llama64(tiny_llama):
    """The tiny Llama in float64: logits that depend on the batch only at the ~1e-16 level."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_llama.config, dtype=torch.float64).eval()
    model.load_state_dict(tiny_llama.state_dict())
    return model


def test_a_row_that_joins_a_running_batch_writes_what_it_writes_alone(tiny_llama64):
    """Each row's draws follow its own step count: joining late changes nothing but rounding."""
    prompts, temps, tops, seeds = ragged_rows(17)
    stats: dict = {}
    batched = generate_batch(tiny_llama64, CharTokenizer(), prompts, temps, tops, seeds, max_new_tokens=36,
                             batch_size=5, refill=True, stats=stats)
    alone = generate_batch(tiny_llama64, CharTokenizer(), prompts, temps, tops, seeds, max_new_tokens=36,
                           batch_size=1, refill=False)
    assert stats["merges"] > 5 and batched["gen_tokens"].nunique() > 3
    assert batched["text"].tolist() == alone["text"].tolist()
    assert batched["gen_tokens"].tolist() == alone["gen_tokens"].tolist()
