"""Reading the input and writing the job's Delta tables idempotently.

Output tables live either in a folder (``output.path``: one Delta table per
sub-folder) or in the catalog (``output.table_prefix``: ``<prefix><table>``).
Every write replaces exactly its own slice (``replaceWhere`` on the run id and,
for per-round tables, the round), so rerunning a step gives the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleancurate.config import ConfigError, InputConfig, OutputConfig


class InputError(ValueError):
    """The input cannot be read or does not have the required columns."""


def read_input(spark, cfg: InputConfig):
    """Read a Parquet path, Delta path or catalog table as a DataFrame."""
    import os

    fmt, src = cfg.format, cfg.path
    if fmt == "auto":
        if os.path.isdir(os.path.join(src, "_delta_log")):
            fmt = "delta"
        elif "://" in src or os.path.exists(src) or src.startswith("/"):
            fmt = "parquet"
        else:
            fmt = "table"
    try:
        if fmt == "table":
            return spark.read.table(src)
        return spark.read.format(fmt).load(src)
    except Exception as exc:  # AnalysisException and friends
        raise InputError(
            f"cannot read input '{src}' as {fmt}: {str(exc).splitlines()[0]}; "
            "set input.path to a Parquet path, a Delta path or a catalog table, and input.format if needed"
        ) from exc


@dataclass(frozen=True)
class TableStore:
    """Locations and idempotent writes of the job's output tables."""

    spark: object
    output: OutputConfig

    def location(self, name: str) -> str:
        if self.output.table_prefix:
            return f"{self.output.table_prefix}{name}"
        return f"{self.output.path.rstrip('/')}/{name}"

    @property
    def root(self) -> str:
        """The output itself, as one string: its folder (no trailing slash) or its table prefix."""
        return self.output.table_prefix or self.output.path.rstrip("/")

    @property
    def catalog(self) -> bool:
        return bool(self.output.table_prefix)

    def exists(self, name: str) -> bool:
        import os

        loc = self.location(name)
        if self.catalog:
            return self.spark.catalog.tableExists(loc)
        if "://" in loc:
            try:
                self.spark.read.format("delta").load(loc).schema
                return True
            except Exception:  # noqa: BLE001
                return False
        return os.path.isdir(os.path.join(loc, "_delta_log"))

    def read(self, name: str):
        loc = self.location(name)
        if self.catalog:
            return self.spark.read.table(loc)
        return self.spark.read.format("delta").load(loc)

    def write_slice(self, df, name: str, where: str, partition_by: list[str] | None = None,
                    merge_schema: bool = False) -> None:
        """Replace the rows matching ``where`` with ``df`` (create the table if needed).

        ``df`` must only hold rows matching ``where``. The replace is one Delta commit,
        so a reader sees either the old slice or the new one, never half of it.
        ``merge_schema`` lets a table written by an older version gain the columns a
        newer schema adds (its old rows read them as null).
        """
        writer = df.write.format("delta").option("replaceWhere", where)
        if merge_schema:
            writer = writer.option("mergeSchema", "true")
        if not self.exists(name):
            writer = df.write.format("delta").mode("overwrite")
            if partition_by:
                writer = writer.partitionBy(*partition_by)
        else:
            writer = writer.mode("overwrite")
        if self.catalog:
            writer.saveAsTable(self.location(name))
        else:
            writer.save(self.location(name))


    def lease_path(self, name: str, key: str) -> str:
        """A small file inside table ``name``'s folder (``<table>/_lease/<key>``) for liveness notes.

        Delta ignores (and VACUUM keeps) paths under a folder whose name starts with ``_``.
        """
        loc = self.location(name)
        if self.catalog:
            loc = self.spark.sql(f"DESCRIBE DETAIL {loc}").collect()[0]["location"]
        return f"{loc.rstrip('/')}/_lease/{key}"

    def _private_fs(self, path: str):
        """(Hadoop Path, a FileSystem of its own): its checksum settings touch no one else's."""
        jvm = self.spark._jvm
        p = jvm.org.apache.hadoop.fs.Path(path)
        return p, jvm.org.apache.hadoop.fs.FileSystem.newInstance(p.toUri(), self.spark._jsc.hadoopConfiguration())

    def put_text(self, path: str, text: str) -> None:
        """Write ``path`` (any Hadoop file system: local, s3a, abfss, dbfs) from the driver: no Spark task."""
        p, fs = self._private_fs(path)
        try:
            fs.setWriteChecksum(False)  # no .crc beside it on local disks: the note is tiny and rewritten often
            out = fs.create(p, True)
            try:
                out.write(bytearray(text.encode("utf-8")))
            finally:
                out.close()
        finally:
            fs.close()

    def get_text(self, path: str) -> str | None:
        """The text of ``path``, or None when it does not exist (read from the driver)."""
        p, fs = self._private_fs(path)
        try:
            fs.setVerifyChecksum(False)
            if not fs.exists(p):
                return None
            stream = fs.open(p)
            try:
                return self.spark._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
            finally:
                stream.close()
        finally:
            fs.close()

    def table(self, name: str):
        """The Delta table ``name`` (:class:`delta.tables.DeltaTable`), for deletes and VACUUM."""
        from delta.tables import DeltaTable

        loc = self.location(name)
        return DeltaTable.forName(self.spark, loc) if self.catalog else DeltaTable.forPath(self.spark, loc)

    def delete_docs(self, name: str, run_id: str, keys) -> None:
        """Delete the rows of run ``run_id`` whose ``doc_id`` is one of ``keys`` (a DataFrame of ``doc_id``): one commit."""
        cond = f"t.run_id = {sql_literal(run_id)} AND t.doc_id = k.doc_id"
        self.table(name).alias("t").merge(keys.distinct().alias("k"), cond).whenMatchedDelete().execute()


def sql_literal(value: str) -> str:
    """A single-quoted SQL string literal."""
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
