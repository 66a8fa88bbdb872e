"""StructTypes of every Delta table the curation job writes.

| table       | key                               | how it is written                          |
|-------------|-----------------------------------|--------------------------------------------|
| docs        | run_id, doc_id                    | replaceWhere run_id + increment, prepare   |
| candidates  | run_id, round, doc_id, cand_id    | replaceWhere ... and round (staging)       |
| rounds      | run_id, round, doc_id, cand_id    | replaceWhere ... and round                 |
| curated     | run_id, doc_id                    | replaceWhere run_id + increment, at the end|
| quarantine  | run_id, doc_id, stage             | replaceWhere ... and stage                 |
| mix         | run_id, doc_id                    | replaceWhere run_id + increment, at the end|
| runs        | run_id                            | replaceWhere run_id after every step       |
| round_stats | run_id, increment, round          | replaceWhere ... and round                 |
| increments  | run_id, increment                 | replaceWhere run_id + increment, each step |
| removals    | run_id, increment, doc_id         | replaceWhere run_id + increment            |

Every table but ``runs`` carries ``increment``: the increment of the run that wrote the row
(0 for the first, full one; :mod:`cleancurate.jobs.curation.increments`). A document lives
in exactly one increment's slices; an increment that sees it changed or gone deletes it
from the earlier increment's rows first.
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
    _s("increment", IntegerType(), False),  # the increment that wrote the row
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
    _s("increment", IntegerType(), False),  # the increment that wrote the row
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
    _s("increment", IntegerType(), False),  # the increment that wrote the row
    _s("doc_id", StringType(), False),
    _s("stage", StringType(), False),  # validate | screen | round0 | curate
    _s("reason", StringType(), False),
    _s("detail", StringType()),
    _s("query", StringType()),
    _s("response", StringType()),
    _s("row_json", StringType()),  # the input row as JSON, so nothing about it is lost
    _s("source_hash", StringType()),  # stage validate: fingerprint of the input rows with this doc_id
])

#: the training-ready table: every valid input row, curated where it was selected
MIX = StructType([
    _s("run_id", StringType(), False),
    _s("increment", IntegerType(), False),  # the increment that wrote the row
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
    _s("increment", IntegerType()),  # the latest increment
    _s("source_json", StringType()),  # what the latest increment read (cleancurate.sources.SourceIdentity)
    _s("mlflow_run_id", StringType()),  # the latest increment's MLflow run (report.mlflow); null when not tracked
])

#: one row per increment of a run: what it read, what changed, how far it got, who runs it
INCREMENTS = StructType([
    _s("run_id", StringType(), False),
    _s("increment", IntegerType(), False),
    _s("status", StringType(), False),  # running | complete
    _s("phase", StringType(), False),  # planned | pruned | prepared | rounds | complete
    _s("last_complete_round", IntegerType(), False),  # -1 before round 0
    _s("source_kind", StringType(), False),  # delta | parquet | table | dataframe
    _s("source", StringType(), False),  # path or table name
    _s("source_version", LongType()),  # Delta table version read
    _s("source_fingerprint", StringType(), False),
    _s("source_json", StringType(), False),
    _s("read_via", StringType(), False),  # full | diff | change_feed: how the changes were found
    _s("note", StringType()),  # why the change feed was not used, when it could have been
    _s("source_rows", LongType()),  # rows of the source snapshot
    _s("source_docs", LongType()),  # distinct doc keys of the source
    _s("docs_new", LongType()),
    _s("docs_changed", LongType()),
    _s("docs_removed", LongType()),
    _s("docs_unchanged", LongType()),
    _s("input_rows", LongType()),  # rows this increment validated: the rows of new and changed docs
    _s("valid_rows", LongType()),
    _s("selected_rows", LongType()),
    _s("curated_rows", LongType()),
    _s("quarantined_rows", LongType()),
    _s("mix_rows", LongType()),  # rows this increment added to mix
    _s("live_mix_rows", LongType()),  # mix rows of the whole output afterwards
    _s("owner", StringType()),  # host:pid:token of the job working on it (null once it stopped)
    _s("heartbeat_at", TimestampType()),
    _s("started_at", TimestampType()),
    _s("finished_at", TimestampType()),
    _s("seconds", DoubleType()),
])

#: documents an increment took out of the output (gone from the source, or changed there)
REMOVALS = StructType([
    _s("run_id", StringType(), False),
    _s("increment", IntegerType(), False),
    _s("doc_id", StringType(), False),
    _s("reason", StringType(), False),  # deleted (no longer in the source) | changed (re-curated from its new rows)
    _s("source", StringType(), False),
    _s("source_version", LongType()),  # the Delta version where it was gone or changed
    _s("removed_at", TimestampType(), False),
])

#: what each round did, for the report and the cost accounting
ROUND_STATS = StructType([
    _s("run_id", StringType(), False),
    _s("increment", IntegerType(), False),  # the increment that wrote the row
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
    _s("increment", IntegerType(), False),  # the increment that wrote the row
    _s("doc_id", StringType(), False),
    _s("query", StringType()),
    _s("response", StringType()),
    _s("selected", BooleanType(), False),
    _s("harm", DoubleType()),  # the safety screen's harm probability; null when not screened or not scorable
    _s("unsafe", BooleanType(), False),  # flagged by the screen: never curated
    _s("screen_error", StringType()),
    _s("source_hash", StringType()),  # fingerprint of the input rows with this doc_id (what increments compare)
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
    "increments": INCREMENTS,
    "removals": REMOVALS,
}
