"""The device sampler: bit-identical picks to the full-sort reference on CPU, per-row settings and seeds."""

import pytest
import torch

from cleancurate.engine.sampling import HEAD_WIDTHS, _Sampler, draw_uniforms, sample_next
from tests.oracles import baseline_sample_next


# the sampler as it was before the device sampler (a full stable sort of every row on the host),
# kept verbatim in tests/oracles.py (bench.generation's baseline too)
reference_sample_next = baseline_sample_next


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


GRID = [(t, p) for t in (0.0, 0.2, 0.6, 1.0, 1.5) for p in (0.2, 0.5, 0.8, 0.95, 1.0)]


@pytest.mark.parametrize("scale,vocab", [(1.0, 500), (4.0, 5000), (8.0, 49152), (0.3, 2000)])
def test_picks_equal_the_full_sort_reference(scale, vocab):
    # flat (scale 0.3) and peaked (scale 8) rows: heads that hold top-p, and heads that do not
    g = torch.Generator().manual_seed(vocab)
    n = len(GRID)
    mismatches = 0
    for step in range(6):
        logits = torch.randn(n, vocab, generator=g) * scale
        seeds = [1000 * step + i for i in range(n)]
        temps, tops = [t for t, _ in GRID], [p for _, p in GRID]
        want = reference_sample_next(logits, temps, tops, _gens(seeds))
        got = sample_next(logits, temps, tops, _gens(seeds))
        mismatches += int((want != got).sum())
    assert mismatches == 0


def test_ties_are_broken_by_token_id_like_the_reference():
    # many equal logits: the head must order them as a stable sort of the whole row does
    logits = torch.zeros(8, 300)
    logits[:, ::7] = 2.0
    logits[:, 5] = 3.0
    temps, tops = [1.0] * 8, [0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0, 1.0]
    seeds = list(range(8))
    for step in range(20):
        want = reference_sample_next(logits, temps, tops, _gens([s + 100 * step for s in seeds]))
        got = sample_next(logits, temps, tops, _gens([s + 100 * step for s in seeds]))
        assert got.tolist() == want.tolist()


def test_sample_next_is_per_row_deterministic_and_independent_of_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    settings = [(0.7, 0.9, 11), (1.0, 1.0, 12), (0.3, 0.5, 13), (1.0, 0.2, 14)]

    def draw(rows):
        gens = [torch.Generator().manual_seed(settings[i][2]) for i in rows]
        return sample_next(logits[rows], [settings[i][0] for i in rows], [settings[i][1] for i in rows], gens).tolist()

    together = draw([0, 1, 2, 3])
    assert together == [draw([i])[0] for i in range(4)]
    assert together == draw([0, 1, 2, 3])
    assert draw([3, 0]) == [together[3], together[0]]


def test_sampling_settings_are_honoured():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]] * 200)
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    greedy = sample_next(logits, [0.0] * 200, [1.0] * 200, gens)
    assert greedy.eq(0).all()
    tiny_p = sample_next(logits, [1.0] * 200, [0.01] * 200, gens)
    assert tiny_p.eq(0).all()  # top-p keeps only the most likely token
    hot = sample_next(logits, [1.0] * 200, [1.0] * 200, gens)
    assert set(hot.tolist()) >= {0, 1}
    # frequencies follow the tempered distribution: p(0) = e^1 / (e^1 + 1 + ...) ~ 0.70
    many = torch.tensor([[5.0, 4.0, 1.0, 0.0]] * 4000)
    draws = sample_next(many, [1.0] * 4000, [1.0] * 4000, _gens(range(4000)))
    share0 = draws.eq(0).float().mean().item()
    assert abs(share0 - torch.softmax(many[0], -1)[0].item()) < 0.03


def test_uniforms_drawn_up_front_equal_one_draw_per_step():
    seeds = [3, 2**40 + 7, 99]
    ahead = draw_uniforms(seeds, 70)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(s)
        assert torch.equal(ahead[i], torch.stack([torch.rand((), generator=g) for _ in range(70)]))


def test_decode_sampler_counts_rows_that_need_a_wider_head():
    # a flat row at top-p 1.0 cannot be settled by the first head; a peaked one can
    logits = torch.full((2, 4000), 0.0)
    logits[1, 7] = 30.0
    s = _Sampler([1.0, 1.0], [1.0, 1.0], [1, 2], steps=1, device="cpu")
    tokens, exact, probs = s.first(logits)
    assert exact.tolist() == [False, True]
    assert tokens[1].item() == 7
    fixed = s.rest(probs, tokens, (~exact).nonzero().squeeze(1))
    want = reference_sample_next(logits, [1.0, 1.0], [1.0, 1.0], _gens([1, 2]))
    assert fixed.tolist() == want.tolist()
    assert s.stats == {"rows": 2, "wider": 1}
    assert HEAD_WIDTHS[0] < 4000
