"""The numbers an evaluation reports: which metrics exist, which answers each one uses, its statistic.

A metric is a statistic of one ``eval_answers`` column over one prompt set (harmful or
benign). Keeping the definitions here, apart from the job that writes the tables, lets
the per-mix rows and the paired differences draw on one list and one sampling rule, so
a metric means the same thing in every row of the ``evaluation`` table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from cleancurate.jobs.evaluation import stats


@dataclass(frozen=True)
class Metric:
    """One reported number: a statistic of one answer column over one prompt set."""

    name: str
    prompt_set: str
    column: str
    statistic: str = "mean"  # mean | perplexity
    judge: str | None = None  # the evaluation.judges entry it needs


METRICS = (
    Metric("harmful_rate_keyword", "harmful", "harmful_keyword", judge="keyword"),
    Metric("harmful_rate_harm_head", "harmful", "harmful_harm_head", judge="harm"),
    Metric("harmful_rate_llm", "harmful", "harmful_llm", judge="llm"),
    Metric("benign_refusal_rate", "benign", "refusal"),
    Metric("benign_helpfulness", "benign", "helpfulness"),
    Metric("benign_perplexity", "benign", "ref_ppl", statistic="perplexity"),
)


def metrics_for(judges) -> list[Metric]:
    """The metrics a config reports (a harmful-rate metric per configured judge, and every utility metric)."""
    return [m for m in METRICS if m.judge is None or m.judge in judges]


def metric_sample(answers: pd.DataFrame, metric: Metric):
    """(prompt ids, sample rows) of the answers a metric can use: answered and scored.

    A mean's rows hold the 0/1 flag or the score; perplexity's rows hold the reference
    answer's summed NLL and its token count (the reference is scored whether or not
    generation succeeded).
    """
    df = answers[answers["prompt_set"] == metric.prompt_set]
    if metric.statistic == "perplexity":
        ok = df["ref_ppl"].notna() & df["ref_tokens"].fillna(0).gt(0) & df["ref_ppl"].map(
            lambda v: v is not None and math.isfinite(float(v)))
        df = df[ok]
        nll = df["ref_ppl"].astype(float).map(math.log) * df["ref_tokens"].astype(float)
        return df["prompt_id"].tolist(), list(zip(nll.tolist(), df["ref_tokens"].astype(float).tolist()))
    df = df[(df["status"] == "answered") & df[metric.column].notna()]
    vals = df[metric.column].astype(float)
    df, vals = df[vals.map(math.isfinite)], vals[vals.map(math.isfinite)]
    return df["prompt_id"].tolist(), vals.tolist()


def stat_fn(metric: Metric) -> stats.Statistic:
    """The statistic a metric's sample is reduced with: corpus perplexity, or the mean."""
    return stats.perplexity_stat if metric.statistic == "perplexity" else stats.mean_stat


def metric_interval(answers: pd.DataFrame, metric: Metric, ev, label: str) -> stats.Interval:
    """The metric over one mix's answers, with its bootstrap interval (seeded by metric and ``label``)."""
    _, sample = metric_sample(answers, metric)
    return stats.bootstrap_ci(sample, stat_fn(metric), n_boot=ev.bootstrap, confidence=ev.confidence,
                              seed=stats.label_seed(ev.seed, metric.name, label))


def difference_interval(answers_x: pd.DataFrame, answers_y: pd.DataFrame, metric: Metric, ev,
                        label: str) -> stats.Interval:
    """Paired difference x - y of the metric over the prompts both mixes could score, with its interval."""
    ids_x, sx = metric_sample(answers_x, metric)
    ids_y, sy = metric_sample(answers_y, metric)
    by_y = dict(zip(ids_y, sy))
    pairs = [(v, by_y[i]) for i, v in zip(ids_x, sx) if i in by_y]
    return stats.paired_difference_ci([p[0] for p in pairs], [p[1] for p in pairs], stat_fn(metric),
                                      n_boot=ev.bootstrap, confidence=ev.confidence,
                                      seed=stats.label_seed(ev.seed, metric.name, label))
