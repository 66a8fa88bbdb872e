"""The curation job's own Spark and Delta cost, with and without compiled expressions.

    .venv/bin/python -m bench.spark_overhead [--pairs 3]

What a run of the job costs when no model runs: the job with the test suite's fake UDFs
(``tests/jobs/test_curation_fakes.py``: pandas functions with known answers, no weights) on
its 17-row corpus, objective maximize, two rounds, in one local[2] session with the test
session's settings (``tests/jobdata.py``: ``SMALL_DATA_CONF``, the JVM's default JIT
compilers). On rows this few the time
is Spark planning, Delta commits and the JVM's own compiler, not data.

1. One warm-up run (the JVM compiles the hot paths of Spark and Delta; it is reported
   apart, as ``first_run_seconds``).
2. ``--pairs`` pairs of timed runs, alternating: Spark's default (whole-stage code
   generation and compiled expressions) and interpreted expressions
   (``spark.sql.codegen.wholeStage=false``, ``spark.sql.codegen.factoryMode=NO_CODEGEN``),
   both SQL settings changed in the same session between runs.

``ratio = median(compiled) / median(interpreted)``; above 1 means the interpreted runs
were faster. Prints one JSON object (per-run seconds and each run's step times).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import begin, emit, environment, timed

INTERPRETED = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}
COMPILED = {"spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK"}


def one_run(spark, fakes, settings: dict) -> dict:
    from cleancurate.jobs.curation.stages import CurationJob

    for key, value in settings.items():
        spark.conf.set(key, value)
    folder = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    src = fakes.write_input(spark, str(folder / "in.parquet"))
    cfg = fakes.fake_config(src, str(folder / "out"), "maximize")
    steps: dict[str, float] = {}

    def progress(event):
        if event["event"] == "step":
            steps[event["step"]] = round(event["seconds"], 2)
        elif event["event"] == "prepared":
            steps["prepare"] = round(event["seconds"], 2)

    t0 = time.perf_counter()
    CurationJob(cfg, spark=spark, udfs=fakes.fake_udfs(), progress=progress).run()
    return {"seconds": round(time.perf_counter() - t0, 2), "steps": steps}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="timed (compiled, interpreted) pairs (default 3)")
    args = ap.parse_args(argv)
    env_start = begin()
    from tests import jobdata  # tests/ is a package: python -m from the repository root finds it
    from tests.jobs import test_curation_fakes as fakes

    from cleancurate.session import get_spark

    # the test session's settings but the JVM's default JIT compilers (this compares SQL settings)
    base = {k: v for k, v in jobdata.SMALL_DATA_CONF.items()
            if k not in INTERPRETED and k != "spark.driver.extraJavaOptions"}
    spark, session_s = timed(get_spark, "local[2]", "bench-overhead", base)
    first = one_run(spark, fakes, COMPILED)
    runs = {"compiled": [], "interpreted": []}
    for _ in range(args.pairs):
        runs["compiled"].append(one_run(spark, fakes, COMPILED))
        runs["interpreted"].append(one_run(spark, fakes, INTERPRETED))
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    emit({
        "benchmark": "spark_overhead",
        "inputs": {"rows": 17, "objective": "maximize", "rounds": 2, "udfs": "tests' fakes (no model)",
                   "master": "local[2]", "session_settings": base, "pairs": args.pairs,
                   "compiled": COMPILED, "interpreted": INTERPRETED},
        "session_start_seconds": round(session_s, 2),
        "first_run_seconds": first["seconds"],
        "runs": runs,
        "median_seconds": med,
        "ratio": round(med["compiled"] / med["interpreted"], 3),
        "environment": {**environment(), **env_start},
    })
    spark.stop()


if __name__ == "__main__":
    main()
