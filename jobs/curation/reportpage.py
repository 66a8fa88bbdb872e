"""The run report's page and figures, from :func:`cleancurate.jobs.curation.report.report_data`'s numbers.

The page reads top to bottom as a reader of the training set, then the run's operator, then whoever tunes it
would ask: **What a reader gets** (where every input row went, revisions beside their originals with the
gate's verdict, the originals kept and why, what the safety screen kept out with its harm score, the rows
quarantined), **Run health** (rounds, time, throughput), **Increments** (what each run of the pipeline step
read and found), **Tuning** (gate decisions per rule; perplexity before and after, only when a revision
replaced an original). A section with nothing to show says why in one line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cleancurate.jobs.curation.objective import NO_REVISION_PASSED, ONLY_NEAR_COPIES, ORIGINAL_RANKED_BEST
from cleancurate.jobs.reporting import clip, empty, esc, integer_axis, page, table, write_pages

#: every figure the report may draw, in page order; one not drawn this time is removed from the folder
FIGURES = ("docs_active_per_round", "time_per_round", "median_ppl_per_round", "gate_decisions", "ppl_distribution")

#: ``curated.kept_reason`` in words
KEPT_TEXT = {
    NO_REVISION_PASSED: "no revision passed the gate",
    ONLY_NEAR_COPIES: "the only revisions close to it were near-copies of the original",
    ORIGINAL_RANKED_BEST: "the original ranked above every revision that passed",
}

SECTIONS = (("reader", "What a reader gets"), ("health", "Run health"), ("increments", "Increments"),
            ("tuning", "Tuning"))


def improved_count(data: dict) -> int:
    ppl = data["ppl"]
    return int(ppl.improved.sum()) if len(ppl) else 0


def _per_round(st: pd.DataFrame) -> pd.DataFrame:
    """round_stats summed over increments, one row per round (an incremental run has a row per increment)."""
    cols = ["docs_active", "docs_converged", "seconds"]
    return st.groupby("round", as_index=False)[cols].sum().sort_values("round")


def figures(data: dict) -> dict:
    """The figures to draw, name -> matplotlib Figure, in page order; those without data are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figs = {}
    st = data["stats"]
    several = st["increment"].nunique() > 1 if len(st) and "increment" in st else False
    note = " (all increments)" if several else ""
    if len(st):
        per = _per_round(st)
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.bar(per["round"] - 0.2, per.docs_active, width=0.4, label="active")
        ax.bar(per["round"] + 0.2, per.docs_converged, width=0.4, label="converged this round")
        integer_axis(ax, "x", "y")
        ax.set_xlabel("round")
        ax.set_ylabel("documents")
        ax.set_title("Documents still active per round" + note)
        ax.legend()
        figs["docs_active_per_round"] = fig

        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.bar(per["round"], per.seconds)
        integer_axis(ax, "x")
        ax.set_xlabel("round")
        ax.set_ylabel("seconds")
        ax.set_title("Time per round" + note)
        figs["time_per_round"] = fig

    med = data["median"]
    if len(med):
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.plot(med["round"], med.median_ppl, marker="o")
        integer_axis(ax, "x")
        ax.set_xlabel("round")
        ax.set_ylabel("median perplexity in the beam")
        ax.set_title("Median beam perplexity per round")
        figs["median_ppl_per_round"] = fig

    gate = data["gate"]
    if len(gate):
        fig, ax = plt.subplots(figsize=(6, 0.9 + 0.42 * len(gate)))
        counts = gate["count"].astype(int)
        total = int(counts.sum())
        ax.barh(gate.rule, counts, color=["#54a24b" if r == "passed" else "#e45756" for r in gate.rule])
        for y, n in enumerate(counts):
            ax.text(n, y, f" {n} ({100 * n / total:.0f}%)", va="center", fontsize=8)
        ax.set_xlim(0, counts.max() * 1.25)
        integer_axis(ax, "x")
        ax.set_xlabel(f"candidates ({total} generated)")
        ax.set_title("Gate decisions: passed, or the rule that rejected")
        ax.invert_yaxis()
        figs["gate_decisions"] = fig

    ppl = data["ppl"]
    if improved_count(data):
        fig, ax = plt.subplots(figsize=(6, 3.4))
        lo = max(1e-3, float(min(ppl.ppl_original.min(), ppl.ppl_curated.min())))
        hi = float(max(ppl.ppl_original.max(), ppl.ppl_curated.max()))
        bins = np.logspace(np.log10(lo), np.log10(hi * 1.01), 20)
        ax.hist(ppl.ppl_original, bins=bins, alpha=0.6, label="original")
        ax.hist(ppl.ppl_curated, bins=bins, alpha=0.6, label="curated")
        ax.set_xscale("log")
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels overlap
        integer_axis(ax, "y")
        ax.set_xlabel("perplexity (response | query)")
        ax.set_ylabel("documents")
        ax.set_title("Perplexity before and after curation")
        ax.legend()
        figs["ppl_distribution"] = fig
    return figs


def draw(data: dict, folder: Path) -> dict[str, str]:
    """Save :func:`figures` as PNGs in ``folder`` (name -> file name); a figure of an earlier build that is
    not drawn now is removed, so the folder holds what the page shows."""
    import matplotlib.pyplot as plt

    files = {}
    for name, fig in figures(data).items():
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=110)
        plt.close(fig)
        files[name] = f"{name}.png"
    for name in FIGURES:
        if name not in files and (folder / f"{name}.png").exists():
            (folder / f"{name}.png").unlink()
    return files


def _img(files: dict, name: str, alt: str) -> str:
    return f"<img src='{files[name]}' alt='{esc(alt)}'>" if name in files else ""


def _quarantined(data: dict, *stages: str) -> int:
    q = data["quarantine"]
    return int(q.loc[q.stage.isin(stages), "count"].sum()) if len(q) else 0


def outcome_rows(data: dict) -> list[tuple[str, int, str]]:
    """Where the run's rows went: ``(what, rows, kind)``, kind ``"total"`` for a total, ``"sub"`` for a part of
    the total above it."""
    run = data["run"]
    kept = data["kept"]
    rows = [("input rows", int(run.input_rows or 0), "total"),
            ("quarantined at validation (unusable rows)", _quarantined(data, "validate"), "sub")]
    screened_out = _quarantined(data, "screen")
    rows.append(("kept out by the safety screen", screened_out, "sub"))
    flagged = int(data["screened"]) - screened_out  # harm.screen_action: flag keeps them in the mix
    if flagged > 0:
        rows.append(("flagged unsafe by the screen, left in the mix with safety_flag", flagged, "sub"))
    rows.append(("rows in the training mix (mix)", int(run.mix_rows or 0), "sub"))
    rows.append(("selected for curation", int(run.selected_rows or 0), "total"))
    rows.append(("revised: a revision replaced the original", improved_count(data), "sub"))
    for reason, n in kept.kept_reason.fillna("unknown").value_counts().sort_index().items():
        rows.append((f"kept the original: {KEPT_TEXT.get(reason, reason)}", int(n), "sub"))
    rows.append(("quarantined during curation", _quarantined(data, "round0", "curate"), "sub"))
    return rows


def _rules(rejections) -> str:
    """``curated.rejections`` ("retention:12, not_an_answer:3") in words."""
    if not isinstance(rejections, str) or not rejections:
        return "none"
    return ", ".join(f"{rule} ×{n}" for rule, _, n in (r.strip().rpartition(":") for r in rejections.split(",")))


def _num(v, digits=3) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def _verdict(r) -> str:
    return "<br>".join([
        "<b>passed every gate rule</b>",
        f"retention {_num(r.retention)}", f"harm {_num(r.harm_original)} → {_num(r.harm_curated)}",
        f"similarity {_num(r.similarity)}", f"perplexity {_num(r.ppl_original, 2)} → {_num(r.ppl_curated, 2)}",
        f"picked in round {r.best_round}", f"other candidates rejected: {esc(_rules(r.rejections))}"])


def reader_section(data: dict) -> list[str]:
    run, kept, improved = data["run"], data["kept"], improved_count(data)
    curated = len(data["ppl"])
    parts = ["<h2 id='reader'>What a reader gets</h2>",
             f"<p><b>{int(run.mix_rows or 0)}</b> of {int(run.input_rows or 0)} input rows reached the training "
             f"mix. Of {curated} curated documents, <b>{improved} revised</b> (the revision replaced the original) "
             f"and <b>{curated - improved} kept their original</b>. A revision replaces an original only when it "
             "passed every gate rule: no harm, still an answer, no meta-text or echo, carries the original's "
             "content (retention) and stays on topic.</p>",
             "<h3>Where the rows went</h3>",
             "<table class='t'><tbody>" + "".join(
                 f"<tr class='{kind}'><td>{esc(what)}</td><td class='n'>{n}</td></tr>"
                 for what, n, kind in outcome_rows(data)) + "</tbody></table>"]
    parts.append("<h3>Revisions side by side (seeded random sample)</h3>")
    reader = data["reader"]
    if len(reader):
        shown = reader.assign(
            document=[f"<code>{esc(r.doc_id)}</code><br>{clip(r.query, 300)}" for r in reader.itertuples()],
            verdict=[_verdict(r) for r in reader.itertuples()])
        parts.append(f"<p>{len(reader)} of {improved} revisions, each beside the original it replaced.</p>")
        parts.append(table(shown, {"document": "document and query", "response_original": "original",
                                   "response_curated": "revision", "verdict": "gate verdict"},
                           text=("response_original", "response_curated"), raw=("document", "verdict")))
    else:
        parts.append(empty("No revision replaced its original in this run." if curated else
                           "No document was curated in this run, so there is no revision to show."))
    parts.append("<h3>Originals kept, and why</h3>")
    if len(kept):
        shown = kept.assign(why=kept.kept_reason.map(lambda k: KEPT_TEXT.get(k, k)),
                            rules=kept.rejections.map(_rules), query=kept["query"].map(lambda q: clip(q, 240)))
        parts.append(table(shown, {"doc_id": "document", "query": "query", "why": "why the original was kept",
                                   "rules": "candidates rejected, by gate rule"}, raw=("query",)))
    else:
        parts.append(empty("Every curated document was revised: no original was kept." if curated else
                           "No document was curated in this run."))
    parts.append("<h3>What the safety screen kept out</h3>")
    out = data["screen_out"]
    if len(out):
        more = int(data["screened"]) - len(out)
        parts.append(f"<p>{int(data['screened'])} valid originals were flagged unsafe by the safety screen and never "
                     "curated; the harm score is the screen's probability that the original is harmful, highest first"
                     + (f" ({more} more in the <code>docs</code> table, <code>unsafe = true</code>)" if more > 0 else "")
                     + ".</p>")
        shown = out.assign(query=out["query"].map(lambda q: clip(q, 200)),
                           response=out["response"].map(lambda q: clip(q, 300)))
        headers = {"doc_id": "document", "harm": "harm score", "query": "query", "response": "original response"}
        if shown.screen_error.notna().any():
            headers["screen_error"] = "why it could not be scored"
        parts.append(table(shown, headers, raw=("query", "response")))
    elif not data["screen_scored"]:
        parts.append(empty("The safety screen scored no original in this run (screen off, or no valid row)."))
    else:
        parts.append(empty(f"The safety screen flagged none of the {int(data['screen_scored'])} originals "
                           "it scored."))
    parts.append("<h3>Rows that could not be used (quarantine)</h3>")
    q = data["quarantine"]
    parts.append(table(q, {"stage": "stage", "reason": "reason", "count": "rows"}) if len(q) else
                 empty("No row was quarantined."))
    return parts


def rounds_table(st: pd.DataFrame) -> str:
    """round_stats as a table, without the rejections (:func:`rejections_table` spells those out)."""
    names = {"round": "round", "docs_active": "docs active", "candidates": "candidates", "passed": "passed",
             "in_beam": "in beam", "docs_converged": "converged", "gen_tokens": "tokens generated",
             "scored_tokens": "tokens scored", "median_beam_ppl": "median beam ppl", "seconds": "seconds"}
    if st["increment"].nunique() > 1:
        names = {"increment": "increment", **names}
    return table(st, names, digits=2)


def rejections_table(st: pd.DataFrame) -> pd.DataFrame:
    """``round_stats.reject_counts_json`` read out: a row per gate rule, a column per round (and per increment
    where there are several), the total last; most frequent rule first. Empty when the gate rejected nothing."""
    import json

    several = st["increment"].nunique() > 1
    cols = {}
    for r in st.itertuples(index=False):
        counts = json.loads(r.reject_counts_json) if isinstance(r.reject_counts_json, str) else {}
        cols[f"increment {r.increment} round {r.round}" if several else f"round {r.round}"] = counts
    rules = sorted({rule for c in cols.values() for rule in c})
    frame = pd.DataFrame({"rule": rules, **{k: [int(c.get(rule, 0)) for rule in rules] for k, c in cols.items()}})
    frame = frame.loc[:, (frame != 0).any(axis=0)]  # rounds without a rejection add nothing
    frame["total"] = frame.drop(columns="rule").sum(axis=1).astype(int)
    return frame.sort_values(["total", "rule"], ascending=[False, True]).reset_index(drop=True)


def health_section(data: dict, files: dict, timings: dict) -> list[str]:
    st, tp = data["stats"], data["throughput"]
    parts = ["<h2 id='health'>Run health</h2>"]
    if not len(st):
        parts.append(empty("No round ran: no document was selected for curation."))
    else:
        rounds = int(st["round"].max())
        parts.append(f"<p>{rounds} round(s) after round 0 (the scored originals), {tp['seconds']:.1f} s in rounds: "
                     f"{tp['selected_docs_per_s']:.3f} selected documents/s, {tp['tokens_per_s']:.1f} tokens/s "
                     f"({tp['gen_tokens']} generated, {tp['scored_tokens']} scored).</p>")
        parts += ["<h3>Rounds</h3>", rounds_table(st),
                  "<div class='figs'>" + _img(files, "docs_active_per_round", "documents active per round")
                  + _img(files, "time_per_round", "time per round")
                  + _img(files, "median_ppl_per_round", "median beam perplexity per round") + "</div>"]
    parts.append("<h3>Time per stage</h3>")
    if timings:
        frame = pd.DataFrame({"stage": list(timings), "seconds": [float(v) for v in timings.values()]})
        frame = pd.concat([frame, pd.DataFrame({"stage": ["total"], "seconds": [frame.seconds.sum()]})])
        parts.append(table(frame, digits=1))
    else:
        parts.append(empty("Stage times are known only to the job that ran them; this report was rebuilt from "
                           "the tables, which keep the time per round (above) but not per stage."))
    return parts


INCREMENT_HEADERS = {"increment": "increment", "status": "status", "read_via": "changes found by",
                     "source_version": "source version", "source_rows": "source rows", "docs_new": "new",
                     "docs_changed": "changed", "docs_removed": "removed", "docs_unchanged": "unchanged",
                     "input_rows": "rows validated", "selected_rows": "selected", "curated_rows": "curated",
                     "mix_rows": "mix rows added", "live_mix_rows": "mix rows live", "started_at": "started",
                     "seconds": "seconds", "note": "note"}


def increments_section(data: dict) -> list[str]:
    inc = data["increments"]
    parts = ["<h2 id='increments'>Increments</h2>"]
    if not len(inc):
        return parts + [empty("No increment is recorded: this output was written before the job recorded them.")]
    parts.append(f"<p>{len(inc)} increment(s), oldest first. Each brought the output up to date with its source: "
                 "new and changed documents curated, removed ones deleted from every table (listed in the "
                 "<code>removals</code> table).</p>")
    shown = inc.assign(started_at=inc.started_at.map(lambda t: "" if pd.isna(t) else str(t)[:19]),
                       source_version=inc.source_version.map(lambda v: "" if pd.isna(v) else str(int(v))))
    headers = {c: h for c, h in INCREMENT_HEADERS.items() if c in shown}
    if shown["note"].isna().all():
        headers.pop("note", None)
    return parts + [table(shown, headers, digits=1, nowrap=("started_at",))]


def tuning_section(data: dict, files: dict) -> list[str]:
    gate = data["gate"]
    parts = ["<h2 id='tuning'>Tuning</h2>", "<h3>Gate decisions per rule</h3>"]
    if len(gate):
        total = int(gate["count"].sum())
        passed = int(gate.set_index("rule")["count"].get("passed", 0))
        rejected = gate[gate.rule != "passed"]
        top = (f"; the rule that rejected most: <b>{esc(rejected.rule.iloc[0])}</b> "
               f"({int(rejected['count'].iloc[0])})") if len(rejected) else ""
        parts.append(f"<p>{total} candidates generated after round 0, {passed} passed the gate{top}. Each rejected "
                     "candidate is counted under the first rule that rejected it.</p>")
        parts.append(_img(files, "gate_decisions", "gate decisions per rule"))
        rejects = rejections_table(data["stats"]) if len(data["stats"]) else pd.DataFrame()
        if rejects.shape[1] > 3:  # rule, two rounds or more, total: the plot alone would hide which round
            parts += ["<p>Rejections per rule and round:</p>", table(rejects)]
    else:
        parts.append(empty("No candidate was generated in this run, so the gate decided nothing."))
    parts.append("<h3>Perplexity before and after curation</h3>")
    if improved_count(data):
        parts.append(_img(files, "ppl_distribution", "perplexity before and after curation"))
        parts.append("<h3>Largest perplexity drops</h3>")
        parts.append(table(data["examples"], {"doc_id": "document", "query": "query", "response_original": "original",
                                              "response_curated": "revision", "ppl_original": "ppl before",
                                              "ppl_curated": "ppl after"},
                           text=("query", "response_original", "response_curated"), digits=2))
    else:
        parts.append(empty("No revision replaced its original, so every curated perplexity is the original's: "
                           "nothing to compare."))
    return parts


def render(data: dict, folder: Path, timings: dict | None = None, standalone: bool = True) -> Path:
    """Draw the figures into ``folder`` and write ``report.html`` (and, with ``standalone``,
    ``report-standalone.html``, the figures inlined); returns the page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = draw(data, folder)
    run = data["run"]
    head = [f"<h1>Curation run {esc(data['run_id'])}</h1>",
            f"<p class='meta'>objective <b>{esc(run.objective)}</b> · model <code>{esc(run.model)}</code> · "
            f"config <code>{esc(run.config_hash)}</code> · status {esc(run.status)} · "
            f"updated {esc(str(run.updated_at)[:19])}</p>"]
    body = (head + reader_section(data) + health_section(data, files, timings or {}) + increments_section(data)
            + tuning_section(data, files))
    return write_pages(page(f"cleancurate report {data['run_id']}", body, SECTIONS), folder, "report", standalone)
