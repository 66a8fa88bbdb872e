"""The session's shared fixtures, and the two hooks that schedule the suite's slowest test.

What each fixture starts, and when: nothing here starts before a test asks for it, except the
entry points' chain (``entrypoint_chain``, autouse), which starts the session's JVM and two
background job runs at the first test when the chain's test is selected. Expensive things are
session-scoped and built once: a JVM (``spark``), the embedded models (``lm``, ``encoder``) and one
real-model curation run (``curation_run``) that every test which only reads a run's tables shares.

Environment set at import, before any test or fixture: ``HF_HUB_OFFLINE`` (the models are
embedded; nothing is downloaded), ``TOKENIZERS_PARALLELISM=false`` (no tokenizer threads fighting
Spark's workers for the two cores) and ``CLEANCURATE_LOAD_LOG`` (where every process, Spark
workers included, logs its model loads; ``test_models_load_once_per_python_worker`` reads it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOAD_LOG = Path(os.environ.setdefault("CLEANCURATE_LOAD_LOG", str(ROOT / "out" / "test-model-loads.log")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_sessionstart(session):
    """Empty the model-load log: the loads counted are this session's."""
    LOAD_LOG.parent.mkdir(parents=True, exist_ok=True)
    LOAD_LOG.write_text("")


# ------------------------------------------------------------------ models
@pytest.fixture(scope="session")
def lm():
    """The embedded SmolLM2-135M (tokenizer and weights, CPU), loaded once for the session: the
    engine's perplexity and generation tests score and write with a real model."""
    from cleancurate.models import get_model

    return get_model("embedded:smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def encoder():
    """The embedded MiniLM-L6 sentence encoder (CPU), loaded once for the session: the helpfulness
    signal, the safety head's embeddings and the gate's scorer read it."""
    from cleancurate.models import get_model

    return get_model("embedded:minilm-l6", kind="encoder", device="cpu")


@pytest.fixture(scope="module")
def tiny_llama():
    """A 2-layer random Llama (vocabulary 110: the ids of ``tests.fakes.CharTokenizer``), seeded, in
    memory, built once per module (milliseconds): the real decode loop and KV cache, fast, for the
    engine's decode tests and the batch-size and attention tests. Not ``tiny_lm_dir``: that one is a
    saved folder over the embedded tokenizer's vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=110, max_position_embeddings=512, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # spread the logits like a trained model's, so texts are not pure noise
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama with the embedded tokenizer, saved as a model folder: the guard of the
    guard-backend run, and the model the distributed fine-tuning test trains."""
    from tests import jobdata

    return jobdata.save_tiny_llama(tmp_path_factory.mktemp("tiny-lm") / "tiny-llama")


# ------------------------------------------------------------------ Spark
@pytest.fixture(scope="session")
def spark():
    """One local SparkSession (``local[2]``) with Delta for the whole test session: it starts a JVM
    (Delta's jars resolved from the local Maven/Ivy cache, or downloaded on the first run of a
    machine) and, on first use, Python worker processes. ``jobdata.SMALL_DATA_CONF`` tunes it for
    the tests' tiny tables. Stopped at the end of the session."""
    from tests import jobdata
    from cleancurate.session import get_spark

    s = get_spark("local[2]", "cleancurate-tests", jobdata.SMALL_DATA_CONF)
    yield s
    s.stop()


# ------------------------------------------------------------------ the shared curation run
# One real-model run of the job (embedded model, two rounds, the screen on) that every test
# which only reads a run's tables shares: the job, screen, report and evaluation tests.
LOADS_DURING_SHARED_RUN: list[str] = []


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A temporary folder for the shared run's input and output."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def shared_input(spark, shared_dir):
    """The shared run's input, written as Parquet with the session's Spark (starts the JVM)."""
    from tests import jobdata

    return jobdata.write_shared_parquet(spark, str(shared_dir / "input.parquet"))


@pytest.fixture(scope="session")
def shared_raw(shared_input, shared_dir):
    """The shared run's configuration, as a dict."""
    from tests import jobdata

    return jobdata.shared_config(shared_input, str(shared_dir / "run"))


@pytest.fixture(scope="session")
def curation_run(spark, shared_raw):
    """The shared run's :class:`~cleancurate.jobs.curation.stages.CurationResult`.

    Runs the curation job once, in this process's Spark session: its Python workers load the
    embedded models and write and score candidates for two rounds. Built by the first test that
    asks for it, read by the rest; the model loads logged meanwhile go to ``LOADS_DURING_SHARED_RUN``.
    """
    from cleancurate import config as C
    from cleancurate.jobs.curation.stages import curate

    before = len(LOAD_LOG.read_text().splitlines()) if LOAD_LOG.exists() else 0
    result = curate(None, C.from_dict(shared_raw), spark=spark, report=False)
    # model loads logged while this run executed (other tests' processes log here too)
    LOADS_DURING_SHARED_RUN[:] = LOAD_LOG.read_text().splitlines()[before:]
    return result


# ------------------------------------------------------------------ the entry points' chain
# The chain (tests/entrypoint_chain.py) is the suite's longest piece of work: spark-submit in a JVM
# of its own, killed after round 1, then the notebook in a fresh kernel (another JVM) resuming the
# run. Most of its time is process start-up (JVMs, Python workers, model loads), so it runs in the
# background, at low priority, while the in-process tests use the cores; run in line, it would add
# its whole duration to the suite's. Two pieces make that work:
#   - ``entrypoint_chain`` is autouse, so it starts at the session's first test, not when its
#     test comes up;
#   - ``pytest_collection_modifyitems`` moves its test to the end, so the chain has the whole
#     session to finish before anything waits for it.
CHAIN_TEST = "test_spark_submit_killed_after_round_one_resumes_in_the_notebook_and_a_rerun_writes_nothing"


def pytest_collection_modifyitems(session, config, items):
    """The entry-point chain's test goes last: its processes run in the background until then.

    A stable sort: every other test keeps its collection order."""
    items.sort(key=lambda item: item.name == CHAIN_TEST)


@pytest.fixture(scope="session", autouse=True)
def entrypoint_chain(request, tmp_path_factory):
    """spark-submit killed after round 1, then the notebook resuming it (tests/entrypoint_chain.py),
    started in the background by the session's first test when its test is selected; None otherwise.

    When selected it starts, from the first test: the session's JVM (``spark``), the shared run's
    input, and the chain's thread, which runs ``spark-submit`` (a JVM, a Python driver and workers
    that load the embedded model) and then a notebook kernel (another JVM and workers), both
    niced. Not selected (``-m "not slow"``, ``-k``, one file), it starts nothing at all.
    At the session's end a spark-submit still running is killed."""
    if not any(item.name == CHAIN_TEST for item in request.session.items):
        yield None
        return
    from tests import jobdata
    from tests.entrypoint_chain import EntrypointChain

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
