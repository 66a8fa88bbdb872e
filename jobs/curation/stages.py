"""The curation job: runs (or resumes) the stages in order, one committed Delta slice per step.

::

    source -> identity; what changed since the last   increments -> increments, removals,
              complete increment (all of it at first)              deletes of gone/changed docs
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
only when ``increments.last_complete_round`` says so, which is written after the round's
slices are committed.

A run is a series of increments (:mod:`~cleancurate.jobs.curation.increments`): the first
curates the whole source; a rerun over an unchanged source returns the stored result at
once; over a changed one it is an error, unless incremental mode is on, when a new
increment curates only the new and changed rows and removes what left the source.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from cleancurate.config import Config
from cleancurate.gate import GateSettings
from cleancurate.jobs.curation.accounting import AccountingError, account, account_output
from cleancurate.jobs.curation.context import RunContext
from cleancurate.jobs.curation.finalize import finalize
from cleancurate.jobs.curation.prepare import prepare
from cleancurate.jobs.curation import tracked
from cleancurate.jobs.curation.rounds import ensure_round_tables, generate, rank, round0, round_stats
from cleancurate.jobs.curation.increments import (
    IncrementRecord, InputChangedError, plan, prune, read_changes, vacuum, work_rows,
)
from cleancurate.jobs.curation.runrecord import RunRecord, utcnow
from cleancurate.sources import SourceIdentity, identify, read_at
from cleancurate.tables import TableStore
from cleancurate.tracking import Tracker, wanted

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
    increment: int = 0
    mlflow_run_id: str | None = None  # the increment's MLflow run (report.mlflow), None when not tracked

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
    """Runs (or resumes) one curation run: its next increment, or the one that was cut short.

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
        incremental: a source that changed since the last complete increment gets a new
            increment (the changes only); without it such a rerun is an error.
        source_id: names a DataFrame ``source``'s content (e.g. a snapshot date); None
            fingerprints its rows.
    """

    def __init__(self, cfg: Config, spark=None, source=None, new_run: bool = False,
                 progress: ProgressFn | None = None, stop_after_round: int | None = None,
                 udfs: Mapping[str, object] | None = None, incremental: bool = False,
                 source_id: str | None = None):
        from cleancurate.session import get_spark

        self.cfg = cfg
        self.spark = spark or get_spark(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        self.source = source
        self.new_run = new_run
        self.incremental = incremental
        self.source_id = source_id
        self.progress = progress or (lambda event: None)
        self.stop_after_round = stop_after_round
        self.store = TableStore(self.spark, cfg.output)
        self.hash = cfg.hash
        self._udfs_given = udfs is not None
        self.ctx = RunContext(cfg, self.spark, self.store, self.hash, udfs if udfs is not None else ModelUdfs(cfg))
        self.record = RunRecord(self.ctx)
        self.increments = IncrementRecord(self.ctx)
        self.tracker = Tracker(cfg.report, "curation")  # off until the run starts one (jobs.curation.tracked)
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
    def _snapshot(self, identity: SourceIdentity):
        """The source as ``identity`` names it, its rows keyed and hashed per document key."""
        from cleancurate.jobs.curation.validate import keyed, with_source_hash

        df = self.source if self.source is not None else read_at(self.spark, self.cfg.input, identity)
        return df, with_source_hash(keyed(df, self.cfg))

    def _plan(self, identity: SourceIdentity, previous: SourceIdentity | None) -> None:
        """Compare the source with the output; record the counts and the documents that leave it."""
        t0 = time.time()
        _, hashed = self._snapshot(identity)
        feed, note = read_changes(self.ctx, identity, previous)
        if note:
            self._emit("change_feed_unavailable", reason=note)
        p, gone = plan(self.ctx, hashed, identity, previous, keyed_feed=feed, note=note)
        problems = p.problems()
        if problems:
            raise AccountingError(f"increment {self.ctx.increment} of run {self.run_id}: " + "; ".join(problems))
        counts = dict(read_via=p.read_via, note=p.note, source_rows=p.source_rows, source_docs=p.source_docs,
                      docs_new=p.new, docs_changed=p.changed, docs_removed=p.removed, docs_unchanged=p.unchanged)
        if gone is None:  # nothing to remove: planned and pruned in one commit
            self.increments.mark(phase="pruned", **counts)
        else:
            self.increments.mark(phase="planned", **counts)  # the plan is recorded before anything is deleted
            removed = prune(self.ctx, gone, identity)
            if removed and self.cfg.output.vacuum_removed:
                vacuum(self.ctx, self.cfg.output.vacuum_retention_hours)
            self.increments.mark(phase="pruned")
        self.timings["plan"] = time.time() - t0
        self._emit("planned", increment=self.ctx.increment, read_via=p.read_via, new=p.new, changed=p.changed,
                   removed=p.removed, unchanged=p.unchanged, seconds=self.timings["plan"])

    def _prepare(self, identity: SourceIdentity) -> dict:
        """Validate, quarantine, screen and select the rows of new and changed documents; commit ``docs``."""
        from cleancurate.jobs.curation.validate import validate

        t0 = time.time()
        df, hashed = self._snapshot(identity)
        rows = work_rows(self.ctx, hashed).localCheckpoint()
        counts = prepare(self.ctx, rows, validate(df, self.cfg, rows=rows))
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
        self.increments.mark(phase="rounds", last_complete_round=r)
        self._emit("round_committed", **{k: v for k, v in stats.items() if k != "run_id"})
        tracked.log_round(self.tracker, stats)
        return stats

    def _finalize(self, counts: dict) -> dict:
        if counts["selected_rows"] == 0:  # no round ran: the round tables may not exist yet
            ensure_round_tables(self.ctx)
        finalize(self.ctx)
        return account(self.ctx, counts)

    def _resolve_increment(self, identity: SourceIdentity) -> tuple[int, dict | None, SourceIdentity | None]:
        """Which increment to work on: (increment, its stored row or None, the last complete one's source)."""
        latest = self.increments.latest()
        done = self.increments.last_complete()
        previous = SourceIdentity.from_json(done["source_json"]) if done else None
        if latest is None:
            return 0, None, None
        if latest["status"] == "running":
            return latest["increment"], latest, previous
        if identity.same_as(previous) or self.incremental:
            return latest["increment"] + (0 if identity.same_as(previous) else 1), None, previous
        raise InputChangedError(
            f"output {self.store.root} holds run {self.run_id}, which read {previous.describe() if previous else '?'}; "
            f"the input is now {identity.describe()}. Pass --incremental (incremental=True) to bring the output up "
            "to date with the changed rows, or --new-run (new_run=True) to curate the source afresh beside it")

    # ---------------------------------------------------------------- run
    def run(self) -> CurationResult:
        """Run the job: finish an increment that was cut short, else start the next one the source asks for."""
        t_start = time.time()
        self.spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(self.cfg.runtime.arrow_batch_rows))
        wanted(self.cfg.report)  # report.mlflow: true without MLflow stops here, before any work
        self.ctx.run_id, _, stored_run = self.record.resolve(self.new_run)
        identity = identify(self.spark, self.cfg.input, self.source, self.source_id)
        try:
            k, stored, previous = self._resolve_increment(identity)
        except InputChangedError:
            if not self.new_run:
                raise
            # curate the changed source afresh, as a run of its own beside the stored one
            self.ctx.run_id = self.record.fresh_run_id()
            self.record.started_at = None
            k, stored, previous = 0, None, None
        self.ctx.increment = k
        if stored is None and identity.same_as(previous):  # nothing changed: the stored result, at once
            done = self.increments.last_complete()
            self.counts = account_output(self.ctx, done)
            self._emit("unchanged", increment=k, source=identity.describe())
            return CurationResult(self.run_id, self.cfg, self.store, self.counts, True,
                                  int(done["last_complete_round"]) if done else None, increment=k)
        resumed = stored["last_complete_round"] if stored is not None else None
        self._emit("start", config_hash=self.hash, increment=k, resume_after_round=resumed,
                   source=identity.describe())
        if not self._udfs_given:
            from cleancurate.engine.served import preflight, served_names

            names = served_names(self.cfg)
            if names:  # a server that is down or serves other models: stop before any commit
                preflight(self.cfg.server, names)
        row = self.increments.claim(k, identity, stored)
        self.tracker = tracked.start(self.ctx, stored_run, identity)
        try:
            result = self._work(identity, previous, row, t_start, resumed)
        except BaseException:
            self.tracker.end("FAILED")
            raise
        finally:
            self.increments.release()
        result.mlflow_run_id = self.tracker.run_id  # None when not tracked, or when tracking failed
        if not result.complete:
            self.tracker.end("KILLED")  # stopped after a round: the rerun resumes this MLflow run
        return result

    def _work(self, identity, previous, row, t_start, resumed) -> CurationResult:
        R = self.cfg.curation.rounds
        k = self.ctx.increment
        phase = row["phase"]
        if phase == "planned":
            self._step("plan", self._plan, identity, previous)
        if phase in ("planned", "pruned"):
            self.counts = self._prepare(identity)
            self.increments.mark(phase="prepared", last_complete_round=-1,
                                 **{key: self.counts[key] for key in ("input_rows", "valid_rows", "selected_rows")})
            self.record.mark(self.counts, -1, "running", identity)
            last = -1
        else:
            self.counts = {key: int(row[key]) for key in ("input_rows", "valid_rows", "selected_rows")}
            last = int(row["last_complete_round"])
        for r in range(max(0, last + 1), R + 1):
            if self.counts["selected_rows"] == 0:
                break  # nothing selected in this increment: no model work
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
                return CurationResult(self.run_id, self.cfg, self.store, self.counts, False, resumed, increment=k)
        self.counts = self._step("finalize", self._finalize, self.counts)
        whole = account_output(self.ctx, None, source_rows=self.increments.row.get("source_rows"))
        self.increments.mark(phase="complete", status="complete", owner=None, last_complete_round=R,
                             finished_at=utcnow(),
                             seconds=time.time() - t_start, curated_rows=self.counts["curated_rows"],
                             quarantined_rows=self.counts["quarantined_rows"], mix_rows=self.counts["mix_rows"],
                             live_mix_rows=whole["mix_rows"])
        self.counts = {**whole, "increment": self.counts}
        self.record.mark(self.counts, R, "complete", identity)
        self.counts["seconds"] = time.time() - t_start
        tracked.log_complete(self.tracker, self.counts)
        self._emit("complete", **{key: v for key, v in self.counts.items()
                                  if key not in ("quarantined_by_stage", "increment")})
        return CurationResult(self.run_id, self.cfg, self.store, self.counts, True, resumed, increment=k)


def curate(source, config: Config | str, spark=None, new_run: bool = False, overrides: list[str] | None = None,
           progress: ProgressFn | None = None, stop_after_round: int | None = None, report: bool = True,
           incremental: bool = False, source_id: str | None = None) -> CurationResult:
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
        incremental: when the source changed since the run's last complete increment, curate
            the changes (new, changed and removed rows) in a new increment; without it such a
            rerun raises :class:`~cleancurate.jobs.curation.increments.InputChangedError`.
        source_id: names a DataFrame ``source``'s content (a snapshot date, a batch id) so the
            run need not fingerprint its rows; the same id means the same rows.

    Returns:
        :class:`CurationResult`; ``result.table("curated")`` etc. give the tables.
    """
    from cleancurate import config as config_mod

    cfg = config if isinstance(config, Config) else config_mod.load(config, overrides)
    if isinstance(config, Config) and overrides:
        cfg = cfg.with_overrides(overrides)
    cfg = cfg.as_curation()  # an evaluation's configuration curates with its curation sections
    df = None
    if isinstance(source, str):
        cfg = cfg.with_overrides({"input.path": source})
    elif source is not None:
        df = source
    job = CurationJob(cfg, spark=spark, source=df, new_run=new_run, progress=progress, stop_after_round=stop_after_round,
                      incremental=incremental, source_id=source_id)
    return publish(job, job.run(), report)


def publish(job: CurationJob, result: CurationResult, report: bool = True) -> CurationResult:
    """After a complete run: write its report (``report`` and ``report.enabled``), then attach the
    report and the resolved config to the increment's MLflow run and end it (when tracked)."""
    if not result.complete:
        return result
    if report and result.config.report.enabled:
        from cleancurate.jobs.curation.report import build_report

        result.report_path = build_report(result, timings=job.timings)
    tracked.log_report(job.tracker, result.config, result.report_path)
    return result

