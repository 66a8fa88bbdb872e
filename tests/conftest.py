"""Shared fixtures: the embedded models (loaded once) and one local Spark session with Delta."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOAD_LOG = Path(os.environ.setdefault("CLEANCURATE_LOAD_LOG", str(ROOT / "out" / "test-model-loads.log")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_sessionstart(session):
    LOAD_LOG.parent.mkdir(parents=True, exist_ok=True)
    LOAD_LOG.write_text("")


@pytest.fixture(scope="session")
def lm():
    from cleancurate.models import get_model

    return get_model("embedded:smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def encoder():
    from cleancurate.models import get_model

    return get_model("embedded:minilm-l6", kind="encoder", device="cpu")


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession with Delta for the whole test session."""
    from cleancurate.session import get_spark

    # tiny data: one shuffle partition and no adaptive re-planning keep each stage cheap
    s = get_spark("local[2]", "cleancurate-tests", {
        "spark.sql.shuffle.partitions": "1", "spark.sql.adaptive.enabled": "false",
        "spark.databricks.delta.stats.collect": "false"})
    yield s
    s.stop()
