"""Peak memory of the driver, the JVM and the Python workers while scoring 1x and 10x the rows.

    .venv/bin/python -m bench.memory [--rows 24] [--factor 10] [--arrow-batch-rows 32]

Scores ``rows`` short sample rows (the shortest query+response pairs) through the
job's scorer UDF (``batch_udf(score.make_scorer, score.RETURN_TYPE, cfg, strip=False)``,
as the job scores round 0's originals: the LM's perplexity, the encoder's signals and
the harm head, so each worker holds the LM and the encoder), then the same rows
repeated ``factor`` times, in one local[2]
session with ``spark.sql.execution.arrow.maxRecordsPerBatch`` at the demo profile's
``runtime.arrow_batch_rows`` (as the job sets it). For each phase (warm-up, 1x,
Nx) every process's peak RSS is taken two ways: VmHWM from /proc/<pid>/status,
reset before the phase by writing 5 to /proc/<pid>/clear_refs, and a 50 ms RSS
sampler (covers processes that start mid-phase). Memory is flat when the
workers' and driver's peaks in the Nx phase match the 1x phase.

The brief's full size (200 rows x 10 = 2000 rows) takes an estimated 10+ minutes
on 2 shared CPU cores, so the default is 24 rows x 10 = 240 rows; the JSON says so.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile

from bench._common import (
    MODEL_SPEC, RssSampler, begin, emit, environment, hwm_mib, reset_hwm, rss_mib,
    sample_rows, timed,
)


def process_roles() -> dict[int, str]:
    """{pid: role} for this driver and its descendants: driver, jvm, pyspark-daemon, python-worker."""
    import psutil

    me = psutil.Process()
    roles = {me.pid: "driver"}
    try:
        kids = me.children(recursive=True)
    except psutil.Error:
        return roles
    jvms = set()
    for p in kids:
        try:
            if "java" in p.name():
                roles[p.pid] = "jvm"
                jvms.add(p.pid)
        except psutil.Error:
            continue
    for p in kids:
        if p.pid in roles:
            continue
        try:
            cmd = " ".join(p.cmdline())
            if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
                roles[p.pid] = "pyspark-daemon" if p.ppid() in jvms else "python-worker"
            else:
                roles[p.pid] = "other:" + p.name()
        except psutil.Error:
            continue
    return roles


def measure(phase_fn):
    """Run ``phase_fn`` with every process's peak memory reset and tracked; return (result, s, per-pid stats)."""
    before = process_roles()
    reset_ok = {pid: reset_hwm(pid) for pid in before}
    with RssSampler(process_roles, interval=0.05) as sampler:
        result, seconds = timed(phase_fn)
    stats = {}
    for pid, role in {**sampler.labels, **process_roles()}.items():
        hwm = hwm_mib(pid)
        stats[pid] = {
            "role": role,
            "sampled_peak_mib": sampler.peaks.get(pid),
            "vmhwm_mib": hwm if reset_ok.get(pid) else None,  # lifetime peak unless it was reset
            "rss_after_mib": rss_mib(pid),
        }
    return result, seconds, stats


def by_role(stats: dict) -> dict:
    """Peak per role: max over processes of that role (and the sum over workers)."""
    out: dict = collections.defaultdict(dict)
    for s in stats.values():
        role = s["role"]
        peak = max(v for v in (s["sampled_peak_mib"], s["vmhwm_mib"]) if v is not None) if (
            s["sampled_peak_mib"] is not None or s["vmhwm_mib"] is not None) else None
        if peak is None:
            continue
        r = out[role]
        r["count"] = r.get("count", 0) + 1
        r["max_peak_mib"] = max(r.get("max_peak_mib", 0.0), peak)
        r["sum_peak_mib"] = round(r.get("sum_peak_mib", 0.0) + peak, 1)
    return dict(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=24, help="base rows (the shortest valid sample rows)")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--arrow-batch-rows", type=int, default=None)
    args = ap.parse_args(argv)

    start = begin()
    load_log = os.path.join(tempfile.mkdtemp(prefix="bench-memory-"), "loads.tsv")
    os.environ["CLEANCURATE_LOAD_LOG"] = load_log

    from cleancurate.config import load
    from cleancurate.session import get_spark
    from cleancurate.udfs import batch_udf, score  # the job's scorer UDF is what this benchmark measures

    cfg = load("demo", ["model.device=cpu"])
    arrow_rows = args.arrow_batch_rows if args.arrow_batch_rows is not None else cfg.runtime.arrow_batch_rows
    valid = sample_rows()
    base = sorted(valid, key=lambda r: (len(r["query"]) + len(r["response"]), r["id"]))[: args.rows]
    data = [(r["id"], r["query"], r["response"]) for r in base]
    schema = "id string, query string, text string"

    spark, session_s = timed(get_spark, "local[2]", "bench-memory", {})
    if arrow_rows:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_rows))
    udf = batch_udf(score.make_scorer, score.RETURN_TYPE, cfg, strip=False)  # as the job builds score_original

    def score_rows(rows):
        df = spark.createDataFrame(rows, schema)
        out = df.select(udf("query", "text", "text").alias("p")).select("p.ppl", "p.error").collect()
        return len(out), sum(1 for r in out if r[1] is not None), df.rdd.getNumPartitions()

    phases = {}
    for name, rows in (("warmup", data[:4]), ("1x", data), (f"{args.factor}x", data * args.factor)):
        (n, errors, parts), secs, stats = measure(lambda rows=rows: score_rows(rows))
        phases[name] = {"rows": n, "partitions": parts, "errors": errors, "seconds": round(secs, 2),
                        "peak_by_role": by_role(stats),
                        "processes": {str(pid): s for pid, s in sorted(stats.items())}}
    spark.stop()

    one, many = phases["1x"]["peak_by_role"], phases[f"{args.factor}x"]["peak_by_role"]

    def growth(role):
        if role not in one or role not in many:
            return None
        return {"1x_max_peak_mib": one[role]["max_peak_mib"], "Nx_max_peak_mib": many[role]["max_peak_mib"],
                "delta_mib": round(many[role]["max_peak_mib"] - one[role]["max_peak_mib"], 1),
                "ratio": round(many[role]["max_peak_mib"] / one[role]["max_peak_mib"], 3)}

    flat = {role: growth(role) for role in ("driver", "python-worker", "jvm")}
    worker_ok = flat["python-worker"] is not None and flat["python-worker"]["ratio"] <= 1.10
    driver_ok = flat["driver"] is not None and flat["driver"]["ratio"] <= 1.10
    loads = []
    try:
        with open(load_log, encoding="utf-8") as fh:
            loads = [line.split("\t")[0] for line in fh if line.strip()]
    except OSError:
        pass
    emit({
        "benchmark": "memory",
        "date": __import__("datetime").date.today().isoformat(),
        "model": MODEL_SPEC,
        "inputs": {
            "base_rows": len(data), "factor": args.factor, "rows_Nx": len(data) * args.factor,
            "row_selection": "the shortest valid sample rows by len(query)+len(response)",
            "chars_per_row_min_max": [min(len(d[1]) + len(d[2]) for d in data), max(len(d[1]) + len(d[2]) for d in data)],
            "arrow_max_records_per_batch": arrow_rows, "spark_master": "local[2]",
            "scaled_down": len(data) * args.factor < 2000,
            "scaled_down_reason": (
                "200 rows x 10 = 2000 rows would take an estimated 10+ minutes on 2 shared CPU cores "
                "(~250 scored tokens/s per worker); scaled to the shortest rows" if len(data) * args.factor < 2000 else None),
        },
        "spark_session_start_s": round(session_s, 2),
        "phases": phases,
        "flat": flat,
        "flat_criterion": "Nx peak <= 1.10 x 1x peak for the driver and the Python workers",
        "memory_flat": bool(worker_ok and driver_ok),
        "model_loads": {"total": len(loads), "per_pid": dict(collections.Counter(loads))},
        "environment": {**environment(), **start},
    })


if __name__ == "__main__":
    main()
