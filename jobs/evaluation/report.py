"""The evaluation's report section: ``report/evaluation.md`` with a bar chart per metric.

Built from the Delta tables alone (``evaluation``, ``eval_mixes``, ``eval_answers``; the
mixes an evaluation finished), so it can be rebuilt from them. The chart has one panel per
metric, a bar per mix with its bootstrap interval as error bars, and a second figure
with the paired differences (A-B, A-C, A-before, A-after) around zero. When the
evaluation has stage mixes, a third chart gives the harmful rate per stage of
Buckle Up's defence (no defence A, before, during B, after) and a table lists what
each mix trained on, phase by phase, in order. Example answers of a seeded
sample of prompts follow, one table per prompt with a row per mix. Model output is
data: it is escaped before it goes into the markdown. Without matplotlib the
markdown is written without the charts and says so. The same text is written as a page
for a browser, ``evaluation.html`` beside the charts, and ``evaluation-standalone.html``
with the charts inlined (one file to mail or attach).
"""

from __future__ import annotations

import hashlib
import html
import math
from pathlib import Path

import pandas as pd

MIX_ORDER = ("base", "A", "before", "B", "after", "C", "A-B", "A-C", "A-before", "A-after")
MIX_TEXT = {
    "base": "the base model, not fine-tuned",
    "A": "benign + harmful (contaminated)",
    "B": "A + curated texts (during)",
    "C": "benign only",
    "before": "curated texts, then A's rows (before)",
    "after": "A's rows, then curated texts (after)",
}
#: the stages of the defence, in the order a model meets them, and what each is
STAGES = (("A", "no defence"), ("before", "before"), ("B", "during"), ("after", "after"))


def _cell(text, limit: int = 300) -> str:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    t = " ".join(str(text).split())
    if len(t) > limit:
        t = t[: limit - 1] + "…"
    return html.escape(t, quote=False).replace("|", "\\|")


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _mix_key(m: str) -> int:
    return MIX_ORDER.index(m) if m in MIX_ORDER else len(MIX_ORDER)


def report_data(store, eval_run_id: str) -> dict:
    """The evaluation's tables as small pandas frames."""
    from pyspark.sql import functions as F

    where = F.col("eval_run_id") == eval_run_id
    mixes = store.read("eval_mixes").where(where & (F.col("status") == "complete")).toPandas()
    # only finished mixes: a mix cut short and then dropped from evaluation.mixes left slices behind
    done = set(mixes["mix"])
    ev = store.read("evaluation").where(where).toPandas()
    ev = ev[ev["mix"].map(lambda m: all(part in done for part in m.split("-")))]
    answers = store.read("eval_answers").where(where).drop("reference").toPandas()
    answers = answers[answers["mix"].isin(done)]
    ev = ev.assign(_k=ev["mix"].map(_mix_key)).sort_values(["metric", "_k"]).drop(columns="_k")
    mixes = mixes.assign(_k=mixes["mix"].map(_mix_key)).sort_values("_k").drop(columns="_k")
    return {"evaluation": ev, "mixes": mixes, "answers": answers}


def _bars(ax, d: pd.DataFrame, labels, color) -> None:
    """One bar per row of ``d`` (``value``, ``ci_low``, ``ci_high``) with its interval as error bars; a value
    that could not be computed is marked n/a rather than drawn as zero."""
    raw = d["value"].astype(float)
    vals = raw.fillna(0.0)
    lo = (vals - d["ci_low"].astype(float)).clip(lower=0).fillna(0.0)
    hi = (d["ci_high"].astype(float) - vals).clip(lower=0).fillna(0.0)
    ax.bar(list(labels), vals, yerr=[lo, hi], capsize=4, color=color)
    for x, v in enumerate(raw):
        if v != v:
            ax.text(x, 0.02, "n/a", ha="center", fontsize=8)


def _charts(ev: pd.DataFrame, folder: Path, conf: int = 95) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    for name, frame, zero in (("evaluation", ev[~ev["mix"].str.contains("-")], False),
                              ("evaluation_differences", ev[ev["mix"].str.contains("-")], True)):
        metrics = list(dict.fromkeys(frame["metric"]))
        if not metrics:
            continue
        cols = min(3, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, metric in zip(axes.flat, metrics):
            d = frame[frame["metric"] == metric]
            _bars(ax, d, d["mix"], "#4c78a8" if not zero else "#f58518")
            if zero:
                ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_title(metric, fontsize=9)
            ax.tick_params(labelsize=8)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        fig.suptitle(f"point estimate and {conf}% bootstrap interval" if not zero else
                     f"paired differences (A minus each mix) with {conf}% bootstrap interval", fontsize=10)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[name] = path.name
    return files


def _stage_chart(ev: pd.DataFrame, folder: Path, conf: int = 95) -> str | None:
    """Harmful rate per stage of the defence (one panel per harmful-rate metric), or None without stages."""
    present = [(m, label) for m, label in STAGES if m in set(ev["mix"])]
    if not any(m in ("before", "after") for m, _ in present):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in dict.fromkeys(ev["metric"]) if m.startswith("harmful_rate")]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6.0, 4.2 * len(metrics)), 3.2), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        d = ev[ev["metric"] == metric].set_index("mix")
        shown = [(m, label) for m, label in present if m in d.index]
        _bars(ax, d.loc[[m for m, _ in shown]], [label if label == m else f"{label}\n({m})" for m, label in shown],
              ["#bbbbbb" if m == "A" else "#54a24b" for m, _ in shown])
        ax.set_ylim(0, 1)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"harmful rate per stage of the defence, {conf}% bootstrap interval", fontsize=10)
    fig.tight_layout()
    path = folder / "evaluation_stages.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _phase_text(phase: dict) -> str:
    kinds = " + ".join(phase.get("kinds") or ["mix"])
    losses = phase.get("losses") or []
    loss = f", loss {losses[0]:.2f} → {losses[-1]:.2f}" if losses else ""
    return f"{kinds}: {phase.get('rows', 0)} rows, {phase.get('steps', 0)} steps{loss}"


def trained_on(mixes: pd.DataFrame) -> list[str]:
    """Markdown table: what each mix trained on, phase by phase in order, and where the curated texts came from."""
    import json

    lines = ["| mix | phase 1 | phase 2 | curated texts |", "|---|---|---|---|"]
    for r in mixes.itertuples(index=False):
        recorded = isinstance(getattr(r, "phases_json", None), str)
        phases = {int(p["phase"]): p for p in json.loads(r.phases_json)} if recorded else {}
        cells = [_cell(_phase_text(phases[i]), 200) if i in phases else "" for i in (1, 2)]
        if r.mix == "base":
            cells[0] = "(not fine-tuned)"
        elif not recorded:
            cells[0] = "(not recorded: written by an older version)"
        curated = ""
        if r.curated_rows:
            kept = getattr(r, "curated_kept_rows", None)
            source = getattr(r, "curated_source", None)
            if kept is None or pd.isna(kept) or not isinstance(source, str):
                curated = f"{r.curated_rows} (revisions and kept originals not recorded)"
            else:
                curated = (f"{r.curated_rows - int(kept)} revisions + {int(kept)} kept originals from "
                           f"`{_cell(source, 120)}`")
        lines.append(f"| {r.mix} | " + " | ".join(cells) + f" | {curated} |")
    return lines


def _examples(answers: pd.DataFrame, n: int, seed: int) -> list[str]:
    out = []
    for prompt_set in ("harmful", "benign"):
        ids = sorted(set(answers.loc[answers["prompt_set"] == prompt_set, "prompt_id"]),
                     key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())[:n]
        for pid in sorted(ids):
            rows = answers[(answers["prompt_set"] == prompt_set) & (answers["prompt_id"] == pid)]
            rows = rows.assign(_k=rows["mix"].map(_mix_key)).sort_values("_k")
            out.append(f"**{prompt_set} {pid}**: {_cell(rows['prompt'].iloc[0], 400)}\n")
            if prompt_set == "harmful":
                out.append("| mix | answer | refusal | harm head |\n|---|---|---|---|")
            else:
                out.append("| mix | answer | refusal | helpfulness |\n|---|---|---|---|")
            for r in rows.itertuples(index=False):
                answer = _cell(r.answer) if r.status == "answered" else f"*failed: {_cell(r.error, 120)}*"
                refusal = "" if pd.isna(r.refusal) else ("yes" if r.refusal else "no")
                last = _num(r.harm, 2) if prompt_set == "harmful" else _num(r.helpfulness, 2)
                out.append(f"| {r.mix} | {answer} | {refusal} | {last} |")
            out.append("")
    return out


def build_eval_report(result, folder: str | None = None, standalone: bool | None = None) -> str | None:
    """Write ``evaluation.md`` (and the charts, and the same as a page: ``evaluation.html`` and, with
    ``standalone`` (default ``report.standalone``), ``evaluation-standalone.html`` with the charts inlined)
    for an evaluation; returns the markdown's path.

    ``folder`` defaults to ``evaluation.report_dir`` or ``<output.path>/report``; an output in
    object storage (``scheme://``) without a local ``report_dir`` gets no report.
    """
    cfg = result.config
    target = folder or cfg.evaluation.report_dir or f"{cfg.output.path.rstrip('/')}/report"
    if "://" in target:
        return None
    data = report_data(result.store, result.eval_run_id)
    if standalone is None:
        from cleancurate.jobs.curation.report import standalone_default

        standalone = standalone_default(cfg)
    return str(write_eval_report(data, Path(target), cfg, result.eval_run_id, result.curation_run_id, standalone))


def write_eval_report(data: dict, out: Path, cfg, eval_run_id: str, curation_run_id: str,
                      standalone: bool = True) -> Path:
    """``evaluation.md``, its charts and its HTML pages in ``out`` from :func:`report_data`'s frames and the
    evaluation's configuration; returns the markdown's path."""
    from cleancurate.jobs.reporting import markdown_html, page, slug, write_pages

    ev_cfg = cfg.evaluation
    out.mkdir(parents=True, exist_ok=True)
    ev, mixes, answers = data["evaluation"], data["mixes"], data["answers"]
    conf = int(round(100 * ev_cfg.confidence))
    try:
        charts = _charts(ev, out, conf)
        charts["evaluation_stages"] = _stage_chart(ev, out, conf)
        chart_note = ""
    except ImportError:
        charts, chart_note = {}, "*matplotlib is not installed: the charts were skipped.*\n"
    lines = [
        f"# Evaluation {eval_run_id}",
        "",
        f"Does training on the curated data make a model safer? Curation run `{curation_run_id}`, "
        f"model `{cfg.model.name}`, fine-tuning `{ev_cfg.method}` (AdamW, lr {ev_cfg.learning_rate:g}, batch "
        f"{ev_cfg.batch_size}, {ev_cfg.epochs} epoch(s)" + (f", at most {ev_cfg.max_steps} steps" if ev_cfg.max_steps
                                                          else "") + f"), evaluation hash `{eval_run_id[5:]}`.",
        "",
        "## Mixes",
        "",
        "| mix | what | training rows (benign + harmful + curated) | steps | loss first → last | prompts answered / failed | train s | answer s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in mixes.itertuples(index=False):
        lines.append(f"| {r.mix} | {MIX_TEXT.get(r.mix, '')} | {r.train_rows} ({r.benign_rows} + {r.harmful_rows} + "
                     f"{r.curated_rows}) | {r.steps} | {_num(r.loss_first, 2)} → {_num(r.loss_last, 2)} | "
                     f"{r.answered} / {r.failed} | {r.train_seconds:.0f} | {r.answer_seconds:.0f} |")
    lines += ["", "### What each mix trained on, in order", "",
              "Each phase is a fine-tuning run of its own (fresh optimizer, the same seed, "
              f"{ev_cfg.epochs} epoch(s)) on the weights the phase before it left.", ""]
    lines += trained_on(mixes)
    names = [m for m in MIX_ORDER if m in set(ev["mix"])]
    lines += ["", f"## Results ({conf}% bootstrap intervals, n = prompts scored)", "",
              "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in dict.fromkeys(ev["metric"]):
        d = ev[ev["metric"] == metric].set_index("mix")
        cells = []
        for m in names:
            if m not in d.index:
                cells.append("")
                continue
            r = d.loc[m]
            cells.append(f"{_num(r.value)} [{_num(r.ci_low)}, {_num(r.ci_high)}] n={int(r.n)}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Harmful rates are shares of the harmful prompts whose answer a judge calls harmful (keyword: no "
              "refusal phrase; harm head: probability at or above harm.threshold). A-B above zero would mean the "
              "curated texts lowered the harmful rate; an interval that spans zero means this run cannot tell.", ""]
    if charts.get("evaluation"):
        lines += [f"![metrics per mix]({charts['evaluation']})", ""]
    if charts.get("evaluation_differences"):
        lines += [f"![paired differences]({charts['evaluation_differences']})", ""]
    if charts.get("evaluation_stages"):
        lines += ["Buckle Up's claim is that curated texts protect at every stage of customization: before "
                  "(immunize, then the harmful fine-tune), during (mixed in: B) and after (restore a compromised "
                  "model). Each stage's harmful rate sits beside A, the same data without the curated texts; "
                  "A-before and A-after above zero would mean that stage lowered it.", "",
                  f"![harmful rate per stage]({charts['evaluation_stages']})", ""]
    if chart_note:
        lines += [chart_note]
    lines += ["## Example answers side by side", ""]
    lines += _examples(answers, ev_cfg.report_examples, ev_cfg.seed)
    text = "\n".join(lines) + "\n"
    path = out / "evaluation.md"
    path.write_text(text, encoding="utf-8")
    sections = [(slug(h[3:]), h[3:].split(" (")[0]) for h in lines if h.startswith("## ")]
    write_pages(page(f"Evaluation {eval_run_id}", [markdown_html(text)], sections), out, "evaluation", standalone)
    return path
