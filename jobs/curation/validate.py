"""Input validation: schema checks that stop the job, row checks that quarantine.

Schema problems (a missing column, a column of the wrong type) stop the job before
any model work, with a message naming the column and the fix. Row problems go to
quarantine with a reason, checked in this order:

==========================  =================================================
``null_id``                 the id column is null
``null_query``              query is null
``null_response``           response is null
``empty_query``             query is empty or whitespace
``empty_response``          response is empty or whitespace
``undecodable``             bytes that are not UTF-8, or NUL / replacement chars
``too_long``                query + response longer than ``limits.max_chars``
``prompt_injection``        an instruction-override phrase (``limits.injection_patterns``)
``delimiter_lookalike``     text imitating the prompt delimiters or chat markers
``duplicate_id``            a later row (input order) with an id already seen (``input.duplicate_ids: drop``)
``split_failed``            ``input.split_pattern`` did not match ``input.text_column``
==========================  =================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from cleancurate.config import Config
from cleancurate.prompts import _CHAT_MARKERS, _LOOKALIKE
from cleancurate.tables import InputError

_TEXT_TYPES = ("string", "binary")
_ID_TYPES = ("string", "int", "bigint", "smallint", "tinyint", "decimal", "binary")


@dataclass
class Validated:
    """Valid rows (doc_id, query, response, row_json) and quarantined rows (with reason)."""

    valid: object
    quarantine: object


def _type_name(df, col: str) -> str:
    return df.schema[col].dataType.simpleString()


def check_schema(df, cfg: Config) -> None:
    """Raise InputError when a configured column is missing or of an unusable type."""
    inp = cfg.input
    cols = set(df.columns)
    text_cols = [inp.text_column] if inp.text_column else [inp.query_column, inp.response_column]
    needed = text_cols + ([inp.id_column] if inp.id_column else [])
    for col in needed:
        if col not in cols:
            key = {inp.id_column: "input.id_column", inp.query_column: "input.query_column",
                   inp.response_column: "input.response_column", inp.text_column: "input.text_column"}[col]
            fix = ("set input.id_column to the id column, or to null to derive ids from content"
                   if key == "input.id_column" else f"set {key} to the column that holds it")
            raise InputError(f"input has no column '{col}' ({key}); columns are {sorted(cols)}; {fix}")
    for col in text_cols:
        t = _type_name(df, col)
        if t not in _TEXT_TYPES:
            raise InputError(
                f"column '{col}' has type {t}; it must be string (or UTF-8 binary): "
                f"cast it first, e.g. df.withColumn('{col}', col('{col}').cast('string'))"
            )
    if inp.id_column:
        t = _type_name(df, inp.id_column)
        if not t.startswith(_ID_TYPES):
            raise InputError(
                f"column '{inp.id_column}' (input.id_column) has type {t}; ids must be string or integer; "
                "cast it, or set input.id_column to null to derive ids from content"
            )


def _as_text(df, col: str):
    from pyspark.sql import functions as F

    if _type_name(df, col) == "binary":
        # invalid UTF-8 becomes U+FFFD (decode() would fail the whole job), which the
        # undecodable rule then quarantines
        return F.expr(f"make_valid_utf8(cast(`{col}` as string))")
    return F.col(col)


def keyed(df, cfg: Config):
    """The input rows with their keys: ``doc_id``, ``doc_key``, ``query``, ``response``, ``row_json``.

    ``doc_id`` is the id column's value (or, with ``input.id_column: null``, a hash of the
    content); ``doc_key`` is ``doc_id``, or ``content:<hash>`` where the id is null: the key
    under which the row's outcome is stored (``docs`` or ``quarantine``). ``row_json`` is
    every input column as JSON. The schema is checked first.
    """
    from pyspark.sql import functions as F

    check_schema(df, cfg)
    inp = cfg.input
    # every input column, as JSON, so a quarantined row keeps all it had
    json_cols = [F.base64(F.col(c)).alias(c) if _type_name(df, c) == "binary" else F.col(c) for c in df.columns]
    base = df.select(
        *[F.col(c) for c in df.columns],
        F.monotonically_increasing_id().alias("_row"),  # input order, for "first copy wins"
        F.to_json(F.struct(*json_cols), {"ignoreNullFields": "false"}).alias("row_json"),
    )
    split_failed = F.lit(False)
    if inp.text_column:
        text = _as_text(df, inp.text_column)
        q = F.regexp_extract(text, inp.split_pattern, 1)
        r = F.regexp_extract(text, inp.split_pattern, 2)
        split_failed = text.isNotNull() & ~text.rlike(inp.split_pattern)
        q = F.when(split_failed | text.isNull(), F.lit(None)).otherwise(q)
        r = F.when(split_failed | text.isNull(), F.lit(None)).otherwise(r)
    else:
        q, r = _as_text(df, inp.query_column), _as_text(df, inp.response_column)
    base = base.withColumn("query", q).withColumn("response", r)
    content_id = F.substring(F.sha2(F.concat_ws("\u0001", F.coalesce("query", F.lit("\u0000")),
                                                F.coalesce("response", F.lit("\u0000"))), 256), 1, 24)
    if inp.id_column:
        base = base.withColumn("doc_id", F.col(inp.id_column).cast("string"))
    else:
        base = base.withColumn("doc_id", content_id)
    base = base.withColumn("_content", content_id).withColumn("_split_failed", split_failed)
    return base.withColumn("doc_key", F.coalesce(F.col("doc_id"), F.concat(F.lit("content:"), F.col("_content"))))


def with_source_hash(rows):
    """Add ``source_hash``: a fingerprint of every input row sharing the row's ``doc_key`` (order-free).

    Two snapshots of a source hold the same rows for a key exactly when the hashes agree;
    the incremental runs compare them (:mod:`~cleancurate.jobs.curation.increments`).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("doc_key")
    return rows.withColumn("source_hash", F.substring(F.sha2(F.array_join(F.array_sort(
        F.collect_list(F.sha2("row_json", 256)).over(w)), "|"), 256), 1, 24))


def validate(df, cfg: Config, rows=None) -> Validated:
    """Check the schema, derive doc_id, and split rows into valid and quarantined.

    Reads: the configured id / query / response (or text) columns; or ``rows``, the
    output of :func:`keyed` (and :func:`with_source_hash`) for a part of ``df``.
    Adds: ``doc_id``, ``query``, ``response``, ``row_json``, ``source_hash`` (when the
    rows carry one), and ``reason`` on quarantined rows.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    base = keyed(df, cfg) if rows is None else rows
    inp, lim = cfg.input, cfg.limits
    split_failed = F.col("_split_failed")
    extra = ["source_hash"] if "source_hash" in base.columns else []

    injection = "(?i)(" + "|".join(lim.injection_patterns) + ")" if lim.injection_patterns else None
    lookalike = f"(?i)({_LOOKALIKE.pattern})|({_CHAT_MARKERS.pattern})"
    both = F.concat_ws("\n", F.coalesce("query", F.lit("")), F.coalesce("response", F.lit("")))
    bad_chars = "[\u0000\ufffd]"
    rules = [
        ("split_failed", split_failed),
        ("null_id", F.col("doc_id").isNull()),
        ("null_query", F.col("query").isNull()),
        ("null_response", F.col("response").isNull()),
        ("empty_query", F.regexp_replace("query", r"\s+", "") == ""),
        ("empty_response", F.regexp_replace("response", r"\s+", "") == ""),
        ("undecodable", both.rlike(bad_chars)),
        ("too_long", F.length(both) > lim.max_chars),
    ]
    if injection:
        rules.append(("prompt_injection", both.rlike(injection)))
    if lim.quarantine_delimiter_lookalikes:
        rules.append(("delimiter_lookalike", both.rlike(lookalike)))
    reason = F.lit(None).cast("string")
    for name, cond in reversed(rules):
        reason = F.when(cond, F.lit(name)).otherwise(reason)
    checked = base.withColumn("reason", reason)

    # duplicate ids among otherwise valid rows
    w = Window.partitionBy("doc_id").orderBy("_row")
    checked = checked.withColumn("_dup_rank", F.when(F.col("reason").isNull(), F.row_number().over(w)))
    if inp.duplicate_ids == "error":
        dups = checked.where("_dup_rank > 1").select("doc_id").distinct().limit(5).collect()
        if dups:
            ids = [r.doc_id for r in dups]
            raise InputError(
                f"column '{inp.id_column or 'doc_id'}' holds duplicate ids, e.g. {ids}; make ids unique, "
                "set input.duplicate_ids: drop to quarantine the later copies, or set input.id_column: null "
                "to derive ids from content"
            )
    checked = checked.withColumn(
        "reason", F.when(F.col("_dup_rank") > 1, F.lit("duplicate_id")).otherwise(F.col("reason"))
    )
    valid = checked.where(F.col("reason").isNull()).select("doc_id", "query", "response", "row_json", *extra)
    quarantine = checked.where(F.col("reason").isNotNull()).select(
        F.col("doc_key").alias("doc_id"),
        "reason",
        F.col("query").substr(1, 2000).alias("query"),
        F.col("response").substr(1, 2000).alias("response"),
        "row_json", *extra,
    )
    return Validated(valid=valid, quarantine=quarantine)


def selection_expr(fraction: float, seed: int):
    """Deterministic selection: a uniform number in [0, 1) from sha256(seed:doc_id)."""
    from pyspark.sql import functions as F

    h = F.conv(F.substring(F.sha2(F.concat(F.lit(f"{seed}:"), F.col("doc_id")), 256), 1, 12), 16, 10).cast("double")
    return (h / float(16 ** 12)) < F.lit(fraction)
