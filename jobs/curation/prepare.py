"""Preparation: set invalid rows aside, screen, select, and commit ``docs``.

Reads: the input DataFrame (counted) and its validation
(:class:`~cleancurate.jobs.curation.validate.Validated`: valid rows ``doc_id, query,
response``; invalid rows with ``reason`` and ``row_json``).
Writes: ``quarantine[validate]`` (every invalid row); ``docs`` (``doc_id, query,
response, selected, harm, unsafe, screen_error``: every valid row, ``selected`` by a
hash of ``doc_id`` and ``selection.seed``, never an unsafe row, at most
``selection.max_docs``); through :mod:`~cleancurate.jobs.curation.screen`,
``quarantine[screen]``.
Returns the counts ``valid_rows, selected_rows, unsafe_rows, input_rows``.
"""

from __future__ import annotations

from cleancurate.config import Config, ConfigError
from cleancurate.jobs.curation.quarantine import quarantine
from cleancurate.jobs.curation.screen import quarantine_screened, screen


def prepare(ctx, df, checked) -> dict:
    """Quarantine the invalid rows, screen and select the valid ones, commit ``docs``; return the counts."""
    from pyspark.sql import functions as F

    from cleancurate.jobs.curation.validate import selection_expr

    sel = ctx.cfg.selection
    run = F.lit(ctx.run_id)
    quarantine(ctx, checked.quarantine, "validate", "reason", row_json=F.col("row_json"))
    valid = screen(ctx, checked.valid)
    valid = valid.withColumn("selected", selection_expr(sel.fraction, sel.seed) & ~F.col("unsafe"))
    hashed = F.col("source_hash") if "source_hash" in valid.columns else F.lit(None).cast("string")
    docs = valid.select(run.alias("run_id"), "doc_id", "query", "response", "selected", "harm", "unsafe",
                        "screen_error", hashed.alias("source_hash"))
    ctx.write(docs, "docs")
    quarantine_screened(ctx)
    if sel.max_docs is not None:
        # an increment selects by the same hash rule until the output holds max_docs selected documents
        earlier = ctx.read_all("docs").where(F.col("selected") & (F.col("increment") != ctx.increment)).count()
        cap_selection(ctx, max(0, sel.max_docs - earlier))
    counts = docs_counts(ctx)
    counts["input_rows"] = df.count()
    check_round_size(ctx.cfg, counts["selected_rows"])
    from cleancurate.models import check_fits

    check_fits(ctx.cfg.model.name, ctx.cfg.model.memory_gb)
    return counts


def check_round_size(cfg: Config, selected_rows: int) -> None:
    """Raise ConfigError when a round could generate more than ``curation.max_candidates_per_round``."""
    cur = cfg.curation
    grid = len(cur.temperatures) * len(cur.top_ps)
    worst = selected_rows * cur.beam_size * grid
    if worst > cur.max_candidates_per_round:
        raise ConfigError(
            f"a round could generate up to {worst} candidates ({selected_rows} documents x beam "
            f"{cur.beam_size} x grid {grid}), over curation.max_candidates_per_round="
            f"{cur.max_candidates_per_round}; lower selection.fraction, curation.beam_size or "
            "the sampling grid, or raise the cap"
        )


def cap_selection(ctx, max_docs: int) -> None:
    """Keep at most ``max_docs`` selected rows: the first by a hash of ``selection.seed`` and ``doc_id``."""
    from pyspark.sql import functions as F

    docs = ctx.read("docs")
    key = F.sha2(F.concat(F.lit(f"{ctx.cfg.selection.seed}:"), F.col("doc_id")), 256)
    keep = docs.where("selected").select("doc_id", key.alias("k")).orderBy("k").limit(max_docs)
    capped = docs.join(keep.select("doc_id", F.lit(True).alias("_keep")), "doc_id", "left").select(
        "run_id", "doc_id", "query", "response", (F.col("selected") & F.col("_keep").isNotNull()).alias("selected"),
        "harm", "unsafe", "screen_error", "source_hash")
    capped = capped.localCheckpoint()  # materialize before overwriting the table it reads
    ctx.write(capped, "docs")


def docs_counts(ctx) -> dict:
    """Valid, selected and unsafe rows of ``docs``."""
    from pyspark.sql import functions as F

    row = ctx.read("docs").agg(F.count("*").alias("v"), F.sum(F.col("selected").cast("int")).alias("s"),
                               F.sum(F.col("unsafe").cast("int")).alias("u")).collect()[0]
    return {"valid_rows": int(row.v or 0), "selected_rows": int(row.s or 0), "unsafe_rows": int(row.u or 0)}
