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
    """

    cfg: Config
    spark: object
    store: TableStore
    hash: str
    udfs: Mapping[str, object]
    run_id: str = ""

    @property
    def objective(self) -> Objective:
        return Objective(self.cfg.curation.objective)

    def where_run(self, extra: str | None = None) -> str:
        """SQL condition for this run's rows (and ``extra``): the ``replaceWhere`` of a slice."""
        where = f"run_id = {sql_literal(self.run_id)}"
        return f"{where} AND {extra}" if extra else where

    def read(self, name: str):
        """This run's rows of an output table."""
        from pyspark.sql import functions as F

        return self.store.read(name).where(F.col("run_id") == self.run_id)

    def write(self, df, name: str, where: str | None = None, partition_by: list[str] | None = None) -> None:
        """Replace this run's slice of ``name`` (narrowed by ``where``) with ``df``."""
        self.store.write_slice(df, name, self.where_run(where), partition_by=partition_by)

    def partitions(self) -> int:
        return self.cfg.runtime.partitions or self.spark.sparkContext.defaultParallelism
