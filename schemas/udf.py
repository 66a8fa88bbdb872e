"""Return types of the job's pandas UDFs, as DDL strings Spark parses, plus pandas column orders.

Kept free of pyspark imports (and of any import but the candidate contract) so the model
engine's batch functions (:mod:`cleancurate.engine`) order their DataFrames by these lists,
in Spark workers and in tests alike.
"""

from cleancurate.schemas.candidate import SCORE_NAMES, SCORES_DDL

#: rewrite UDF (:mod:`cleancurate.udfs.rewrite`): one row per generation request
GENERATION = "text string, gen_tokens int, error string"
GENERATION_COLUMNS = ["text", "gen_tokens", "error"]

#: safety screen UDF (:mod:`cleancurate.udfs.screen`): harm probability of an original (query, response)
SCREEN = "harm double, error string"
SCREEN_COLUMNS = ["harm", "error"]

#: candidate scorer UDF (:mod:`cleancurate.udfs.score`): every signal of a candidate in one pass, declared in
#: :mod:`cleancurate.schemas.candidate`
SCORES = SCORES_DDL
SCORES_COLUMNS = list(SCORE_NAMES)

#: gate UDF (:mod:`cleancurate.udfs.gate`): the first rule a candidate fails, null when it passed
GATE = "string"
