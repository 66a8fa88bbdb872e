"""What a run read: the identity of its input, and the rows that changed since.

:func:`identify` names the source as it is now, cheaply and without reading its rows
where the format allows:

- a Delta path or a Delta catalog table: its location and table version (and whether
  its Change Data Feed is on);
- a Parquet path (or a non-Delta table): its data files, each with size and
  modification time, hashed into one fingerprint;
- a DataFrame passed from Python: the id the caller gives (``source_id``), else a
  fingerprint of its content (one pass over the rows).

A run records its :class:`SourceIdentity` per increment. A rerun whose source has
another identity never returns the stored result: :mod:`cleancurate.jobs.curation.stages`
either brings the output up to date (incremental mode) or stops with an error.

:func:`changed_keys` reads a Delta source's Change Data Feed between two versions
(the keys of every row inserted, updated or deleted); where the feed cannot be read
(turned off, or the starting version vacuumed) it returns None and says why, and the
caller compares the whole snapshot instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

from cleancurate.configsections import InputConfig


@dataclass(frozen=True)
class SourceIdentity:
    """Which input a run read, as recorded in its ``increments`` rows.

    Attributes:
        kind: ``delta`` (path or table), ``parquet`` (files), ``table`` (a catalog table
            that is not Delta), ``dataframe``.
        location: the path or table name (``dataframe`` for a DataFrame).
        version: the Delta table version read; None for other kinds.
        fingerprint: what stands for the content where there is no version: the data
            files' hash, the caller's ``source_id``, or a content hash; for Delta the
            location and version again.
        cdf: the Delta table has its Change Data Feed on.
    """

    kind: str
    location: str
    version: int | None
    fingerprint: str
    cdf: bool = False

    def same_as(self, other: "SourceIdentity | None") -> bool:
        """Same content as ``other`` (the Change Data Feed setting aside)."""
        return other is not None and (self.kind, self.location, self.version, self.fingerprint) == (
            other.kind, other.location, other.version, other.fingerprint)

    def describe(self) -> str:
        if self.version is not None:
            return f"{self.kind} {self.location} at version {self.version}"
        return f"{self.kind} {self.location} (fingerprint {self.fingerprint[:12]})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "SourceIdentity | None":
        return cls(**json.loads(text)) if text else None


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def input_format(cfg: InputConfig) -> str:
    """``delta``, ``parquet`` or ``table``: ``input.format``, or (``auto``) what ``input.path`` looks like."""
    if cfg.format != "auto":
        return cfg.format
    src = cfg.path
    if os.path.isdir(os.path.join(src, "_delta_log")):
        return "delta"
    if "://" in src or os.path.exists(src) or src.startswith("/"):
        return "parquet"
    return "table"


def _delta_ref(kind: str, location: str) -> str:
    return f"delta.`{location}`" if kind == "delta_path" else location


def _delta_state(spark, ref: str) -> tuple[int, bool] | None:
    """(version, change feed on) of a Delta table, or None when it is not one."""
    try:
        detail = spark.sql(f"DESCRIBE DETAIL {ref}").collect()[0].asDict()
    except Exception:  # noqa: BLE001 - not a Delta table (or not readable as one)
        return None
    if str(detail.get("format", "")).lower() != "delta":
        return None
    version = spark.sql(f"DESCRIBE HISTORY {ref} LIMIT 1").collect()[0]["version"]
    props = detail.get("properties") or {}
    return int(version), str(props.get("delta.enableChangeDataFeed", "false")).lower() == "true"


def _file_fingerprint(spark, df) -> str:
    """Hash of the data files behind ``df``: path, size and modification time of each."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    files = []
    for name in sorted(df.inputFiles()):
        path = jvm.org.apache.hadoop.fs.Path(name)
        status = path.getFileSystem(conf).getFileStatus(path)
        files.append([name, int(status.getLen()), int(status.getModificationTime())])
    return _sha(files)


def content_fingerprint(df) -> str:
    """An order-free hash of a DataFrame's rows (one pass): row count and the sum of 64-bit row hashes."""
    from pyspark.sql import functions as F

    row = df.select(F.count("*").alias("n"), F.sum(F.xxhash64(*df.columns).cast("decimal(38,0)")).alias("h")).collect()[0]
    return _sha([int(row.n), str(row.h), df.schema.simpleString()])


def identify(spark, cfg: InputConfig, df=None, source_id: str | None = None) -> SourceIdentity:
    """The identity of the input as it is now (see the module docstring)."""
    if df is not None:
        if source_id:
            return SourceIdentity("dataframe", "dataframe", None, _sha(["id", source_id]))
        return SourceIdentity("dataframe", "dataframe", None, content_fingerprint(df))
    fmt = input_format(cfg)
    if fmt in ("delta", "table"):
        ref = _delta_ref("delta_path" if fmt == "delta" else "table", cfg.path)
        state = _delta_state(spark, ref)
        if state is not None:
            version, cdf = state
            return SourceIdentity("delta", cfg.path, version, _sha([cfg.path, version]), cdf)
        if fmt == "delta":
            raise ValueError(f"input {cfg.path!r} is not a Delta table (input.format: delta)")
    from cleancurate.tables import read_input

    frame = read_input(spark, cfg)
    if fmt == "table":
        try:
            return SourceIdentity("table", cfg.path, None, _file_fingerprint(spark, frame))
        except Exception:  # noqa: BLE001 - a view or a source without files: hash its rows
            return SourceIdentity("table", cfg.path, None, content_fingerprint(frame))
    return SourceIdentity("parquet", cfg.path, None, _file_fingerprint(spark, frame))


def read_at(spark, cfg: InputConfig, identity: SourceIdentity):
    """The input as ``identity`` saw it: a Delta source at its recorded version, others as they are now."""
    from cleancurate.tables import read_input

    if identity.kind == "delta" and identity.version is not None:
        if input_format(cfg) == "delta":
            return spark.read.format("delta").option("versionAsOf", identity.version).load(cfg.path)
        return spark.read.option("versionAsOf", identity.version).table(cfg.path)
    return read_input(spark, cfg)


def change_feed(spark, cfg: InputConfig, start: SourceIdentity, end: SourceIdentity):
    """The Change Data Feed rows of a Delta source after ``start``'s version up to ``end``'s.

    Returns (DataFrame of the changed rows with the source's columns, None), or (None, why)
    when the feed cannot be read: the source is not Delta, its feed is off, or the
    versions it needs were vacuumed.
    """
    if start.kind != "delta" or end.kind != "delta" or start.location != end.location:
        return None, "the source is not the same Delta table"
    if not end.cdf:
        return None, "the source's Change Data Feed is off (delta.enableChangeDataFeed)"
    reader = (spark.read.format("delta").option("readChangeFeed", "true")
              .option("startingVersion", start.version + 1).option("endingVersion", end.version))
    try:
        feed = reader.load(cfg.path) if input_format(cfg) == "delta" else reader.table(cfg.path)
        feed = feed.drop("_change_type", "_commit_version", "_commit_timestamp")
        feed.limit(1).collect()  # fail here, not later, when the versions are gone
        return feed, None
    except Exception as exc:  # noqa: BLE001 - vacuumed history, or the feed was off at that version
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return None, (f"the Change Data Feed from version {start.version + 1} cannot be read ({first}); "
                      "it may have been vacuumed or turned on later")
