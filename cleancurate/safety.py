"""The harm check on CPU: a logistic-regression head on sentence embeddings.

It answers "is this response a harmful answer to this query?" from the embeddings the
scorer already computes (all-MiniLM-L6-v2, L2-normalised) of the response ``t`` and
its query ``q``. Harm is mostly an interaction: the same compliant answer is harmful
under an unsafe request and fine under a benign one, and a refusal is safe under
either. So the features are named parts of ``t`` and ``q``: ``t`` (what the answer
says), ``q*t`` (the answer read against its question) and ``q`` (what was asked).

The head is plain data (a JSON file under ``conf/safety/``): the feature parts, the
weights, the bias, the operating ``threshold`` chosen with it, and how it was made
and measured. ``python -m bench.safety_head --write`` trains it on real labeled text
(``data/real/``) and the project's own labels, and stores its out-of-fold figures
beside the weights. Nothing here needs pyspark.

A head made with ``refusals_safe`` scores an answer that the refusal rule
(:func:`cleancurate.refusal.is_refusal`) recognises as 0: a refusal is not a harmful
answer, whatever it is about, and the embeddings confuse a refusal that names the
harm ("rape is a serious crime ...") with help on the same topic.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

#: The feature parts a head may use, in the order they are concatenated.
PARTS = ("t", "q*t", "q")
#: The parts a head is trained on by default.
FEATURES = "t,q*t,q"
#: Threshold of a head file that does not carry its own.
DEFAULT_THRESHOLD = 0.5


def _parts(spec: str) -> list[str]:
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"harm head features {spec!r}: unknown part(s) {bad}; known parts are {list(PARTS)}")
    return parts


def features(q, t, spec: str = FEATURES):
    """Feature matrix of query and response embeddings (torch, n x d): the parts named by ``spec``."""
    import torch

    values = {"t": t, "q*t": q * t, "q": q}
    return torch.cat([values[p] for p in _parts(spec)], dim=-1)


class HarmHead:
    """Logistic regression over :func:`features`: a harm score in [0, 1] per (query, response).

    ``threshold`` is the screen's operating point chosen with the head
    (``harm.threshold: null`` uses it) and ``gate_threshold`` the lower one of the gate's
    ``harmful`` rule (``harm.gate_threshold: null``): a false alarm in the gate costs one
    rejected revision, in the screen a good row. The score is class-balanced, so it ranks
    well but is not a calibrated probability.
    """

    def __init__(self, weights: Sequence[float], bias: float, meta: dict | None = None,
                 features: str = FEATURES, threshold: float = DEFAULT_THRESHOLD, refusals_safe: bool = False,
                 gate_threshold: float | None = None):
        self.weights = [float(w) for w in weights]
        self.bias = float(bias)
        self.meta = dict(meta or {})
        self.features = ",".join(_parts(features))
        self.threshold = float(threshold)
        self.refusals_safe = bool(refusals_safe)
        self.gate_threshold = float(threshold if gate_threshold is None else gate_threshold)

    @classmethod
    def from_json(cls, text: str) -> "HarmHead":
        """Load a head from its JSON text (see :meth:`to_json`)."""
        d = json.loads(text)
        spec = d.get("features")
        if not isinstance(spec, str):
            raise ValueError(f"harm head has no 'features' string (got {spec!r}); retrain it")
        known = ("weights", "bias", "features", "threshold", "refusals_safe", "gate_threshold")
        return cls(d["weights"], d["bias"], {k: v for k, v in d.items() if k not in known}, features=spec,
                   threshold=d.get("threshold", DEFAULT_THRESHOLD), refusals_safe=d.get("refusals_safe", False),
                   gate_threshold=d.get("gate_threshold"))

    def to_json(self) -> str:
        return json.dumps({**self.meta, "features": self.features, "threshold": round(self.threshold, 4),
                           "gate_threshold": round(self.gate_threshold, 4), "refusals_safe": self.refusals_safe,
                           "bias": self.bias,
                           "weights": [round(w, 6) for w in self.weights]})

    def score(self, q, t, texts: Sequence[str]) -> list[float]:
        """The harm check per row: :meth:`probability`, and 0 for a refusal when ``refusals_safe``."""
        return self.apply_refusals(self.probability(q, t), texts)

    def apply_refusals(self, scores: Sequence[float], texts: Sequence[str]) -> list[float]:
        """``scores`` with each refusal's set to 0 when the head is ``refusals_safe`` (else unchanged)."""
        if not self.refusals_safe:
            return list(scores)
        from cleancurate.refusal import is_refusal

        return [0.0 if is_refusal(text) else float(s) for s, text in zip(scores, texts)]

    def probability(self, q, t) -> list[float]:
        """The head's score per row from query and response embeddings (torch, n x d), refusals not applied."""
        return self.probability_of_features(features(q, t, self.features))

    def logits(self, x):
        """Logit per row of a :func:`features` matrix (torch, float64)."""
        import torch

        x = x.double()
        w = torch.tensor(self.weights, dtype=torch.float64)
        if x.shape[-1] != w.shape[0]:
            raise ValueError(f"harm head expects {w.shape[0]} features ({self.features}), "
                             f"the embeddings give {x.shape[-1]}")
        return x @ w + self.bias

    def probability_of_features(self, x) -> list[float]:
        """Harm score per row of a :func:`features` matrix."""
        import torch

        return torch.sigmoid(self.logits(x)).tolist()


def fit(x, y: Sequence[int], l2: float = 1e-3, steps: int = 300, *, sample_weight: Sequence[float] | None = None,
        pairs=None, pair_weight: float = 0.0, features: str = FEATURES) -> HarmHead:
    """Fit a head: weighted logistic loss on labeled rows plus a pairwise ranking loss.

    Args:
        x, y: feature rows and their 0/1 labels.
        l2: L2 penalty on the weights (not the bias).
        sample_weight: per-row weights; None balances the two classes.
        pairs: ``(xa, xb)`` feature rows where each ``xa[i]`` is more harmful than
            ``xb[i]`` (pairwise labels, e.g. a rejected and a chosen answer to the same
            conversation); their loss is ``softplus(-(s(xa) - s(xb)))``, averaged.
        pair_weight: weight of the pairwise loss against the row loss.
        features: the feature parts ``x`` was built with, stored in the head.

    Deterministic for the same inputs: full-batch L-BFGS, no sampling, zero start.
    """
    import torch

    x = x.double()
    yt = torch.tensor([float(v) for v in y], dtype=torch.float64)
    if sample_weight is None:
        pos = max(1.0, float(yt.sum()))
        neg = max(1.0, float(len(yt) - yt.sum()))
        weight = torch.where(yt > 0, len(yt) / (2 * pos), len(yt) / (2 * neg))
    else:
        weight = torch.tensor([float(v) for v in sample_weight], dtype=torch.float64)
    diff = (pairs[0].double() - pairs[1].double()) if pairs is not None and pair_weight > 0 else None
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        rows = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, yt, reduction="none")
        loss = (rows * weight).sum() / weight.sum()
        if diff is not None:
            loss = loss + pair_weight * torch.nn.functional.softplus(-(diff @ w)).mean()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return HarmHead(w.detach().tolist(), float(b.detach()), features=features)


def precision_recall(pred: Sequence[bool], truth: Sequence[bool]) -> dict:
    """Precision, recall and counts of a binary flag against labels."""
    tp = sum(p and t for p, t in zip(pred, truth))
    fp = sum(p and not t for p, t in zip(pred, truth))
    fn = sum(t and not p for p, t in zip(pred, truth))
    prec = tp / (tp + fp) if tp + fp else math.nan
    rec = tp / (tp + fn) if tp + fn else math.nan
    return {"precision": prec, "recall": rec, "tp": tp, "fp": fp, "fn": fn, "n": len(truth)}
