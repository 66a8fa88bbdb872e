"""StructTypes of every Delta table the curation job writes.

| table       | key                               | how it is written                          |
|-------------|-----------------------------------|--------------------------------------------|
| docs        | run_id, doc_id                    | replaceWhere run_id, before round 0        |
| candidates  | run_id, round, doc_id, cand_id    | replaceWhere run_id and round (staging)    |
| rounds      | run_id, round, doc_id, cand_id    | replaceWhere run_id and round              |
| curated     | run_id, doc_id                    | replaceWhere run_id, at the end            |
| quarantine  | run_id, doc_id, stage             | replaceWhere run_id and stage              |
| mix         | run_id, doc_id                    | replaceWhere run_id, at the end            |
| runs        | run_id                            | replaceWhere run_id after every round      |
| round_stats | run_id, round                     | replaceWhere run_id and round              |
"""

from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from cleancurate.schemas.candidate import SCORES


def _s(name, typ, nullable=True):
    return StructField(name, typ, nullable)


_TYPES = {"string": StringType(), "double": DoubleType(), "int": IntegerType(), "boolean": BooleanType()}


def _score_fields() -> list:
    """The stored columns of the candidate contract, except ``text`` and ``error`` (placed by the tables)."""
    return [_s(sc.column, _TYPES[sc.type]) for sc in SCORES if sc.column not in ("text", "error")]


#: every candidate of every round (round 0 holds the scored originals)
ROUNDS = StructType([
    _s("run_id", StringType(), False),
    _s("round", IntegerType(), False),
    _s("doc_id", StringType(), False),
    _s("cand_id", StringType(), False),
    _s("parent_id", StringType()),
    _s("is_original", BooleanType(), False),
    _s("carried", BooleanType(), False),  # a beam member carried over from an earlier round
    _s("origin_round", IntegerType(), False),  # round that generated this candidate
    _s("temperature", DoubleType()),
    _s("top_p", DoubleType()),
    _s("seed", LongType()),
    _s("text", StringType()),  # the candidate with a leading announcement stripped (the scorer's clean_text)
    _s("raw_text", StringType()),  # the generation before preamble stripping
    _s("gen_tokens", IntegerType()),
    # every score of the candidate contract (cleancurate.schemas.candidate), in its order; on-demand scores such as
    # retention are null where an earlier gate rule already rejected the candidate (not measured)
    *_score_fields(),
    _s("passed", BooleanType(), False),
    _s("reject_reason", StringType()),
    _s("rank", IntegerType()),
    _s("in_beam", BooleanType(), False),
    _s("doc_active", BooleanType(), False),  # the document goes on to the next round
    _s("error", StringType()),
])

#: one row per selected document that was curated
CURATED = StructType([
    _s("run_id", StringType(), False),
    _s("doc_id", StringType(), False),
    _s("query", StringType()),
    _s("response_original", StringType()),
    _s("response_curated", StringType()),
    _s("ppl_original", DoubleType()),
    _s("ppl_curated", DoubleType()),
    _s("improved", BooleanType(), False),  # a revision replaced the original (see README: what improved means)
    _s("kept_reason", StringType()),  # why the original was kept: no_revision_passed_gate | only_near_copies | original_ranked_best
    _s("rejections", StringType()),  # gate rejections of this document's candidates by rule, most frequent first
    _s("harm_original", DoubleType()),
    _s("harm_curated", DoubleType()),
    _s("retention", DoubleType()),  # ppl(original | query, curated) / ppl(original | query); null when kept
    _s("best_round", IntegerType(), False),
    _s("best_cand_id", StringType()),
    _s("temperature", DoubleType()),
    _s("top_p", DoubleType()),
    _s("readability_original", DoubleType()),
    _s("readability_curated", DoubleType()),
    _s("helpfulness_original", DoubleType()),
    _s("helpfulness_curated", DoubleType()),
    _s("similarity", DoubleType()),
    _s("safety_original", DoubleType()),
    _s("safety_curated", DoubleType()),
    _s("n_candidates", LongType(), False),
    _s("rounds_active", IntegerType(), False),
    _s("gen_tokens", LongType(), False),  # generated tokens spent on this document
    _s("scored_tokens", LongType(), False),  # scored tokens spent on this document
    _s("objective", StringType(), False),
    _s("model", StringType(), False),
    _s("config_hash", StringType(), False),
])

#: rows that could not be processed, with why
QUARANTINE = StructType([
    _s("run_id", StringType(), False),
    _s("doc_id", StringType(), False),
    _s("stage", StringType(), False),  # validate | screen | round0 | curate
    _s("reason", StringType(), False),
    _s("detail", StringType()),
    _s("query", StringType()),
    _s("response", StringType()),
    _s("row_json", StringType()),  # the input row as JSON, so nothing about it is lost
])

#: the training-ready table: every valid input row, curated where it was selected
MIX = StructType([
    _s("run_id", StringType(), False),
    _s("doc_id", StringType(), False),
    _s("query", StringType()),
    _s("response", StringType()),
    _s("source", StringType(), False),  # original | curated
    _s("selected", BooleanType(), False),
    _s("safety_flag", BooleanType(), False),  # flagged unsafe by the screen (kept only with harm.screen_action: flag)
    _s("config_hash", StringType(), False),
])

#: one row per run
RUNS = StructType([
    _s("run_id", StringType(), False),
    _s("config_hash", StringType(), False),
    _s("config_json", StringType(), False),
    _s("model", StringType(), False),
    _s("objective", StringType(), False),
    _s("status", StringType(), False),  # running | complete
    _s("last_complete_round", IntegerType(), False),
    _s("input_rows", LongType()),
    _s("valid_rows", LongType()),
    _s("selected_rows", LongType()),
    _s("curated_rows", LongType()),
    _s("quarantined_rows", LongType()),
    _s("mix_rows", LongType()),
    _s("started_at", TimestampType()),
    _s("updated_at", TimestampType()),
])

#: what each round did, for the report and the cost accounting
ROUND_STATS = StructType([
    _s("run_id", StringType(), False),
    _s("round", IntegerType(), False),
    _s("docs_active", LongType(), False),
    _s("candidates", LongType(), False),
    _s("passed", LongType(), False),
    _s("in_beam", LongType(), False),
    _s("docs_converged", LongType(), False),
    _s("gen_tokens", LongType(), False),
    _s("scored_tokens", LongType(), False),
    _s("median_beam_ppl", DoubleType()),
    _s("reject_counts_json", StringType(), False),
    _s("seconds", DoubleType(), False),
])

#: valid input rows of a run and whether each was selected (read back by every round)
DOCS = StructType([
    _s("run_id", StringType(), False),
    _s("doc_id", StringType(), False),
    _s("query", StringType()),
    _s("response", StringType()),
    _s("selected", BooleanType(), False),
    _s("harm", DoubleType()),  # the safety screen's harm probability; null when not screened or not scorable
    _s("unsafe", BooleanType(), False),  # flagged by the screen: never curated
    _s("screen_error", StringType()),
])

#: staging: scored and gated new candidates of a round, before beam ranking
CANDIDATES = StructType([f for f in ROUNDS.fields if f.name not in ("rank", "in_beam", "doc_active")])

TABLES = {
    "docs": DOCS,
    "candidates": CANDIDATES,
    "rounds": ROUNDS,
    "curated": CURATED,
    "quarantine": QUARANTINE,
    "mix": MIX,
    "runs": RUNS,
    "round_stats": ROUND_STATS,
}
