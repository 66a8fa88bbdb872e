"""The test JVM's options: the quick JIT compiler alone, against the full JIT with a larger code cache.

    .venv/bin/python -m bench.jvm_options [--runs 3]

The job with the test suite's fake UDFs (``tests/jobs/test_curation_fakes.py``: no model) on
its 17-row corpus, objective maximize, two rounds, as in ``bench.spark_overhead``, with the
test session's settings (``tests/jobdata.py``: ``SMALL_DATA_CONF``) but for the options
compared. JVM options take effect only when a JVM starts, so each option set runs in a
fresh process with a fresh local[2] session: one warm-up run (reported apart), then
``--runs`` timed runs.

Option sets, in the order they run:

- ``quick_jit``: ``-XX:TieredStopAtLevel=1`` (the quick compiler only, its default 48 MB
  code cache) and the local session's 2 Delta snapshot partitions: the suite's settings before.
- ``full_jit``: the JVM's default tiered JIT with ``-XX:ReservedCodeCacheSize=256m``.
- ``full_jit_one_snapshot_partition``: that, and ``spark.databricks.delta.snapshotPartitions=1``:
  the suite's settings now.

``ratio`` is each set's median run time over ``quick_jit``'s; below 1 is faster. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench._common import begin, emit, environment

OPTION_SETS = {
    "quick_jit": {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
                  "spark.databricks.delta.snapshotPartitions": "2"},
    "full_jit": {"spark.driver.extraJavaOptions": "-XX:ReservedCodeCacheSize=256m",
                 "spark.databricks.delta.snapshotPartitions": "2"},
    "full_jit_one_snapshot_partition": {"spark.driver.extraJavaOptions": "-XX:ReservedCodeCacheSize=256m",
                                        "spark.databricks.delta.snapshotPartitions": "1"},
}


def child(name: str, runs: int) -> dict:
    """One option set in this process: session start, a warm-up run, ``runs`` timed runs."""
    from tests import jobdata  # tests/ is a package: python -m from the repository root finds it
    from tests.jobs import test_curation_fakes as fakes

    from bench.spark_overhead import one_run
    from cleancurate.session import get_spark

    conf = {**jobdata.SMALL_DATA_CONF, **OPTION_SETS[name]}
    t0 = time.perf_counter()
    spark = get_spark("local[2]", f"bench-jvm-{name}", conf)
    session_s = time.perf_counter() - t0
    first = one_run(spark, fakes, {})
    timed = [one_run(spark, fakes, {}) for _ in range(runs)]
    spark.stop()
    return {"settings": conf, "session_start_seconds": round(session_s, 2), "first_run_seconds": first["seconds"],
            "runs": timed, "median_seconds": statistics.median(r["seconds"] for r in timed)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per option set after one warm-up (default 3)")
    ap.add_argument("--child", choices=list(OPTION_SETS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("JVM-OPTIONS-RESULT " + json.dumps(child(args.child, args.runs)))
        return
    env_start = begin()
    results = {}
    for name in OPTION_SETS:
        out = subprocess.run([sys.executable, "-m", "bench.jvm_options", "--child", name, "--runs", str(args.runs)],
                             capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("JVM-OPTIONS-RESULT "))
        results[name] = json.loads(line.split(" ", 1)[1])
    base = results["quick_jit"]["median_seconds"]
    emit({
        "benchmark": "jvm_options",
        "inputs": {"rows": 17, "objective": "maximize", "rounds": 2, "udfs": "tests' fakes (no model)",
                   "master": "local[2]", "runs_per_set": args.runs, "option_sets": OPTION_SETS},
        "results": results,
        "ratio": {name: round(r["median_seconds"] / base, 3) for name, r in results.items()},
        "environment": {**environment(), **env_start},
    })


if __name__ == "__main__":
    main()
