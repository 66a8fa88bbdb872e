"""The harm check: a small logistic-regression head on sentence embeddings.

Harmful answers in crowdsourced data are mostly not about dangerous topics; they
give bad advice on ordinary ones ("skip the doctor", "lie to your landlord"), so
keyword lists and cosine to an anchor sentence separate them poorly. The head reads
the embeddings the scorer already computes (all-MiniLM-L6-v2, L2-normalised) for the
response ``t`` and its query ``q`` and uses ``[t, q * t]`` as features: the second
half lets the same sentence count differently under different questions.

The head is plain data (a JSON file under ``conf/safety/``), trained by
``python -m bench.safety_head`` on the project's labeled texts (see
``data/gate_set/README.md``), with its cross-validated precision and recall stored
beside the weights. Nothing here needs pyspark.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

FEATURES = "t,q*t"


def features(q, t):
    """Feature matrix ``[t, q * t]`` from query and response embeddings (torch, n x d)."""
    import torch

    return torch.cat([t, q * t], dim=-1)


class HarmHead:
    """Logistic regression over :func:`features`: ``P(harmful | query, response)``."""

    def __init__(self, weights: Sequence[float], bias: float, meta: dict | None = None):
        self.weights = [float(w) for w in weights]
        self.bias = float(bias)
        self.meta = dict(meta or {})

    @classmethod
    def from_json(cls, text: str) -> "HarmHead":
        """Load a head from its JSON text (see :meth:`to_json`)."""
        d = json.loads(text)
        if d.get("features") != FEATURES:
            raise ValueError(f"harm head features {d.get('features')!r} are not {FEATURES!r}; retrain it")
        return cls(d["weights"], d["bias"], {k: v for k, v in d.items() if k not in ("weights", "bias")})

    def to_json(self) -> str:
        return json.dumps({**self.meta, "features": FEATURES, "bias": self.bias,
                           "weights": [round(w, 6) for w in self.weights]})

    def probability(self, q, t) -> list[float]:
        """Harm probability per row from query and response embeddings (torch, n x d)."""
        return self.probability_of_features(features(q, t))

    def probability_of_features(self, x) -> list[float]:
        """Harm probability per row of a :func:`features` matrix."""
        import torch

        x = x.double()
        w = torch.tensor(self.weights, dtype=torch.float64)
        if x.shape[-1] != w.shape[0]:
            raise ValueError(f"harm head expects {w.shape[0]} features, the embeddings give {x.shape[-1]}")
        return torch.sigmoid(x @ w + self.bias).tolist()


def fit(x, y: Sequence[int], l2: float = 1e-3, steps: int = 300) -> HarmHead:
    """Fit a logistic-regression head (class-balanced, L2-penalised, full-batch L-BFGS).

    Deterministic for the same inputs: no sampling, no random initialisation.
    """
    import torch

    x = x.double()
    yt = torch.tensor([float(v) for v in y], dtype=torch.float64)
    pos = max(1.0, float(yt.sum()))
    neg = max(1.0, float(len(yt) - yt.sum()))
    weight = torch.where(yt > 0, len(yt) / (2 * pos), len(yt) / (2 * neg))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, weight=weight)
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return HarmHead(w.detach().tolist(), float(b.detach()))


def precision_recall(pred: Sequence[bool], truth: Sequence[bool]) -> dict:
    """Precision, recall and counts of a binary flag against labels."""
    tp = sum(p and t for p, t in zip(pred, truth))
    fp = sum(p and not t for p, t in zip(pred, truth))
    fn = sum(t and not p for p, t in zip(pred, truth))
    prec = tp / (tp + fp) if tp + fp else math.nan
    rec = tp / (tp + fn) if tp + fn else math.nan
    return {"precision": prec, "recall": rec, "tp": tp, "fp": fp, "fn": fn, "n": len(truth)}
