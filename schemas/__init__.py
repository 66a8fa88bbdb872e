"""Schemas of every table the job writes and of every UDF's output."""

from cleancurate.schemas.tables import (  # noqa: F401
    CANDIDATES,
    CURATED,
    DOCS,
    MIX,
    QUARANTINE,
    ROUND_STATS,
    ROUNDS,
    RUNS,
    TABLES,
)
from cleancurate.schemas.udf import (  # noqa: F401
    EMBED_SCORES,
    GENERATION,
    JUDGE,
    PERPLEXITY,
    QUALITY,
    SCORES,
)
