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


CHAIN_TEST = "test_spark_submit_killed_after_round_one_resumes_in_the_notebook_and_a_rerun_writes_nothing"


def pytest_collection_modifyitems(session, config, items):
    """The entry-point chain's test goes last: its processes run in the background until then."""
    items.sort(key=lambda item: item.name == CHAIN_TEST)


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession with Delta for the whole test session."""
    import jobdata
    from cleancurate.session import get_spark

    s = get_spark("local[2]", "cleancurate-tests", jobdata.SMALL_DATA_CONF)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama with the embedded tokenizer, saved as a model folder: the guard of the
    guard-backend run, and the model the distributed fine-tuning test trains."""
    import jobdata

    return jobdata.save_tiny_llama(tmp_path_factory.mktemp("tiny-lm") / "tiny-llama")


# ------------------------------------------------------------------ the shared curation run
# One real-model run of the job (embedded model, two rounds, the screen on) that every test
# which only reads a run's tables shares: the job, screen, report and evaluation tests.
LOADS_DURING_SHARED_RUN: list[str] = []


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def shared_input(spark, shared_dir):
    import jobdata

    return jobdata.write_shared_parquet(spark, str(shared_dir / "input.parquet"))


@pytest.fixture(scope="session")
def shared_raw(shared_input, shared_dir):
    """The shared run's configuration, as a dict."""
    import jobdata

    return jobdata.shared_config(shared_input, str(shared_dir / "run"))


@pytest.fixture(scope="session")
def curation_run(spark, shared_raw):
    """The shared run's :class:`~cleancurate.jobs.curation.stages.CurationResult`."""
    from cleancurate import config as C
    from cleancurate.jobs.curation.stages import curate

    before = len(LOAD_LOG.read_text().splitlines()) if LOAD_LOG.exists() else 0
    result = curate(None, C.from_dict(shared_raw), spark=spark, report=False)
    # model loads logged while this run executed (other tests' processes log here too)
    LOADS_DURING_SHARED_RUN[:] = LOAD_LOG.read_text().splitlines()[before:]
    return result


# ------------------------------------------------------------------ the entry points' chain
@pytest.fixture(scope="session", autouse=True)
def entrypoint_chain(request, tmp_path_factory):
    """spark-submit killed after round 1, then the notebook resuming it (tests/entrypoint_chain.py),
    started in the background by the session's first test when its test is selected; None otherwise."""
    if not any(item.name == CHAIN_TEST for item in request.session.items):
        yield None
        return
    import jobdata
    from entrypoint_chain import EntrypointChain

    spark = request.getfixturevalue("spark")
    shared_input, shared_raw = request.getfixturevalue("shared_input"), request.getfixturevalue("shared_raw")
    workdir = tmp_path_factory.mktemp("chain")
    out = workdir / "killed"
    # the shared run's config with its own output and the report on (neither changes the run id)
    cfg_path = jobdata.write_config(workdir / "killed.yaml", {**shared_raw, "output": {"path": str(out)},
                                                               "report": {"enabled": True}})
    jars = [j.removeprefix("file://") for j in spark.sparkContext.getConf().get("spark.jars", "").split(",") if j]
    chain = EntrypointChain(cfg_path, shared_input, out, jars, jobdata.SMALL_DATA_CONF,
                            workdir / "loads.log").start()
    yield chain
    chain.cancel()
