"""Return types of the pandas UDFs, as DDL strings Spark parses, plus pandas column orders.

Kept free of pyspark imports (and of any import) so the model engine's batch functions
(:mod:`cleancurate.engine`) order their DataFrames by these lists, in Spark workers and
in tests alike.
"""

#: perplexity UDF: one row per (query, response)
PERPLEXITY = "ppl double, scored_tokens int, error string"
PERPLEXITY_COLUMNS = ["ppl", "scored_tokens", "error"]

#: rewrite UDF: one row per generation request
GENERATION = "text string, gen_tokens int, error string"
GENERATION_COLUMNS = ["text", "gen_tokens", "error"]

#: quality UDF (no model): text statistics of a candidate
QUALITY = (
    "clean_text string, stripped_preamble boolean, meta_text string, form_fault string, readability double, "
    "repeat_ratio double, compression_ratio double, length_ratio double, coverage double, new_words int, dropped_words int, error string"
)
QUALITY_COLUMNS = [c.split()[0] for c in QUALITY.split(", ")]

#: embedding UDF: relevance to the query, similarity to the original, safety, style and harm scores
EMBED_SCORES = "relevance double, similarity double, safety double, style double, harm double, error string"
EMBED_SCORES_COLUMNS = [c.split()[0] for c in EMBED_SCORES.split(", ")]

#: safety screen UDF: harm probability of an original (query, response)
SCREEN = "harm double, error string"
SCREEN_COLUMNS = ["harm", "error"]

#: LLM judge UDF: averaged rubric score 0-5
JUDGE = "helpfulness double, error string"
JUDGE_COLUMNS = ["helpfulness", "error"]

#: candidate scorer UDF: every signal of a candidate in one pass
SCORES = (
    "clean_text string, stripped_preamble boolean, meta_text string, form_fault string, readability double, "
    "repeat_ratio double, compression_ratio double, length_ratio double, coverage double, new_words int, dropped_words int, "
    "ppl double, "
    "scored_tokens int, "
    "retention double, relevance double, similarity double, safety double, harm double, helpfulness double, "
    "error string"
)
SCORES_COLUMNS = [c.split()[0] for c in SCORES.split(", ")]
