"""Schemas of every table the job writes and of every UDF's output.

The UDF return types (:mod:`cleancurate.schemas.udf`) are plain strings and load at
once; a candidate's scores are declared once in :mod:`cleancurate.schemas.candidate`. The table StructTypes (:mod:`cleancurate.schemas.tables`) need pyspark, so they
load on first use: the model engine (``cleancurate.engine``, for the column orders of
its DataFrames), the UDF factories and the GPU benchmark import this package on
machines that have torch but no Spark or Java.
"""

from cleancurate.schemas.udf import GATE, GENERATION, SCORES, SCREEN  # noqa: F401

_TABLE_NAMES = ("CANDIDATES", "CURATED", "DOCS", "INCREMENTS", "MIX", "QUARANTINE", "REMOVALS", "ROUND_STATS", "ROUNDS",
                "RUNS", "TABLES")


def __getattr__(name):
    if name in _TABLE_NAMES:
        from cleancurate.schemas import tables

        return getattr(tables, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_TABLE_NAMES))
