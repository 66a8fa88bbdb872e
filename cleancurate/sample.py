"""The shipped sample corpus: build its Parquet file from JSONL, or write it as Delta."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"
SCHEMA_DDL = "id string, query string, response string, label string"


def sample_jsonl() -> Path:
    """The human-readable source of the sample corpus."""
    return SAMPLE_DIR / "pairs.jsonl"


def sample_parquet() -> Path:
    """The shipped Parquet file of the sample corpus."""
    return SAMPLE_DIR / "corpus.parquet"


def read_records(path: Path | None = None) -> list[dict]:
    """Rows of a JSONL file as dicts."""
    path = path or sample_jsonl()
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def build_parquet(src: Path | None = None, dest: Path | None = None) -> Path:
    """Write the JSONL rows to Parquet with a fixed string schema (deterministic bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_records(src)
    schema = pa.schema([(name, pa.string()) for name in ("id", "query", "response", "label")])
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    dest = dest or sample_parquet()
    dest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dest, compression="zstd")
    return dest


def write_delta(spark, dest: str, src: Path | None = None) -> str:
    """Write the sample corpus as a Delta table at ``dest`` (overwrites)."""
    path = str(src or sample_parquet())
    spark.read.parquet(path).write.format("delta").mode("overwrite").save(dest)
    return dest
