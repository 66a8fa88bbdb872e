"""Spark column helpers the curation stages share: stable ids, schemas, orderings, rules."""

from __future__ import annotations


def sha_id(*cols):
    """A stable 20-hex-digit id from the columns (``cand_id``)."""
    from pyspark.sql import functions as F

    return F.substring(F.sha2(F.concat_ws("|", *cols), 256), 1, 20)


def conform(df, schema):
    """Select and cast ``df`` to exactly the columns of ``schema``.

    ``increment`` may be missing: :meth:`~cleancurate.jobs.curation.context.RunContext.write`
    stamps it on every row it writes.
    """
    from pyspark.sql import functions as F

    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields
                       if f.name in df.columns or f.name != "increment"])


def order_by(keys):
    """Sort columns from ``(column, ascending)`` keys (:mod:`~cleancurate.jobs.curation.objective`)."""
    from pyspark.sql import functions as F

    return [F.col(name).asc() if ascending else F.col(name).desc() for name, ascending in keys]


def first_match(rules, default):
    """A ``CASE WHEN`` column from ``((condition, value), ...)`` rules and a default value."""
    from pyspark.sql import functions as F

    (cond, value), *rest = rules
    expr = F.when(cond, F.lit(value))
    for cond, value in rest:
        expr = expr.when(cond, F.lit(value))
    return expr.otherwise(F.lit(default))
