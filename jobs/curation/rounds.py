"""The rounds: score the originals (round 0), then generate, score, gate and rank (round r).

:func:`round0` reads ``docs`` (selected ``doc_id, query, response``) and writes
``candidates[0]`` and ``rounds[0]`` (the scored originals: the references every gate
compares against) and ``quarantine[round0]`` (originals that could not be scored, or
are over ``limits.max_tokens``). UDF: ``score_original``.

:func:`generate` reads ``rounds[r-1]`` (the active beam), ``rounds[0]`` (the
references) and ``docs`` (``query``), and writes ``candidates[r]``: beam x sampling
grid, each with a seed from its ``cand_id``, rewritten, scored, gated
(``passed``/``reject_reason``, duplicates included). UDFs: ``rewrite``, ``score``,
``gate``.

:func:`rank` reads ``candidates[r]`` and ``rounds[r-1]`` (the beam, carried over) and
writes ``rounds[r]``: the pool ranked per document by the objective, ``in_beam`` for
the top ``beam_size``, and ``doc_active`` (did this round beat the best so far).

:func:`round_stats` reads ``rounds[r]`` and writes ``round_stats[r]``.

Every write replaces the round's slice, so a rerun of a round gives the same table.
"""

from __future__ import annotations

import json

from cleancurate.jobs.curation.columns import conform, order_by, sha_id
from cleancurate.jobs.curation.objective import ORIGINAL, beam_eligible
from cleancurate.jobs.curation.quarantine import quarantine


def _scores(df, udf_col: str = "_q"):
    """Every score of the candidate contract as a column of its own (``clean_text`` as ``text``), from the scorer's struct."""
    from pyspark.sql import functions as F

    from cleancurate.schemas.candidate import SCORES

    return df.select("*", *[F.col(f"{udf_col}.{s.name}").alias(f"_s_{s.column}") for s in SCORES]) \
        .drop(*[s.column for s in SCORES if s.column in df.columns]) \
        .withColumnsRenamed({f"_s_{s.column}": s.column for s in SCORES}).drop(udf_col)


def round0(ctx) -> None:
    """Score the selected originals: the references every gate compares against."""
    from pyspark.sql import functions as F

    from cleancurate.schemas import CANDIDATES

    docs = ctx.read("docs").where("selected")
    orig = docs.select(
        "doc_id", "query", F.col("response").alias("text"), F.col("response").alias("original"),
    ).repartition(ctx.partitions(), "doc_id").sortWithinPartitions("doc_id")
    scored = _scores(orig.withColumn("_q", ctx.udfs["score_original"]("query", "text", "original")))
    max_tokens = ctx.cfg.limits.max_tokens
    too_many = F.col("scored_tokens") > max_tokens
    reason = (F.when(F.col("error").isNotNull(), F.lit("error"))
              .when(too_many, F.lit("too_many_tokens"))
              .when(F.lit(not ctx.objective.original_competes), F.lit(ORIGINAL)))
    # an original is its own reference: similarity and length ratio 1, no retention, nothing stripped
    out = scored.withColumns({
        "run_id": F.lit(ctx.run_id), "round": F.lit(0),
        "cand_id": sha_id(F.col("doc_id"), F.lit("0"), F.lit("original")),
        "parent_id": F.lit(None).cast("string"), "is_original": F.lit(True), "carried": F.lit(False),
        "origin_round": F.lit(0), "temperature": F.lit(None).cast("double"), "top_p": F.lit(None).cast("double"),
        "seed": F.lit(None).cast("long"), "raw_text": F.col("text"), "gen_tokens": F.lit(0),
        "similarity": F.lit(1.0), "retention": F.lit(None).cast("double"), "length_ratio": F.lit(1.0),
        "stripped_preamble": F.lit(False), "passed": reason.isNull(), "reject_reason": reason,
        "error": F.when(too_many & F.col("error").isNull(),
                        F.concat(F.lit("scored_tokens="), F.col("scored_tokens").cast("string"),
                                 F.lit(f" > limits.max_tokens={max_tokens}"))).otherwise(F.col("error")),
    })
    ctx.write(conform(out, CANDIDATES), "candidates", "round = 0", partition_by=["run_id", "round"])
    cands = ctx.read("candidates").where("round = 0")
    usable = F.col("reject_reason").isNull() | (F.col("reject_reason") == ORIGINAL)
    rounds = cands.withColumn("rank", F.when(usable, F.lit(1))).withColumn("in_beam", usable) \
        .withColumn("doc_active", usable)
    write_round(ctx, rounds, 0)
    bad = cands.where(~usable).join(docs.select("doc_id", "query", "response"), "doc_id")
    reason = (F.when(F.col("reject_reason") == "too_many_tokens", "too_many_tokens")
              .when(F.col("error").startswith("judge_unparseable"), "judge_unparseable")
              .otherwise(F.lit("scoring_failed")))
    quarantine(ctx, bad, "round0", reason, F.col("error"))


def write_round(ctx, df, r: int) -> None:
    """Replace ``rounds[r]`` with ``df``, conformed to the table's schema."""
    from cleancurate.schemas import ROUNDS

    ctx.write(conform(df, ROUNDS), "rounds", f"round = {r}", partition_by=["run_id", "round"])


def generate(ctx, r: int) -> None:
    """Stage A of round r: beam x grid -> rewrite -> score -> gate -> candidates[r]."""
    from pyspark.sql import functions as F

    from cleancurate.schemas import CANDIDATES
    from cleancurate.schemas.candidate import GATE_INPUTS, REFERENCES

    cur = ctx.cfg.curation
    u = ctx.udfs
    beam = ctx.read("rounds").where(f"round = {r - 1} AND in_beam AND doc_active")
    refs = ctx.read("rounds").where("round = 0 AND is_original").select(
        "doc_id", F.col("text").alias("original"), *[F.col(c).alias(f"ref_{c}") for c in REFERENCES])
    queries = ctx.read("docs").select("doc_id", "query")
    grid = ctx.spark.createDataFrame(
        [(float(t), float(p)) for t in cur.temperatures for p in cur.top_ps], "temperature double, top_p double")
    req = (beam.select("doc_id", F.col("cand_id").alias("parent_id"), F.col("text").alias("parent_text"))
           .crossJoin(F.broadcast(grid))
           .join(queries, "doc_id").join(refs, "doc_id"))
    cand_id = sha_id(F.col("doc_id"), F.lit(str(r)), F.col("parent_id"),
                     F.format_number("temperature", 3), F.format_number("top_p", 3))
    req = (req.withColumn("cand_id", cand_id)
           .withColumn("seed", F.conv(F.substring("cand_id", 1, 15), 16, 10).cast("long"))
           .repartition(ctx.partitions(), "doc_id").sortWithinPartitions("doc_id", "cand_id"))
    gen = req.withColumn("_g", u["rewrite"]("query", "parent_text", "temperature", "top_p", "seed"))
    gen = gen.withColumns({"raw_text": F.col("_g.text"), "gen_tokens": F.col("_g.gen_tokens"),
                           "gen_error": F.col("_g.error")}).drop("_g")
    scored = _scores(gen.withColumn("_q", u["score"]("query", F.coalesce("raw_text", F.lit("")), "original")))
    scored = scored.withColumn("error", F.coalesce("gen_error", "error")).withColumn("dup", duplicate())
    gated = scored.withColumn("reject_reason", u["gate"](F.struct(*GATE_INPUTS)))
    out = gated.withColumns({
        "run_id": F.lit(ctx.run_id), "round": F.lit(r), "is_original": F.lit(False), "carried": F.lit(False),
        "origin_round": F.lit(r), "passed": F.col("reject_reason").isNull()})
    ctx.write(conform(out, CANDIDATES), "candidates", f"round = {r}", partition_by=["run_id", "round"])


def copy_of_source():
    """True where ``text`` is ``parent_text`` or ``original`` again (case and outer whitespace aside)."""
    from pyspark.sql import functions as F

    norm = F.lower(F.trim(F.col("text")))
    return (norm == F.lower(F.trim("parent_text"))) | (norm == F.lower(F.trim("original")))


def duplicate():
    """The gate's ``dup`` input: the text is its parent or the original again, or an earlier candidate's.

    Earlier is by ``cand_id`` among the document's candidates of this round without an
    error (a candidate that failed is no original to keep); two candidates with the
    same text get the same verdict from every other rule, so the first stands for both.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("doc_id", "text").orderBy(F.col("error").isNotNull(), "cand_id")
    return F.coalesce(copy_of_source() | (F.row_number().over(w) > 1), F.lit(False))


def rank(ctx, r: int) -> None:
    """Stage B of round r: pool the beam and the survivors, keep top-k per document."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cur = ctx.cfg.curation
    obj = ctx.objective
    new = ctx.read("candidates").where(f"round = {r}")
    carried = (ctx.read("rounds").where(f"round = {r - 1} AND in_beam AND doc_active")
               .drop("rank", "in_beam", "doc_active")
               .withColumn("round", F.lit(r)).withColumn("carried", F.lit(True)))
    pool = new.unionByName(carried)
    eligible = beam_eligible(F.col("passed"), F.col("is_original"))
    w = Window.partitionBy("doc_id").orderBy(F.when(eligible, 0).otherwise(1), *order_by(obj.beam_order()))
    ranked = pool.withColumn("_rn", F.row_number().over(w))
    ranked = ranked.withColumn("rank", F.when(eligible, F.col("_rn"))).withColumn(
        "in_beam", eligible & (F.col("_rn") <= cur.beam_size)).drop("_rn")
    # stopping rule: did this round beat the best the document had?
    scorable = obj.competes(F.col("passed"), F.col("is_original"))
    best = getattr(F, obj.best)
    agg = ranked.groupBy("doc_id").agg(
        best(F.when(scorable & F.col("carried"), F.col("ppl"))).alias("_prev"),
        best(F.when(scorable & ~F.col("carried"), F.col("ppl"))).alias("_new"))
    improved = F.col("_new").isNotNull() & (
        F.col("_prev").isNull() | obj.beats(F.col("_new"), F.col("_prev"), cur.stop_tolerance))
    active = improved if cur.early_stop else F.lit(True)
    agg = agg.select("doc_id", active.alias("doc_active"))
    write_round(ctx, ranked.join(agg, "doc_id"), r)


def stats_row(run_id: str, r: int, agg: dict, rejects: dict, seconds: float) -> dict:
    """One ``round_stats`` row from the round's aggregates (None where a sum was empty) and rejections per rule."""
    median = agg.get("median_beam_ppl")
    return {
        "run_id": run_id, "round": r, "docs_active": int(agg["docs_active"] or 0),
        "candidates": int(agg["candidates"] or 0), "passed": int(agg["passed"] or 0),
        "in_beam": int(agg["in_beam"] or 0), "docs_converged": int(agg["converged"] or 0),
        "gen_tokens": int(agg["gen_tokens"] or 0), "scored_tokens": int(agg["scored_tokens"] or 0),
        "median_beam_ppl": float(median) if median is not None else None,
        "reject_counts_json": json.dumps(dict(sorted(rejects.items()))), "seconds": float(seconds),
    }


#: the tables the rounds write, with their partition columns
ROUND_TABLES = {"candidates": ["run_id", "round"], "rounds": ["run_id", "round"], "round_stats": None}


def ensure_round_tables(ctx) -> list[str]:
    """Create, empty, the round tables that do not exist yet; return their names.

    An increment that selects no document runs no round, yet readers (finalize, the
    report, a user's query) expect every output table to exist after a complete run.
    """
    from cleancurate.schemas import TABLES

    made = []
    for name, partition_by in ROUND_TABLES.items():
        if not ctx.store.exists(name):
            ctx.write(ctx.spark.createDataFrame([], TABLES[name]), name, partition_by=partition_by)
            made.append(name)
    return made


def round_stats(ctx, r: int, seconds: float) -> dict:
    """Write ``round_stats[r]`` from ``rounds[r]`` and return the row."""
    from pyspark.sql import functions as F

    from cleancurate.schemas import ROUND_STATS

    rows = ctx.read("rounds").where(f"round = {r}")
    new = F.col("carried") == F.lit(False)
    agg = rows.agg(
        F.countDistinct("doc_id").alias("docs_active"),
        F.sum(new.cast("long")).alias("candidates"),
        F.sum((new & F.col("passed")).cast("long")).alias("passed"),
        F.sum(F.col("in_beam").cast("long")).alias("in_beam"),
        F.sum(F.when(new, F.col("gen_tokens")).cast("long")).alias("gen_tokens"),
        F.sum(F.when(new, F.col("scored_tokens")).cast("long")).alias("scored_tokens"),
        F.percentile_approx(F.when(F.col("in_beam"), F.col("ppl")), 0.5).alias("median_beam_ppl"),
        F.countDistinct(F.when(~F.col("doc_active"), F.col("doc_id"))).alias("converged"),
    ).collect()[0]
    rejects = {row.reject_reason: int(row["count"]) for row in
               rows.where(new & F.col("reject_reason").isNotNull()).groupBy("reject_reason").count().collect()}
    stats = {**stats_row(ctx.run_id, r, agg.asDict(), rejects, seconds), "increment": ctx.increment}
    df = ctx.spark.createDataFrame([tuple(stats[f.name] for f in ROUND_STATS.fields)], ROUND_STATS)
    ctx.write(df, "round_stats", f"round = {r}")
    return stats
