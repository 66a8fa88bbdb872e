"""Run report: an HTML page and PNG figures built from a run's tables.

``cleancurate report OUT [--run-id ID]`` rebuilds it from the Delta tables in OUT.
The figures' data comes from :func:`report_data`, so tests can check the numbers
behind each plot.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path


def report_data(spark, out: str, run_id: str | None = None, reader_sample: int = 10, examples: int = 5) -> dict:
    """The numbers behind the report, as small pandas frames (collected aggregates only).

    ``reader_sample`` revisions are shown side by side; ``examples`` (``report.examples``) rows in the
    table of the largest perplexity drops.
    """
    from pyspark.sql import functions as F

    def t(name):
        return spark.read.format("delta").load(f"{out.rstrip('/')}/{name}")

    runs = t("runs").toPandas()
    if run_id is None:
        run_id = runs.sort_values("updated_at").run_id.iloc[-1]
    run = runs[runs.run_id == run_id].iloc[0]
    where = F.col("run_id") == run_id
    curated = t("curated").where(where)
    rounds = t("rounds").where(where)
    stats = t("round_stats").where(where).orderBy("round").toPandas()
    ppl = curated.select("doc_id", "ppl_original", "ppl_curated", "improved").toPandas()
    new = rounds.where(~F.col("carried") & (F.col("round") > 0))
    gate = (new.groupBy(F.coalesce("reject_reason", F.lit("passed")).alias("rule")).count()
            .orderBy(F.desc("count")).toPandas())
    median = (rounds.where("in_beam").groupBy("round")
              .agg(F.percentile_approx("ppl", 0.5).alias("median_ppl")).orderBy("round").toPandas())
    top = (curated.where("improved").orderBy(F.col("ppl_original") - F.col("ppl_curated"), ascending=False)
                .select("doc_id", "query", "response_original", "response_curated", "ppl_original", "ppl_curated")
                .limit(examples).toPandas())
    quarantine = t("quarantine").where(where).groupBy("stage", "reason").count().orderBy("stage", "reason").toPandas()
    # the reader's view: a seeded random sample of revisions that replaced their original, side by side
    reader = (curated.where("improved").orderBy(F.sha2(F.concat(F.lit("reader:"), F.col("doc_id")), 256))
              .select("doc_id", "query", "response_original", "response_curated", "retention", "harm_curated")
              .limit(reader_sample).toPandas())
    outcomes = (curated.select(F.when(F.col("improved"), F.lit("revised"))
                               .otherwise(F.concat(F.lit("kept original: "), F.col("kept_reason"))).alias("outcome"))
                .groupBy("outcome").count().orderBy(F.desc("count")).toPandas())
    kept = (curated.where("NOT improved").select("doc_id", "query", "kept_reason", "rejections")
            .orderBy("doc_id").toPandas())
    screened = t("docs").where(where & F.col("unsafe")).count()
    increments = _increments(out, run_id, t)
    total_seconds = float(stats.seconds.sum()) if len(stats) else 0.0
    tokens = int(stats.gen_tokens.sum() + stats.scored_tokens.sum()) if len(stats) else 0
    return {
        "run": run, "run_id": run_id, "ppl": ppl, "gate": gate, "median": median, "stats": stats,
        "examples": top, "quarantine": quarantine, "reader": reader, "outcomes": outcomes, "kept": kept,
        "screened": screened, "increments": increments,
        "throughput": {
            "seconds": total_seconds,
            "selected_docs_per_s": (float(run.selected_rows or 0) / total_seconds) if total_seconds else 0.0,
            "tokens_per_s": tokens / total_seconds if total_seconds else 0.0,
            "gen_tokens": int(stats.gen_tokens.sum()) if len(stats) else 0,
            "scored_tokens": int(stats.scored_tokens.sum()) if len(stats) else 0,
        },
    }


#: the columns of ``increments`` the report shows, one row per increment
INCREMENT_COLUMNS = ["increment", "status", "read_via", "source_version", "source_rows", "docs_new", "docs_changed",
                     "docs_removed", "docs_unchanged", "input_rows", "selected_rows", "curated_rows", "mix_rows",
                     "live_mix_rows", "started_at", "seconds", "note"]


def _increments(out: str, run_id: str, t):
    """The run's increments (what each read and found), oldest first; empty for an output written before them."""
    import pandas as pd
    from pyspark.sql import functions as F

    if not (Path(out) / "increments" / "_delta_log").is_dir():
        return pd.DataFrame(columns=INCREMENT_COLUMNS)
    return t("increments").where(F.col("run_id") == run_id).select(*INCREMENT_COLUMNS).orderBy("increment").toPandas()


def _plots(data: dict, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files = {}

    def save(fig, name):
        path = folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[name] = path.name

    ppl = data["ppl"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if len(ppl):
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
    ax.set_xlabel("perplexity (response | query)")
    ax.set_ylabel("documents")
    ax.set_title("Perplexity before and after curation")
    ax.legend()
    save(fig, "ppl_distribution")

    med = data["median"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(med["round"], med.median_ppl, marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("median perplexity in the beam")
    ax.set_title("Median beam perplexity per round")
    save(fig, "median_ppl_per_round")

    gate = data["gate"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    total = gate["count"].sum() or 1
    ax.barh(gate.rule, gate["count"] / total * 100)
    ax.set_xlabel("% of generated candidates")
    ax.set_title("Gate decisions (passed, or the rule that rejected)")
    ax.invert_yaxis()
    save(fig, "gate_decisions")

    st = data["stats"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(st["round"], st.docs_active, label="active")
    ax.bar(st["round"], st.docs_converged, label="converged this round")
    ax.set_xlabel("round")
    ax.set_ylabel("documents")
    ax.set_title("Documents still active per round")
    ax.legend()
    save(fig, "docs_active_per_round")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(st["round"].astype(str), st.seconds)
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    ax.set_title("Time per round")
    save(fig, "time_per_round")
    return files


def _table(df) -> str:
    return df.to_html(index=False, escape=True, border=0, classes="t", float_format=lambda v: f"{v:.3f}")


def write_report(data: dict, folder: Path, timings: dict | None = None) -> Path:
    """Write report.html and the PNG figures into ``folder``; return the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    figs = _plots(data, folder)
    run = data["run"]
    tp = data["throughput"]
    ppl = data["ppl"]
    improved = int(ppl.improved.sum()) if len(ppl) else 0
    timings = timings or {}
    parts = [
        "<!doctype html><meta charset='utf-8'><title>cleancurate report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        ".t{border-collapse:collapse;font-size:13px}.t td,.t th{padding:3px 8px;border-bottom:1px solid #ddd;"
        "vertical-align:top}img{max-width:48%;margin:4px}</style>",
        f"<h1>Curation run {html.escape(data['run_id'])}</h1>",
        f"<p>objective <b>{html.escape(run.objective)}</b>, model <code>{html.escape(run.model)}</code>, "
        f"config <code>{html.escape(run.config_hash)}</code>, status {html.escape(run.status)}.</p>",
        f"<p>input rows {run.input_rows}, valid {run.valid_rows}, selected {run.selected_rows}, "
        f"curated {run.curated_rows} ({improved} improved), quarantined {run.quarantined_rows}, "
        f"mix {run.mix_rows}.</p>",
        f"<p>throughput: {tp['selected_docs_per_s']:.3f} selected documents/s, {tp['tokens_per_s']:.1f} tokens/s "
        f"({tp['gen_tokens']} generated, {tp['scored_tokens']} scored) over {tp['seconds']:.1f}s of rounds.</p>",
        "".join(f"<img src='{f}' alt='{n}'>" for n, f in figs.items()),
        "<h2>What a reader gets</h2>",
        f"<p>{len(ppl)} curated documents: {improved} revised, {len(ppl) - improved} kept their original "
        f"(reasons below). {data['screened']} valid originals were flagged unsafe by the safety screen and never "
        "curated. A revision replaces an original only when it passed every gate rule: no harm, still an answer, "
        "no meta-text or echo, carries the original's content (retention) and stays on topic.</p>",
        _table(data["outcomes"]),
        "<h3>Revisions side by side (seeded random sample)</h3>",
        _table(data["reader"]) if len(data["reader"]) else "<p>No revision replaced its original in this run.</p>",
        "<h3>Documents that kept their original</h3>", _table(data["kept"]),
        "<h2>Increments</h2>",
        "<p>Each increment brought the output up to date with its source: new and changed documents curated, "
        "removed ones deleted from every table (listed in the <code>removals</code> table).</p>",
        _table(data["increments"]),
        "<h2>Rounds</h2>", _table(data["stats"].drop(columns=["run_id"])),
        "<h2>Gate decisions (rejections per rule)</h2>", _table(data["gate"]),
        "<h2>Quarantine</h2>", _table(data["quarantine"]),
        "<h2>Examples (largest perplexity drop)</h2>", _table(data["examples"]),
    ]
    if timings:
        parts += ["<h2>Time per stage (s)</h2>",
                  "<pre>" + html.escape(json.dumps({k: round(v, 2) for k, v in timings.items()}, indent=1)) + "</pre>"]
    path = folder / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def build_report(result, timings: dict | None = None) -> str | None:
    """Report for a finished run, written to ``<output>/report`` (folder outputs only)."""
    if result.store.catalog:
        return None
    out = result.store.output.path
    data = report_data(result.store.spark, out, result.run_id, examples=result.config.report.examples)
    return str(write_report(data, Path(out) / "report", timings))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cleancurate report", description="Rebuild the HTML report from a run's tables.")
    p.add_argument("out", help="output folder of the run (holds curated/, rounds/, ...)")
    p.add_argument("--run-id", help="which run (default: the most recently updated)")
    p.add_argument("--examples", type=int, default=5, help="rows in the table of largest perplexity drops")
    args = p.parse_args(argv)
    from cleancurate.session import get_spark

    spark = get_spark()
    data = report_data(spark, args.out, args.run_id, examples=args.examples)
    path = write_report(data, Path(args.out) / "report")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
