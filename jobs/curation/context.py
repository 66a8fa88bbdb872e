"""What the stages of one curation run share: configuration, session, tables, run id, UDFs.

Every stage is a function of a :class:`RunContext`: it reads its inputs back from Delta
through it and replaces its own slice through it, so no stage keeps state between
steps. Timing, progress events and resume belong to the orchestrator
(:mod:`~cleancurate.jobs.curation.stages`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from cleancurate.config import Config
from cleancurate.jobs.curation.objective import Objective
from cleancurate.tables import TableStore, sql_literal

#: tables with one row per run (every other table is sliced by run and increment)
RUN_LEVEL = frozenset({"runs"})


@dataclass
class RunContext:
    """One run's shared handles.

    Attributes:
        cfg: validated configuration.
        spark: the session.
        store: the output tables.
        hash: the configuration's hash (``cfg.hash``, computed once).
        udfs: name -> Spark UDF: ``rewrite``, ``score_original``, ``score``, ``gate``, and
            ``screen`` when the safety screen runs. A stage looks one up only when it
            needs it, so the real mapping builds them on first use; tests pass fakes.
        run_id: this run's id, set once the run record is resolved.
        increment: the increment of the run being worked on (0: the first, full one).
        mlflow_run_id: the increment's MLflow run, when it is tracked (kept in ``runs``).
    """

    cfg: Config
    spark: object
    store: TableStore
    hash: str
    udfs: Mapping[str, object]
    run_id: str = ""
    increment: int = 0
    mlflow_run_id: str | None = None

    @property
    def objective(self) -> Objective:
        return Objective(self.cfg.curation.objective)

    def where_run(self, extra: str | None = None, name: str = "") -> str:
        """SQL condition for this increment's rows (and ``extra``): the ``replaceWhere`` of a slice.

        ``runs`` has one row per run, so its slice is the run's (``name="runs"``).
        """
        where = f"run_id = {sql_literal(self.run_id)}"
        if name not in RUN_LEVEL:
            where += f" AND increment = {int(self.increment)}"
        return f"{where} AND {extra}" if extra else where

    def read(self, name: str):
        """This increment's rows of an output table (the run's row of ``runs``)."""
        from pyspark.sql import functions as F

        rows = self.store.read(name).where(F.col("run_id") == self.run_id)
        return rows if name in RUN_LEVEL else rows.where(F.col("increment") == self.increment)

    def read_all(self, name: str):
        """The run's rows of an output table, every increment's: the output as readers see it."""
        from pyspark.sql import functions as F

        return self.store.read(name).where(F.col("run_id") == self.run_id)

    def write(self, df, name: str, where: str | None = None, partition_by: list[str] | None = None) -> None:
        """Replace this increment's slice of ``name`` (narrowed by ``where``) with ``df``.

        Every row is stamped with the increment. A table written by an earlier version
        gains the columns the schemas add since (its old rows read them as null), such as
        the candidate contract's new scores.
        """
        from pyspark.sql import functions as F

        from cleancurate.schemas import TABLES

        if name not in RUN_LEVEL:
            df = df.withColumn("increment", F.lit(int(self.increment)).cast("int"))
        if name in TABLES:  # the declared column order (the stamp lands where the schema puts it)
            order = [f.name for f in TABLES[name].fields if f.name in df.columns]
            df = df.select(*order, *[c for c in df.columns if c not in order])
        self.store.write_slice(df, name, self.where_run(where, name), partition_by=partition_by, merge_schema=True)

    def partitions(self) -> int:
        return self.cfg.runtime.partitions or self.spark.sparkContext.defaultParallelism
