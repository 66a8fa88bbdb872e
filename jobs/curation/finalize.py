"""Finalize: the best candidate per document, then the curated and mix tables.

Reads: ``rounds`` (every round: round 0's originals as references, fresh candidates
for the pick and the per-document totals), ``docs`` (query, original response,
``selected``, ``unsafe``), and the ``curated`` slice it has just written.
Writes: ``curated`` (one row per selected document with a pick: the best competing
candidate by the objective, its scores beside the original's, ``improved``,
``kept_reason``, ``rejections``, token totals); ``quarantine[curate]`` (selected
documents with no candidate to keep, ``no_revision_passed_gate``: under maximize, where
the original never competes); ``mix`` (every valid row not screened out: the
curated text where there is one, else the original).
"""

from __future__ import annotations

from cleancurate.jobs.curation.columns import conform, first_match, order_by
from cleancurate.jobs.curation.objective import NO_REVISION_PASSED, kept_reason_rules
from cleancurate.jobs.curation.quarantine import quarantine


def finalize(ctx) -> None:
    """Pick the best candidate per document; write curated, quarantine[curate] and mix."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from cleancurate.schemas import CURATED, MIX

    obj = ctx.objective
    rounds = ctx.read("rounds")
    refs = rounds.where("round = 0 AND is_original AND in_beam").select(
        "doc_id", F.col("ppl").alias("ppl_original"), F.col("readability").alias("readability_original"),
        F.col("helpfulness").alias("helpfulness_original"), F.col("safety").alias("safety_original"),
        F.col("harm").alias("harm_original"))
    fresh = rounds.where("NOT carried AND NOT is_original")
    per_doc = fresh.groupBy("doc_id").agg(
        F.count("*").alias("n_candidates"), F.max("round").alias("rounds_active"),
        F.sum("gen_tokens").alias("doc_gen_tokens"), F.sum("scored_tokens").alias("doc_scored_tokens"),
        F.sum(F.col("passed").cast("long")).alias("n_passed"),
        F.sum((F.col("reject_reason") == "near_copy").cast("long")).alias("n_near_copies"))
    # why candidates were rejected, most frequent first: "retention:12, not_an_answer:3"
    by_rule = fresh.where("reject_reason IS NOT NULL").groupBy("doc_id", "reject_reason").count()
    rejections = by_rule.groupBy("doc_id").agg(F.sort_array(F.collect_list(F.struct(
        (-F.col("count")).alias("k"), "reject_reason", "count"))).alias("_r")).select(
        "doc_id", F.array_join(F.transform("_r", lambda x: F.concat(x["reject_reason"], F.lit(":"),
                                                                  x["count"].cast("string"))), ", ")
        .alias("rejections"))
    eligible = rounds.where(obj.competes(F.col("passed"), F.col("is_original")) & ~F.col("carried"))
    w = Window.partitionBy("doc_id").orderBy(*order_by(obj.final_order()))
    best = eligible.withColumn("_rn", F.row_number().over(w)).where("_rn = 1")
    docs = ctx.read("docs").where("selected").select("doc_id", "query", F.col("response").alias("response_original"))
    joined = (refs.join(docs, "doc_id").join(best, "doc_id", "left").join(per_doc, "doc_id", "left")
              .join(rejections, "doc_id", "left"))
    improved = obj.improved(F.col("is_original"), F.col("ppl"), F.col("ppl_original"))
    kept_reason = first_match(*kept_reason_rules(improved, F.coalesce("n_passed", F.lit(0)),
                                                 F.coalesce("n_near_copies", F.lit(0))))
    curated = joined.where(F.col("cand_id").isNotNull()).select(
        F.lit(ctx.run_id).alias("run_id"), "doc_id", "query", "response_original",
        F.col("text").alias("response_curated"), "ppl_original", F.col("ppl").alias("ppl_curated"),
        improved.alias("improved"), kept_reason.alias("kept_reason"), "rejections",
        "harm_original", F.col("harm").alias("harm_curated"), "retention",
        F.col("round").alias("best_round"), F.col("cand_id").alias("best_cand_id"), "temperature", "top_p",
        "readability_original", F.col("readability").alias("readability_curated"),
        "helpfulness_original", F.col("helpfulness").alias("helpfulness_curated"), "similarity",
        "safety_original", F.col("safety").alias("safety_curated"),
        F.coalesce("n_candidates", F.lit(0)).alias("n_candidates"),
        F.coalesce("rounds_active", F.lit(0)).alias("rounds_active"),
        F.coalesce("doc_gen_tokens", F.lit(0)).alias("gen_tokens"),
        F.coalesce("doc_scored_tokens", F.lit(0)).alias("scored_tokens"),
        F.lit(obj.name).alias("objective"), F.lit(ctx.cfg.model.name).alias("model"),
        F.lit(ctx.hash).alias("config_hash"),
    )
    ctx.write(conform(curated, CURATED), "curated")
    no_pass = joined.where(F.col("cand_id").isNull())
    detail = F.concat(F.lit("candidates tried: "), F.coalesce("n_candidates", F.lit(0)).cast("string"),
                      F.lit("; rejected by rule: "), F.coalesce("rejections", F.lit("none")))
    quarantine(ctx, no_pass, "curate", F.lit(NO_REVISION_PASSED), detail, response="response_original")
    cur_tbl = ctx.read("curated").select("doc_id", "response_curated")
    docs_in_mix = ctx.read("docs")
    if ctx.cfg.harm.screen_action == "quarantine":
        docs_in_mix = docs_in_mix.where("NOT unsafe")
    mix = docs_in_mix.join(cur_tbl, "doc_id", "left").select(
        F.lit(ctx.run_id).alias("run_id"), "doc_id", "query",
        F.coalesce("response_curated", "response").alias("response"),
        F.when(F.col("response_curated").isNotNull(), "curated").otherwise("original").alias("source"),
        "selected", F.col("unsafe").alias("safety_flag"), F.lit(ctx.hash).alias("config_hash"))
    ctx.write(conform(mix, MIX), "mix")
