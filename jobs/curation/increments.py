"""Increments: an output that follows its source, at the cost of what changed.

A run (one configuration, one output) is a series of increments. Increment 0 is the
first, full run over the source; each later one (``--incremental``) brings the output up
to date with the source as it is now:

::

    source now (SourceIdentity)    vs    ledger: docs + quarantine[validate] of earlier increments
      -> plan: per doc key (doc_id, or content:<hash>), the source rows' fingerprint
               (validate.with_source_hash) against the ledger's: new / changed / removed / unchanged
               (a Delta source with its Change Data Feed on: only the keys the feed names)
      -> prune: removed and changed keys leave docs, quarantine, candidates, rounds, curated and mix
               (one Delta MERGE ... DELETE per table), each recorded in ``removals``
      -> the rows of new and changed keys go through validate, screen, select and the rounds
               as a run of their own, in this increment's slices

Reads: the source, ``docs`` and ``quarantine`` (the ledger), ``increments``, ``removals``.
Writes: ``increments`` (this increment's row: what it read, what changed, its phase,
who works on it), ``removals``, and the deletes of :func:`prune`.

Every step is a restart point: the plan's counts are written before anything is
deleted, deletes are idempotent, and the work set is always "source keys the earlier
increments do not hold with the same fingerprint", so a killed increment resumes where
it stopped. Two jobs never work on one output at once: the increment's row names its
owner (host, process, token) and a heartbeat; a second job stops before any model work
while the owner is alive.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from cleancurate.config import ConfigError
from cleancurate.jobs.curation.runrecord import utcnow
from cleancurate.sources import SourceIdentity, change_feed

PHASES = ("planned", "pruned", "prepared", "rounds", "complete")


class ConcurrentRunError(RuntimeError):
    """Another job is working on this output right now."""


class InputChangedError(ConfigError):
    """The source is not what the stored run read, and incremental mode is off."""


@dataclass
class Plan:
    """What an increment found: how the source differs from the output's ledger."""

    read_via: str  # full (nothing in the output yet) | diff (whole snapshot compared) | change_feed
    note: str | None
    source_rows: int
    source_docs: int
    new: int
    changed: int
    removed: int
    unchanged: int
    previous_docs: int

    def problems(self) -> list[str]:
        """The diff's own accounting: every key of the source and of the ledger is in exactly one class."""
        out = []
        if self.read_via != "change_feed" and self.source_docs != self.new + self.changed + self.unchanged:
            out.append(f"source docs {self.source_docs} != new {self.new} + changed {self.changed} + unchanged "
                       f"{self.unchanged}")
        if self.previous_docs != self.changed + self.removed + self.unchanged:
            out.append(f"docs in the output {self.previous_docs} != changed {self.changed} + removed {self.removed} "
                       f"+ unchanged {self.unchanged}")
        return out


def ledger(ctx):
    """``doc_key, source_hash`` of every source key the earlier increments hold (valid or quarantined at validation)."""
    from pyspark.sql import functions as F

    parts = []
    for name, cond in (("docs", F.lit(True)), ("quarantine", F.col("stage") == "validate")):
        if ctx.store.exists(name):
            rows = ctx.read_all(name).where(cond & (F.col("increment") < ctx.increment))
            parts.append(rows.select(F.col("doc_id").alias("doc_key"), "source_hash"))
    if not parts:
        return ctx.spark.createDataFrame([], "doc_key string, source_hash string")
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.distinct()


def source_keys(rows):
    """``doc_key, source_hash, rows`` per key of keyed, hashed source rows."""
    from pyspark.sql import functions as F

    return rows.groupBy("doc_key").agg(F.first("source_hash").alias("source_hash"), F.count("*").alias("rows"))


def plan(ctx, hashed_rows, identity: SourceIdentity, previous: SourceIdentity | None, keyed_feed=None,
         note: str | None = None) -> tuple[Plan, object]:
    """Compare the source with the ledger; return the plan and the ``doc_key, reason`` rows to remove.

    Args:
        hashed_rows: the source snapshot's rows, keyed and hashed (:func:`validate.with_source_hash`).
        identity, previous: the source now, and as the last complete increment read it.
        keyed_feed: keyed rows of the Change Data Feed since ``previous`` (only their keys are compared), or None.
        note: why the feed is not used although it might have been.
    """
    from pyspark.sql import functions as F

    src = source_keys(hashed_rows)
    source_rows = hashed_rows.count()
    if ctx.increment == 0:  # the first increment: the output holds nothing, every key is new
        docs = src.count()
        return Plan("full", note, source_rows, docs, docs, 0, 0, 0, 0), None
    led = ledger(ctx)
    via = "full" if previous is None else "diff"
    if keyed_feed is not None:
        touched = keyed_feed.select("doc_key").distinct()
        src_t = src.join(touched, "doc_key", "left_semi")
        led_t = led.join(touched, "doc_key", "left_semi")
        via = "change_feed"
    else:
        src_t, led_t = src, led
    j = src_t.alias("s").join(led_t.alias("l"), "doc_key", "full_outer")
    kind = (F.when(F.col("l.source_hash").isNull(), "new").when(F.col("s.source_hash").isNull(), "removed")
            .when(F.col("s.source_hash") != F.col("l.source_hash"), "changed").otherwise("unchanged"))
    classes = j.select("doc_key", kind.alias("kind")).localCheckpoint()
    counts = {r.kind: int(r["count"]) for r in classes.groupBy("kind").count().collect()}
    previous_docs = led.count()
    unchanged = counts.get("unchanged", 0)
    if keyed_feed is not None:  # keys the feed did not name are unchanged
        unchanged = previous_docs - counts.get("changed", 0) - counts.get("removed", 0)
    p = Plan(read_via=via, note=note, source_rows=source_rows, source_docs=src.count(),
             new=counts.get("new", 0), changed=counts.get("changed", 0), removed=counts.get("removed", 0),
             unchanged=unchanged, previous_docs=previous_docs)
    gone = classes.where(F.col("kind").isin("removed", "changed")).select(
        "doc_key", F.when(F.col("kind") == "removed", "deleted").otherwise("changed").alias("reason"))
    return p, gone


def work_rows(ctx, hashed_rows):
    """The source rows this increment curates: keys the earlier increments do not hold with the same fingerprint."""
    led = ledger(ctx)
    return hashed_rows.join(led, ["doc_key", "source_hash"], "left_anti")


#: tables whose rows belong to a document (``doc_id``), in the order an increment prunes them
DOC_TABLES = ("mix", "curated", "rounds", "candidates", "quarantine", "docs")


def prune(ctx, gone, identity: SourceIdentity) -> int:
    """Record the documents leaving the output in ``removals``, then delete their rows from every table.

    Returns the number of documents recorded for this increment. A rerun deletes nothing
    more and records the same documents (earlier records of this increment are kept).
    ``gone`` None (the first increment) records and deletes nothing.
    """
    from pyspark.sql import functions as F

    from cleancurate.schemas import REMOVALS

    if gone is None:
        return 0
    new = gone.select(F.lit(ctx.run_id).alias("run_id"), F.col("doc_key").alias("doc_id"), "reason",
                      F.lit(identity.location).alias("source"),
                      F.lit(identity.version).cast("long").alias("source_version"),
                      F.lit(utcnow()).cast("timestamp").alias("removed_at"))
    if ctx.store.exists("removals"):
        before = ctx.read("removals").drop("increment")
        new = before.unionByName(new.join(before.select("doc_id"), "doc_id", "left_anti"))
    new = new.localCheckpoint()
    ctx.write(new.select(*[f.name for f in REMOVALS.fields if f.name != "increment"]), "removals")
    keys = ctx.read("removals").select("doc_id").distinct().localCheckpoint()
    if keys.limit(1).count():
        for name in DOC_TABLES:
            if ctx.store.exists(name):
                ctx.store.delete_docs(name, ctx.run_id, keys)
    return ctx.read("removals").count()


def vacuum(ctx, retention_hours: float) -> None:
    """VACUUM the document tables, so removed rows leave the disk (and time travel to before ends)."""
    conf = "spark.databricks.delta.retentionDurationCheck.enabled"
    old = ctx.spark.conf.get(conf, "true")
    try:
        if retention_hours < 168:
            ctx.spark.conf.set(conf, "false")  # the user asked for less than Delta's 7-day default
        for name in DOC_TABLES + ("removals",):
            if ctx.store.exists(name):
                ctx.store.table(name).vacuum(retention_hours)
    finally:
        ctx.spark.conf.set(conf, old)


# ------------------------------------------------------------------ the increment's row
def _alive(owner: str | None, beat: datetime | None, stale_s: float, mine: str) -> bool:
    """Whether the job named ``owner`` is still working: same host, its process exists; elsewhere, a fresh beat."""
    if not owner or owner == mine:
        return False
    host, pid, _token = (owner.split(":") + ["", ""])[:3]
    if host == socket.gethostname():
        if str(os.getpid()) == pid:
            return False  # this process, an earlier attempt (a notebook cell run again)
        try:
            os.kill(int(pid), 0)
            return True
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
    return beat is not None and (utcnow() - beat).total_seconds() < stale_s


class IncrementRecord:
    """This increment's row of ``increments``: claimed once, then marked after every committed step.

    While the job works, a daemon thread writes a lease every ``runtime.heartbeat_seconds``:
    a small JSON file (owner, time) inside the ``increments`` table's folder
    (``increments/_lease/<run_id>``), written from the driver through Hadoop's file system,
    so a beat never waits for a task slot behind a long model stage (a Delta commit would).
    Another job treats the owner as alive while its process exists (same host) or its
    latest beat (the lease's, else the row's ``heartbeat_at``) is younger than five
    intervals (another host).
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.row: dict | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.time()

    @property
    def interval(self) -> float:
        return float(self.ctx.cfg.runtime.heartbeat_seconds)

    def rows(self) -> list[dict]:
        from pyspark.sql import functions as F

        if not self.ctx.store.exists("increments"):
            return []
        got = self.ctx.store.read("increments").where(F.col("run_id") == self.ctx.run_id).collect()
        return sorted((r.asDict() for r in got), key=lambda r: r["increment"])

    def latest(self) -> dict | None:
        rows = self.rows()
        return rows[-1] if rows else None

    def last_complete(self) -> dict | None:
        done = [r for r in self.rows() if r["status"] == "complete"]
        return done[-1] if done else None

    def claim(self, increment: int, identity: SourceIdentity, stored: dict | None) -> dict:
        """Take ``increment`` for this job (a new row, or the stored one of a job that stopped)."""
        beat = self.last_beat(stored) if stored is not None else None
        if stored is not None and _alive(stored.get("owner"), beat, 5 * self.interval, self.owner):
            raise ConcurrentRunError(
                f"another job is working on output {self.ctx.store.root}: increment {increment} of run "
                f"{self.ctx.run_id} is held by {stored['owner']} (last heartbeat {beat} UTC); "
                "wait for it to finish, or stop it and rerun this command to resume")
        now = utcnow()
        base = dict(stored) if stored is not None else {
            "run_id": self.ctx.run_id, "increment": increment, "status": "running", "phase": "planned",
            "last_complete_round": -1, "started_at": now}
        base.update(self._identity(identity), owner=self.owner, heartbeat_at=now, status="running")
        if stored is not None and not identity.same_as(SourceIdentity.from_json(stored.get("source_json"))):
            base.update(phase="planned", last_complete_round=-1)  # the source moved on: plan again
        self.row = base
        try:
            self._write()
        except Exception as exc:  # noqa: BLE001 - a concurrent claim won the Delta commit
            raise ConcurrentRunError(f"another job claimed output {self.ctx.store.root} at the same moment "
                                     f"({type(exc).__name__}); rerun this command once it has finished") from exc
        got = next((r for r in self.rows() if r["increment"] == increment), None)
        if got is None or got.get("owner") != self.owner:
            raise ConcurrentRunError(f"another job ({got and got.get('owner')}) claimed output "
                                     f"{self.ctx.store.root} at the same moment; rerun once it has finished")
        self._beat()
        self._start_heartbeat()
        return self.row

    @property
    def lease(self) -> str:
        return self.ctx.store.lease_path("increments", self.ctx.run_id)

    def last_beat(self, stored: dict) -> datetime | None:
        """The latest sign of life of ``stored``'s owner: its lease's time, else the row's ``heartbeat_at``."""
        beat = stored.get("heartbeat_at")
        try:
            note = json.loads(self.ctx.store.get_text(self.lease) or "{}")
        except Exception:  # noqa: BLE001 - an unreadable lease is no sign of life
            note = {}
        if note.get("owner") == stored.get("owner") and note.get("at"):
            at = datetime.fromisoformat(note["at"])
            beat = at if beat is None or at > beat else beat
        return beat

    def _beat(self) -> None:
        """Write the lease: this owner, now (UTC, the clock ``heartbeat_at`` uses)."""
        note = {"owner": self.owner, "increment": self.row["increment"], "at": utcnow().isoformat()}
        self.ctx.store.put_text(self.lease, json.dumps(note))

    @staticmethod
    def _identity(identity: SourceIdentity) -> dict:
        return {"source_kind": identity.kind, "source": identity.location, "source_version": identity.version,
                "source_fingerprint": identity.fingerprint, "source_json": identity.to_json()}

    def mark(self, **fields) -> None:
        """Replace the row with ``fields`` changed (phase, rounds, counts, status)."""
        with self._lock:
            self.row.update(fields, heartbeat_at=utcnow())
            self._write()

    def _write(self) -> None:
        from cleancurate.schemas import INCREMENTS

        row = {f.name: self.row.get(f.name) for f in INCREMENTS.fields}
        row.setdefault("read_via", "full")
        row["read_via"] = row["read_via"] or "full"
        df = self.ctx.spark.createDataFrame([tuple(row[f.name] for f in INCREMENTS.fields)], INCREMENTS)
        self.ctx.write(df.drop("increment"), "increments")

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.interval):
                try:
                    self._beat()
                except Exception:  # noqa: BLE001 - a missed beat only makes the lease look older
                    pass

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="cleancurate-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and clear the owner: the next job may take the increment at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None
        if self.row is not None and self.row.get("owner") == self.owner:  # a complete increment cleared it already
            try:
                self.mark(owner=None)
            except Exception:  # noqa: BLE001 - the row keeps a dead owner; the next job sees its process is gone
                pass


def read_changes(ctx, identity: SourceIdentity, previous: SourceIdentity | None):
    """The keyed Change Data Feed rows since ``previous``, or (None, why) when the whole snapshot must be compared."""
    from cleancurate.jobs.curation.validate import keyed

    if previous is None or identity.kind != "delta":
        return None, None
    feed, why = change_feed(ctx.spark, ctx.cfg.input, previous, identity)
    if feed is None:
        return None, (why if identity.cdf else None)
    return keyed(feed, ctx.cfg), None
