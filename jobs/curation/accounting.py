"""The end-of-run checks: every input row is accounted for, or the run fails loudly.

Reads: ``quarantine`` (rows per stage), ``mix`` and ``curated`` (rows; ``improved``).
Writes nothing; adds ``mix_rows, curated_rows, quarantined_rows,
quarantined_by_stage, improved_rows`` to the run's counts.

* input rows = mix rows + quarantined at validation + screened out
* valid rows = mix rows + screened out
* selected rows = curated rows + quarantined in round 0 + quarantined at curation
"""

from __future__ import annotations


class AccountingError(RuntimeError):
    """Rows were lost or invented: the run's row counts do not add up."""


def accounting_problems(counts: dict, by_stage: dict, mix_rows: int, curated_rows: int) -> list[str]:
    """What does not add up, one sentence each (empty when every row is accounted for).

    Args:
        counts: the run's ``input_rows``, ``valid_rows`` and ``selected_rows``.
        by_stage: quarantined rows per stage (a stage without rows may be missing).
        mix_rows: rows of ``mix``.
        curated_rows: rows of ``curated``.
    """
    q = by_stage
    problems = []
    if counts["input_rows"] != mix_rows + q.get("validate", 0) + q.get("screen", 0):
        problems.append(f"input rows {counts['input_rows']} != mix {mix_rows} + quarantined at validation "
                        f"{q.get('validate', 0)} + screened out {q.get('screen', 0)}")
    if counts["valid_rows"] != mix_rows + q.get("screen", 0):
        problems.append(f"valid rows {counts['valid_rows']} != mix rows {mix_rows} + screened out "
                        f"{q.get('screen', 0)}")
    if counts["selected_rows"] != curated_rows + q.get("round0", 0) + q.get("curate", 0):
        problems.append(f"selected rows {counts['selected_rows']} != curated {curated_rows} + quarantined "
                        f"{q.get('round0', 0) + q.get('curate', 0)}")
    return problems


def account(ctx, counts: dict) -> dict:
    """Check that every row is accounted for; return the counts with the output's, or raise AccountingError."""
    from pyspark.sql import functions as F

    q = {r.stage: int(r["count"]) for r in ctx.read("quarantine").groupBy("stage").count().collect()}
    mix_rows = ctx.read("mix").count()
    curated_rows = ctx.read("curated").count()
    counts = dict(counts)
    counts.update(
        mix_rows=mix_rows, curated_rows=curated_rows,
        quarantined_rows=sum(q.values()), quarantined_by_stage=q,
        improved_rows=ctx.read("curated").where(F.col("improved")).count(),
    )
    problems = accounting_problems(counts, q, mix_rows, curated_rows)
    if problems:
        raise AccountingError("row accounting failed for run " + ctx.run_id + ": " + "; ".join(problems))
    return counts


def account_output(ctx, increment_row: dict | None = None, source_rows: int | None = None) -> dict:
    """The whole output's counts (every increment of the run), checked like a run's.

    * source rows = mix rows + quarantined at validation + screened out (``source_rows``: the
      rows of the source the last increment read, or ``increment_row["source_rows"]``)
    * selected documents = curated + quarantined in round 0 + quarantined at curation

    Raises AccountingError when they do not add up.
    """
    from pyspark.sql import functions as F

    if source_rows is None and increment_row is not None:
        source_rows = increment_row.get("source_rows")
    q = {r.stage: int(r["count"]) for r in ctx.read_all("quarantine").groupBy("stage").count().collect()}
    docs = ctx.read_all("docs").agg(F.count("*").alias("v"), F.sum(F.col("selected").cast("int")).alias("s"),
                                    F.sum(F.col("unsafe").cast("int")).alias("u")).collect()[0]
    counts = {
        "input_rows": int(source_rows) if source_rows is not None else None,
        "valid_rows": int(docs.v or 0), "selected_rows": int(docs.s or 0), "unsafe_rows": int(docs.u or 0),
        "mix_rows": ctx.read_all("mix").count(), "curated_rows": ctx.read_all("curated").count(),
        "quarantined_rows": sum(q.values()), "quarantined_by_stage": q,
        "improved_rows": ctx.read_all("curated").where(F.col("improved")).count(),
    }
    check = dict(counts, input_rows=counts["input_rows"] if source_rows is not None
                 else counts["mix_rows"] + q.get("validate", 0) + q.get("screen", 0))
    problems = accounting_problems(check, q, counts["mix_rows"], counts["curated_rows"])
    if problems:
        raise AccountingError("row accounting failed for the output of run " + ctx.run_id + ": "
                              + "; ".join(problems))
    return counts
