"""Quarantine rows: every stage that sets a row aside writes it here, one slice per stage.

Writes: ``quarantine[stage]`` (``run_id, doc_id, stage, reason, detail, query, response,
row_json``), replacing this run's slice of that stage. Query and response are clipped
to 2,000 characters; ``row_json`` keeps the whole row.

Stages and their reasons: ``validate`` (the row checks of
:mod:`~cleancurate.jobs.curation.validate`), ``screen`` (``unsafe_original``,
``screen_failed``), ``round0`` (``too_many_tokens``, ``judge_unparseable``,
``scoring_failed``), ``curate`` (``no_revision_passed_gate``).
"""

from __future__ import annotations

CLIP = 2000  # characters of query and response kept in their columns


def quarantine(ctx, rows, stage: str, reason, detail=None, *, response: str = "response", row_json=None) -> None:
    """Build quarantine rows with the table's schema and replace this run's ``stage`` slice.

    Args:
        ctx: the run's :class:`~cleancurate.jobs.curation.context.RunContext`.
        rows: the rows set aside, with ``doc_id``, ``query`` and the ``response`` column.
        stage: ``validate``, ``screen``, ``round0`` or ``curate``.
        reason: a column (name or Column) with each row's reason.
        detail: a Column with details, or None.
        response: the column holding the response.
        row_json: a Column with the input row as JSON; default the JSON of
            ``doc_id``, ``query`` and ``response``.
    """
    from pyspark.sql import functions as F

    from cleancurate.jobs.curation.columns import conform
    from cleancurate.schemas import QUARANTINE

    if row_json is None:
        row_json = F.to_json(F.struct("doc_id", "query", F.col(response).alias("response")))
    out = rows.select(
        F.lit(ctx.run_id).alias("run_id"), "doc_id", F.lit(stage).alias("stage"),
        (F.col(reason) if isinstance(reason, str) else reason).alias("reason"),
        (F.lit(None).cast("string") if detail is None else detail).alias("detail"),
        F.col("query").substr(1, CLIP).alias("query"), F.col(response).substr(1, CLIP).alias("response"),
        row_json.alias("row_json"),
        (F.col("source_hash") if "source_hash" in rows.columns else F.lit(None).cast("string")).alias("source_hash"))
    ctx.write(conform(out, QUARANTINE), "quarantine", f"stage = '{stage}'")
