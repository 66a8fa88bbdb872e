"""The test suite, laid out like the code it tests.

    core/     the library modules of ``cleancurate/`` (config, gate, textrules, refusal, batching, ...)
    engine/   the model engine, ``cleancurate/engine/`` (decode loop, refill, sampling, scoring, guard, ...)
    jobs/     the curation and evaluation jobs' logic and Spark wiring (``jobs/``), with fakes or parts
    e2e/      real-model runs of the jobs and the entry points (CLI, spark-submit, notebook)
    project/  checks over the whole tree (import layers, import cycles)

Shared here, beside ``conftest.py`` (the session's fixtures): ``fakes`` (a character tokenizer and
fake models), ``jobdata`` (the tests' corpus, job config and Spark settings), ``oracles`` (the
reference implementations the engine is compared with; ``bench.generation`` uses them too) and
``entrypoint_chain`` (the background spark-submit and notebook run). ``tests`` is a package, so
every test imports them the same way from any folder (``from tests import jobdata``,
``from tests.fakes import CharTokenizer``); pytest puts the repository root on ``sys.path``.
"""
