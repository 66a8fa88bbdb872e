"""StructTypes of the Delta tables the evaluation job writes (beside the curation run's tables).

| table            | key                                         | how it is written                                |
|------------------|---------------------------------------------|--------------------------------------------------|
| eval_mix_rows    | eval_run_id, mix, kind, doc_id              | replaceWhere eval_run_id and the mixes still to train, before training |
| eval_answers     | eval_run_id, mix, prompt_set, prompt_id     | replaceWhere eval_run_id and mix                 |
| evaluation       | eval_run_id, mix, metric                    | replaceWhere eval_run_id and mix (differences: mix 'A-B', 'A-C', 'A-before', 'A-after') |
| eval_mixes       | eval_run_id, mix                            | replaceWhere eval_run_id and mix, last: marks the mix finished |
"""

from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructType,
    TimestampType,
)

from cleancurate.schemas.tables import _s


#: one row per mix x metric, and per difference (mix 'A-B', 'A-C', 'A-before', 'A-after') x metric
EVALUATION = StructType([
    _s("eval_run_id", StringType(), False),
    _s("curation_run_id", StringType(), False),
    _s("mix", StringType(), False),  # base | A | B | C | before | after | A-B | A-C | A-before | A-after
    _s("metric", StringType(), False),
    _s("prompt_set", StringType(), False),  # harmful | benign
    _s("value", DoubleType()),  # point estimate on all rows (NaN when no row could be scored)
    _s("ci_low", DoubleType()),
    _s("ci_high", DoubleType()),
    _s("confidence", DoubleType(), False),
    _s("n", LongType(), False),  # rows (prompts) behind the estimate; paired prompts for a difference
    _s("n_failed", LongType(), False),  # prompts of the set left out: generation or scoring failed
    _s("model", StringType(), False),
    _s("config_hash", StringType(), False),  # the evaluation's hash (Config.hash leaves evaluation out)
])

#: every held-out prompt of every mix: the answer, or why there is none
EVAL_ANSWERS = StructType([
    _s("eval_run_id", StringType(), False),
    _s("mix", StringType(), False),
    _s("prompt_set", StringType(), False),
    _s("prompt_id", StringType(), False),
    _s("prompt", StringType()),
    _s("reference", StringType()),  # benign prompts: the reference answer whose perplexity is measured
    _s("answer", StringType()),
    _s("status", StringType(), False),  # answered | failed
    _s("error", StringType()),  # why generation failed (status failed), or why a score is missing
    _s("gen_tokens", IntegerType()),
    _s("refusal", BooleanType()),  # the answer declines (cleancurate.refusal.is_refusal)
    _s("harmful_keyword", BooleanType()),  # harmful by the keyword judge (harmful prompts)
    _s("harm", DoubleType()),  # harm head probability of (prompt, answer)
    _s("harmful_harm_head", BooleanType()),
    _s("llm_score", DoubleType()),  # LLM judge 0-5, when configured
    _s("harmful_llm", BooleanType()),
    _s("helpfulness", DoubleType()),  # benign prompts: the project's helpfulness of the answer
    _s("ref_ppl", DoubleType()),  # benign prompts: perplexity of the reference answer under the tuned model
    _s("ref_tokens", IntegerType()),
    _s("model", StringType(), False),
    _s("config_hash", StringType(), False),
])

#: one row per finished mix: what it trained on and how long it took (the resume marker)
EVAL_MIXES = StructType([
    _s("eval_run_id", StringType(), False),
    _s("curation_run_id", StringType(), False),
    _s("mix", StringType(), False),
    _s("status", StringType(), False),  # complete
    _s("train_rows", LongType(), False),
    _s("benign_rows", LongType(), False),
    _s("harmful_rows", LongType(), False),
    _s("curated_rows", LongType(), False),
    _s("examples", LongType(), False),  # training examples after tokenization (rows without a response are skipped)
    _s("steps", LongType(), False),
    _s("loss_first", DoubleType()),
    _s("loss_last", DoubleType()),
    _s("trainable_params", LongType(), False),
    _s("prompts_in", LongType(), False),
    _s("answered", LongType(), False),
    _s("failed", LongType(), False),
    _s("train_seconds", DoubleType(), False),
    _s("answer_seconds", DoubleType(), False),
    _s("device", StringType()),
    _s("model", StringType(), False),
    _s("config_hash", StringType(), False),
    _s("config_json", StringType(), False),
    _s("finished_at", TimestampType(), False),
    # added with the stage mixes (older rows read null): where the curated texts came from, how many of
    # curated_rows are kept originals, and each training phase in order (kinds, rows, steps, losses) as JSON
    _s("curated_source", StringType()),
    _s("curated_kept_rows", LongType()),
    _s("phases_json", StringType()),
])

#: which curation-run rows each training mix holds
EVAL_MIX_ROWS = StructType([
    _s("eval_run_id", StringType(), False),
    _s("mix", StringType(), False),
    _s("kind", StringType(), False),  # benign | harmful | curated (a revision) | kept_original (allow_kept_originals)
    _s("doc_id", StringType(), False),  # curated rows: a doc_id of the curated run (evaluation.curated_output)
    _s("phase", IntegerType()),  # training phase, 1 first (mix before: the curated rows are phase 1)
])

TABLES = {
    "evaluation": EVALUATION,
    "eval_answers": EVAL_ANSWERS,
    "eval_mixes": EVAL_MIXES,
    "eval_mix_rows": EVAL_MIX_ROWS,
}
