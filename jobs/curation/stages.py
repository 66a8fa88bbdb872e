"""The curation job: runs (or resumes) the stages in order, one committed Delta slice per step.

::

    input -> validate (+doc_id)                       prepare   -> quarantine[validate]
          -> safety screen of every valid original    screen    -> quarantine[screen]
          -> docs (selected by hash of doc_id + seed) prepare   -> docs
          -> round 0: score originals                 rounds    -> candidates[0] -> rounds[0]
          -> round r: beam x grid -> rewrite -> score -> gate   -> candidates[r]
                      pool(beam, survivors) -> rank -> top-k    -> rounds[r], round_stats[r]
          -> best per document                        finalize  -> curated, quarantine[curate]
          -> unselected originals + curated           finalize  -> mix
          -> every row accounted for                  accounting
          (after each step)                           runrecord -> runs

Each stage is a module that says which tables it reads and writes; the minimize /
maximize difference is in :mod:`~cleancurate.jobs.curation.objective`. This module
wires them: it builds the real UDFs (or takes others), resolves the run, times the
steps, reports progress and stops or resumes between rounds. Each step reads its
inputs back from Delta, so Spark's plan never grows with the rounds, every step is a
restart point, and a rerun replaces exactly its own slice. A round counts as finished
only when ``runs.last_complete_round`` says so, which is written after the round's
slices are committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from cleancurate.config import Config
from cleancurate.gate import GateSettings
from cleancurate.jobs.curation.accounting import account
from cleancurate.jobs.curation.context import RunContext
from cleancurate.jobs.curation.finalize import finalize
from cleancurate.jobs.curation.prepare import prepare
from cleancurate.jobs.curation.rounds import generate, rank, round0, round_stats
from cleancurate.jobs.curation.runrecord import RunRecord
from cleancurate.tables import TableStore, read_input

ProgressFn = Callable[[dict], None]


@dataclass
class CurationResult:
    """What a run produced: its id, where the tables are, and its row counts."""

    run_id: str
    config: Config
    store: TableStore
    counts: dict = field(default_factory=dict)
    complete: bool = True
    resumed_from_round: int | None = None
    report_path: str | None = None

    def table(self, name: str):
        """One output table (this run's rows) as a DataFrame."""
        from pyspark.sql import functions as F

        return self.store.read(name).where(F.col("run_id") == self.run_id)


class ModelUdfs:
    """The job's real UDFs, built from the config once per job, on first use.

    A UDF object per round would make Spark plan a new Python function every round, so
    the rewrite, scorer and gate UDFs are built together when a round first needs one,
    and the screen UDF when the screen runs. Each is the one shell
    (:func:`cleancurate.udfs.batch_udf`) over a factory of :mod:`cleancurate.udfs`.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._built: dict = {}

    def __getitem__(self, name: str):
        if name not in self._built:
            self._built.update(self._screen() if name == "screen" else self._rounds())
        return self._built[name]

    def _rounds(self) -> dict:
        from cleancurate.udfs import batch_udf, gate, rewrite, score

        return {
            "rewrite": batch_udf(rewrite.make_rewrite_fn, rewrite.RETURN_TYPE, self.cfg),
            "score_original": batch_udf(score.make_scorer, score.RETURN_TYPE, self.cfg, strip=False),
            "score": batch_udf(score.make_scorer, score.RETURN_TYPE, self.cfg, strip=True),
            "gate": batch_udf(gate.make_gate_fn, gate.RETURN_TYPE, GateSettings.from_config(self.cfg)),
        }

    def _screen(self) -> dict:
        from cleancurate.udfs import batch_udf, screen

        return {"screen": batch_udf(screen.make_screen_fn, screen.RETURN_TYPE, self.cfg)}


class CurationJob:
    """Runs (or resumes) one curation run.

    Args:
        cfg: validated configuration.
        spark: session to use (default: the active one, or a local one with Delta).
        source: a DataFrame to curate instead of ``cfg.input``.
        new_run: allow adding a run with a different config to an output that holds others.
        progress: callback receiving one dict per event (round start/end, stage timings).
        stop_after_round: commit this round, then return without finishing (time-boxed runs).
        udfs: name -> Spark UDF (``rewrite``, ``score_original``, ``score``, ``gate``,
            ``screen``; see :class:`~cleancurate.jobs.curation.context.RunContext`), e.g.
            fakes in tests; None builds the real ones from the config (:class:`ModelUdfs`).
    """

    def __init__(self, cfg: Config, spark=None, source=None, new_run: bool = False,
                 progress: ProgressFn | None = None, stop_after_round: int | None = None,
                 udfs: Mapping[str, object] | None = None):
        from cleancurate.session import get_spark

        self.cfg = cfg
        self.spark = spark or get_spark(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        self.source = source
        self.new_run = new_run
        self.progress = progress or (lambda event: None)
        self.stop_after_round = stop_after_round
        self.store = TableStore(self.spark, cfg.output)
        self.hash = cfg.hash
        self.ctx = RunContext(cfg, self.spark, self.store, self.hash, udfs if udfs is not None else ModelUdfs(cfg))
        self.record = RunRecord(self.ctx)
        self.timings: dict[str, float] = {}
        self.counts: dict = {}

    @property
    def run_id(self) -> str:
        return self.ctx.run_id

    def _emit(self, event: str, **data) -> None:
        self.progress({"event": event, "run_id": self.run_id, **data})

    def _step(self, name: str, fn, *args):
        t0 = time.time()
        out = fn(*args)
        self.timings[name] = time.time() - t0
        self._emit("step", step=name, seconds=self.timings[name])
        return out

    # ---------------------------------------------------------------- steps
    def _prepare(self) -> dict:
        """Read and validate the input, then quarantine, screen, select and commit ``docs``."""
        from cleancurate.jobs.curation.validate import validate

        t0 = time.time()
        df = self.source if self.source is not None else read_input(self.spark, self.cfg.input)
        counts = prepare(self.ctx, df, validate(df, self.cfg))
        self.timings["prepare"] = time.time() - t0
        self._emit("prepared", **counts, seconds=self.timings["prepare"])
        return counts

    def _round0(self) -> None:
        t0 = time.time()
        round0(self.ctx)
        self._commit_round(0, time.time() - t0)

    def _commit_round(self, r: int, seconds: float) -> dict:
        """Write the round's statistics, then mark it complete in the run record."""
        stats = round_stats(self.ctx, r, seconds)
        self.record.mark(self.counts, r, "running")
        self._emit("round_committed", **{k: v for k, v in stats.items() if k != "run_id"})
        return stats

    def _finalize(self, counts: dict) -> dict:
        finalize(self.ctx)
        return account(self.ctx, counts)

    # ---------------------------------------------------------------- run
    def run(self) -> CurationResult:
        """Run the job, resuming after the last complete round of a matching run."""
        t_start = time.time()
        self.spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(self.cfg.runtime.arrow_batch_rows))
        self.ctx.run_id, last, stored = self.record.resolve(self.new_run)
        resumed = last if stored is not None else None
        self._emit("start", config_hash=self.hash, resume_after_round=last)
        R = self.cfg.curation.rounds
        if stored is None or stored.get("input_rows") is None:
            self.counts = self._prepare()
            self.record.mark(self.counts, -1, "running")
            last = -1
        else:
            self.counts = {k: int(stored[k]) for k in ("input_rows", "valid_rows", "selected_rows")}
        if stored is not None and stored["status"] == "complete":
            self.counts = account(self.ctx, self.counts)
            return CurationResult(self.run_id, self.cfg, self.store, self.counts, True, resumed)
        for r in range(max(0, last + 1), R + 1):
            t0 = time.time()
            self._emit("round_start", round=r, rounds=R)
            if r == 0:
                self._step(f"round_{r}.score", self._round0)
            else:
                self._step(f"round_{r}.generate", generate, self.ctx, r)
                self._step(f"round_{r}.rank", rank, self.ctx, r)
                self._step(f"round_{r}.bookkeeping", self._commit_round, r, time.time() - t0)
            self.timings[f"round_{r}"] = time.time() - t0
            if self.stop_after_round is not None and r >= self.stop_after_round and r < R:
                self._emit("stopped", round=r)
                return CurationResult(self.run_id, self.cfg, self.store, self.counts, False, resumed)
        self.counts = self._step("finalize", self._finalize, self.counts)
        self.record.mark(self.counts, R, "complete")
        self.counts["seconds"] = time.time() - t_start
        self._emit("complete", **{k: v for k, v in self.counts.items() if k != "quarantined_by_stage"})
        return CurationResult(self.run_id, self.cfg, self.store, self.counts, True, resumed)


def curate(source, config: Config | str, spark=None, new_run: bool = False, overrides: list[str] | None = None,
           progress: ProgressFn | None = None, stop_after_round: int | None = None, report: bool = True) -> CurationResult:
    """Curate a DataFrame or table and return the run's tables (the lakehouse-step API).

    Args:
        source: a DataFrame, a table name, a Parquet/Delta path, or None to use ``config.input``.
        config: a :class:`Config`, or a profile name / YAML path.
        spark: the session (default: active or local).
        new_run: allow a run with a new config beside existing runs in the same output.
        overrides: ``section.key=value`` overrides applied to the config.
        progress: callback for progress events.
        stop_after_round: commit this round and return (resume later with the same config).
        report: write the HTML report after a complete run.

    Returns:
        :class:`CurationResult`; ``result.table("curated")`` etc. give the tables.
    """
    from cleancurate import config as config_mod

    cfg = config if isinstance(config, Config) else config_mod.load(config, overrides)
    if isinstance(config, Config) and overrides:
        cfg = cfg.with_overrides(overrides)
    df = None
    if isinstance(source, str):
        cfg = cfg.with_overrides({"input.path": source})
    elif source is not None:
        df = source
    job = CurationJob(cfg, spark=spark, source=df, new_run=new_run, progress=progress, stop_after_round=stop_after_round)
    result = job.run()
    if report and result.complete and cfg.report.enabled:
        try:
            from cleancurate.jobs.curation.report import build_report
        except ImportError:  # report module is optional at this layer
            build_report = None
        if build_report is not None:
            result.report_path = build_report(result, timings=job.timings)
    return result

