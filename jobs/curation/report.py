"""Run report: an HTML page and PNG figures built from a run's tables.

``cleancurate report OUT [--run-id ID]`` rebuilds it from the Delta tables in OUT. :func:`report_data`
collects the numbers (small pandas frames, so tests can check the numbers behind each plot and section);
:mod:`cleancurate.jobs.curation.reportpage` lays them out: ``report/report.html`` beside its PNG figures and
``report/report-standalone.html``, the same page with the figures inlined (one file to mail or attach).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def report_data(spark, out: str, run_id: str | None = None, reader_sample: int = 10, examples: int = 5,
                screen_sample: int = 20) -> dict:
    """The numbers behind the report, as small pandas frames (collected aggregates only).

    ``reader_sample`` revisions are shown side by side; ``examples`` (``report.examples``) rows in the
    table of the largest perplexity drops; ``screen_sample`` of the originals the safety screen kept out,
    highest harm first.
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
              .select("doc_id", "query", "response_original", "response_curated", "retention", "harm_original",
                      "harm_curated", "similarity", "ppl_original", "ppl_curated", "best_round", "rejections")
              .limit(reader_sample).toPandas())
    kept = (curated.where("NOT improved").select("doc_id", "query", "kept_reason", "rejections")
            .orderBy("doc_id").toPandas())
    docs = t("docs").where(where)
    screen = docs.agg(F.sum(F.col("unsafe").cast("long")).alias("unsafe"),
                      F.count("harm").alias("scored")).collect()[0]
    screened = int(screen["unsafe"] or 0)
    screen_out = (docs.where("unsafe").orderBy(F.desc_nulls_last("harm"), "doc_id")
                  .select("doc_id", "harm", "query", "response", "screen_error").limit(screen_sample).toPandas())
    increments = _increments(out, run_id, t)
    total_seconds = float(stats.seconds.sum()) if len(stats) else 0.0
    tokens = int(stats.gen_tokens.sum() + stats.scored_tokens.sum()) if len(stats) else 0
    return {
        "run": run, "run_id": run_id, "ppl": ppl, "gate": gate, "median": median, "stats": stats,
        "examples": top, "quarantine": quarantine, "reader": reader, "kept": kept,
        "screened": screened, "screen_scored": int(screen["scored"] or 0), "screen_out": screen_out,
        "increments": increments,
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


def write_report(data: dict, folder: Path, timings: dict | None = None, standalone: bool = True) -> Path:
    """Write report.html and the PNG figures into ``folder`` (and, with ``standalone``, report-standalone.html,
    the figures inlined); return the HTML path."""
    from cleancurate.jobs.curation.reportpage import render

    return render(data, folder, timings, standalone)


def standalone_default(config) -> bool:
    """``report.standalone`` of ``config``: write the self-contained copy of each page."""
    return bool(config.report.standalone)


def build_report(result, timings: dict | None = None, standalone: bool | None = None) -> str | None:
    """Report for a finished run, written to ``<output>/report`` (folder outputs only); ``standalone``
    (default ``report.standalone``) also writes ``report-standalone.html``."""
    if result.store.catalog:
        return None
    out = result.store.output.path
    data = report_data(result.store.spark, out, result.run_id, examples=result.config.report.examples)
    if standalone is None:
        standalone = standalone_default(result.config)
    return str(write_report(data, Path(out) / "report", timings, standalone))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cleancurate report", description="Rebuild the HTML report from a run's tables.")
    p.add_argument("out", help="output folder of the run (holds curated/, rounds/, ...)")
    p.add_argument("--run-id", help="which run (default: the most recently updated)")
    p.add_argument("--examples", type=int, default=5, help="rows in the table of largest perplexity drops")
    p.add_argument("--no-standalone", action="store_true",
                   help="skip report-standalone.html (the page with its figures inlined, one file to send)")
    args = p.parse_args(argv)
    from cleancurate.session import get_spark

    spark = get_spark()
    data = report_data(spark, args.out, args.run_id, examples=args.examples)
    path = write_report(data, Path(args.out) / "report", standalone=not args.no_standalone)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
