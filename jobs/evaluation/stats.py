"""Seeded bootstrap confidence intervals for rates, means, perplexities and paired differences.

A statistic is a function of a sample laid out as an array ``(..., n, k)`` (``n`` rows
of ``k`` numbers each) that returns one number per leading index, so all resamples
are computed at once:

- :func:`mean_stat`: the mean of column 0 (a rate when the column holds 0/1);
- :func:`perplexity_stat`: ``exp(sum(nll) / sum(tokens))`` over columns (nll, tokens),
  the corpus perplexity, a ratio that a mean of per-row perplexities would distort.

Intervals are percentile intervals over ``n_boot`` resamples of the rows drawn with a
``numpy`` generator seeded from the caller's seed and a label (metric and mix), so an
interval does not depend on which other metrics were computed before it. A difference
of two mixes is *paired*: both are evaluated on the same prompts, so each resample
draws prompt indices once and applies them to both.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]


def mean_stat(sample: np.ndarray) -> np.ndarray:
    """Mean of column 0 over the row axis."""
    return sample[..., 0].mean(axis=-1)


def perplexity_stat(sample: np.ndarray) -> np.ndarray:
    """Corpus perplexity ``exp(sum(nll) / sum(tokens))`` from columns (nll, tokens)."""
    return np.exp(sample[..., 0].sum(axis=-1) / sample[..., 1].sum(axis=-1))


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval over ``n`` rows (NaN when ``n`` is 0)."""

    value: float
    ci_low: float
    ci_high: float
    n: int


def label_seed(seed: int, *labels: str) -> int:
    """A 63-bit seed from ``seed`` and labels: the same labels always give the same resamples."""
    blob = ":".join([str(seed), *labels]).encode()
    return int(hashlib.sha256(blob).hexdigest()[:15], 16)


def _as_rows(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr[:, None] if arr.ndim == 1 else arr


def _percentiles(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(values, stat: Statistic = mean_stat, *, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> Interval:
    """Point estimate and percentile bootstrap interval of ``stat`` over the rows of ``values``.

    Args:
        values: a sequence of numbers, or an ``(n, k)`` array (e.g. nll and token count per row).
        stat: the statistic (:func:`mean_stat`, :func:`perplexity_stat` or one of the same shape).
        n_boot: resamples.
        confidence: interval coverage, 0.95 for a 95% interval.
        seed: resampling seed (see :func:`label_seed`).
    """
    rows = _as_rows(values)
    n = len(rows)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(stat(rows[None, ...])[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    lo, hi = _percentiles(stat(rows[idx]), confidence)
    return Interval(point, lo, hi, n)


def paired_difference_ci(a, b, stat: Statistic = mean_stat, *, n_boot: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> Interval:
    """``stat(a) - stat(b)`` with a paired bootstrap interval; row ``i`` of ``a`` and ``b`` is the same prompt."""
    ra, rb = _as_rows(a), _as_rows(b)
    if len(ra) != len(rb):
        raise ValueError(f"paired samples differ in length: {len(ra)} vs {len(rb)}")
    n = len(ra)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(stat(ra[None, ...])[0] - stat(rb[None, ...])[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    lo, hi = _percentiles(stat(ra[idx]) - stat(rb[idx]), confidence)
    return Interval(point, lo, hi, n)
