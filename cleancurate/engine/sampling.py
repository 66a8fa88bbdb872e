"""Exact top-p sampling with per-row settings and seeds, on the logits' device.

One concern: turning a row's logits into its next token. Every row keeps its own
temperature and top-p and draws its uniform numbers from its own generator seeded with
the row's seed, so a batch can mix sampling settings (no grouping by setting) and a
row draws what it would draw alone, whatever the other rows of its batch are doing.
Only the head of each row is sorted; :func:`_pick` proves, row by row, that the pick
equals a full sort's or hands the row to a wider head.
"""

from typing import Sequence

#: widths of the vocabulary head tried before a full sort (see :func:`_pick`)
HEAD_WIDTHS = (64, 1024)


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
