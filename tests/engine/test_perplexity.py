"""Perplexity scoring against a direct transformers computation."""

import math

import pytest
import torch

from cleancurate.engine.perplexity import encode_pairs, score_batch, window_chunks

QUERIES = [
    "What is the capital of France?",
    "How do I boil an egg?",
    "hi",
    "Give me three tips for studying.",
    "Why is the sky blue?",
]
RESPONSES = [
    "The capital of France is Paris.",
    "Put the egg in boiling water for nine minutes, then cool it in cold water.",
    "asdf qwer zxcv lkjh",
    "Sleep well, review a little every day, and test yourself instead of rereading. " * 3,
    "Sunlight scatters off air molecules, and blue light scatters the most.",
]


def direct_ppl(lm, query, response):
    """exp(mean NLL of response tokens | query) with the labels API of transformers."""
    ids, start = encode_pairs(lm.tokenizer, [query], [response])[0]
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, :start] = -100
    with torch.no_grad():
        return math.exp(lm.model(x, labels=labels).loss.item())


pytestmark = pytest.mark.model


def test_perplexity_matches_transformers_with_the_query_masked(lm):
    got = score_batch(lm.model, lm.tokenizer, QUERIES, RESPONSES, token_budget=1024)
    assert list(got.columns) == ["ppl", "scored_tokens", "error"]
    for i, (q, r) in enumerate(zip(QUERIES, RESPONSES)):
        assert got.error[i] is None
        assert got.ppl[i] == pytest.approx(direct_ppl(lm, q, r), rel=1e-4)
        assert got.scored_tokens[i] == len(lm.tokenizer(r, add_special_tokens=False)["input_ids"])
    # nonsense is more surprising than a plain fact
    assert got.ppl[2] > 10 * got.ppl[0]


def test_token_budget_batching_equals_scoring_each_row_alone_in_input_order(lm):
    batched = score_batch(lm.model, lm.tokenizer, QUERIES, RESPONSES, token_budget=160)
    for i in range(len(QUERIES)):
        alone = score_batch(lm.model, lm.tokenizer, [QUERIES[i]], [RESPONSES[i]], token_budget=10_000)
        assert batched.ppl[i] == pytest.approx(alone.ppl[0], rel=1e-4)


def test_the_query_changes_the_score(lm):
    a = score_batch(lm.model, lm.tokenizer, ["What is the capital of France?"], ["Paris."]).ppl[0]
    b = score_batch(lm.model, lm.tokenizer, ["How do I fix a bike chain?"], ["Paris."]).ppl[0]
    assert a < b


def test_long_text_uses_a_sliding_window_and_is_not_truncated(lm):
    long = RESPONSES[3] * 4
    full = score_batch(lm.model, lm.tokenizer, [QUERIES[3]], [long], max_context=4096)
    win = score_batch(lm.model, lm.tokenizer, [QUERIES[3]], [long], max_context=96, stride=48)
    n_tokens = len(lm.tokenizer(long, add_special_tokens=False)["input_ids"])
    assert full.scored_tokens[0] == win.scored_tokens[0] == n_tokens
    assert win.error[0] is None
    # less context per token costs some certainty, but the estimate stays close
    assert win.ppl[0] >= full.ppl[0] * 0.98
    assert win.ppl[0] == pytest.approx(full.ppl[0], rel=0.5)


def test_window_chunks_score_every_token_exactly_once():
    ids = list(range(100))
    chunks = window_chunks(ids, start=10, max_context=32, stride=16)
    scored = []
    for chunk, first in chunks:
        assert len(chunk) <= 32
        offset = ids.index(chunk[0])
        scored += list(range(offset + first, offset + len(chunk)))
    assert scored == list(range(10, 100))


def test_empty_response_gets_an_error_not_a_number(lm):
    got = score_batch(lm.model, lm.tokenizer, ["q", "What is 2+2?"], ["", "4"])
    assert got.error[0] == "empty response: nothing to score" and math.isnan(got.ppl[0])
    assert got.error[1] is None and got.ppl[1] > 0


@pytest.mark.model
def test_retention_is_low_when_the_candidate_carries_the_original_and_high_when_not(lm):
    from cleancurate.engine.perplexity import retention_batch

    q = "When did the Berlin Wall fall?"
    original = "The Berlin Wall fell on 9 November 1989, when East Germany opened its border crossings."
    keeps = "East Germany opened the border crossings on 9 November 1989, and the Berlin Wall fell."
    drops = "Walls are built for many reasons, and history has seen a great number of them."
    out = retention_batch(lm.model, lm.tokenizer, [q, q, q], [keeps, drops, original], [original] * 3)
    keep_r, drop_r, copy_r = out.retention
    assert out.error.isna().all()
    assert keep_r < 0.6 < drop_r
    assert copy_r < keep_r  # a verbatim copy explains the original best: retention alone is not enough

