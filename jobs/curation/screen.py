"""The safety screen: a harm check of every valid original, before selection.

:func:`screen` reads the valid rows' ``query, response`` (before ``docs`` is written)
and adds ``harm`` (the harm probability by the configured check, ``harm.backend``: the
head or the guard model; null without a screen or when scoring failed), ``unsafe`` and
``screen_error``, with the ``screen`` UDF. A row is unsafe when its harm reaches
``harm.threshold`` or when it could not be scored (fail closed); an unsafe row is never
selected (:mod:`~cleancurate.jobs.curation.prepare`). With the guard backend the guard
model's tokenizer and the format are checked on the driver first, before any model work.

:func:`quarantine_screened` reads ``docs`` (``unsafe``, ``harm``, ``screen_error``) and
writes ``quarantine[screen]``: ``unsafe_original`` (the score, the threshold and which
check scored it in ``detail``) or ``screen_failed`` (the error and the check). With ``harm.screen_action: flag``
the slice is empty and the rows stay in ``mix`` with ``safety_flag``.
"""

from __future__ import annotations

from cleancurate.engine.harm import backend, describe, preflight
from cleancurate.jobs.curation.quarantine import quarantine


def screen(ctx, valid):
    """Add ``harm``, ``unsafe`` and ``screen_error`` to the valid rows (every row safe without a screen)."""
    from pyspark.sql import functions as F

    h = ctx.cfg.harm
    if backend(h) == "guard":
        preflight(ctx.cfg)  # the gate's harmful rule uses the guard too, so this runs with the screen off as well
    if not (h.screen and backend(h)):
        return (valid.withColumn("harm", F.lit(None).cast("double")).withColumn("unsafe", F.lit(False))
                .withColumn("screen_error", F.lit(None).cast("string")))
    # spread the rows over the job's partitions first: after validation's shuffles, adaptive
    # execution may have coalesced a small table into one task, which leaves one worker (one
    # core, one GPU) screening every row; sorted by doc_id, so the batches are the same on rerun
    valid = valid.repartition(ctx.partitions(), "doc_id").sortWithinPartitions("doc_id")
    scored = valid.withColumn("_s", ctx.udfs["screen"]("query", "response"))
    harm = F.col("_s.harm")
    unsafe = harm.isNull() | F.isnan(harm) | (harm >= F.lit(h.threshold))
    return (scored.withColumn("harm", harm).withColumn("unsafe", unsafe)
            .withColumn("screen_error", F.col("_s.error")).drop("_s"))


def quarantine_screened(ctx) -> None:
    """Unsafe originals leave the mix for quarantine (stage ``screen``), unless configured to stay flagged."""
    from pyspark.sql import functions as F

    unsafe = ctx.read("docs").where("unsafe")
    if ctx.cfg.harm.screen_action != "quarantine":
        unsafe = unsafe.where(F.lit(False))
    reason = (F.when(F.col("screen_error").isNotNull() | F.col("harm").isNull(), "screen_failed")
              .otherwise("unsafe_original"))
    check = describe(ctx.cfg.harm)
    detail = F.coalesce(F.concat(F.col("screen_error"), F.lit(f" ({check})")),
                        F.format_string(f"harm=%.3f >= harm.threshold={ctx.cfg.harm.threshold} "
                                        f"({check.replace('%', '%%')})", F.col("harm")))
    quarantine(ctx, unsafe, "screen", reason, detail)
