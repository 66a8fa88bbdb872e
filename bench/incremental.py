"""Preparation throughput against the encoder, and what an increment costs against a full run.

    .venv/bin/python -m bench.incremental [--rows 2000,20000] [--fraction F] [--encoder-rows 2000]

The corpus is real text: every exchange of the hh-rlhf red-team dialogues in
``data/real/hh-rlhf-multiturn`` (each human turn of a dialogue's history with the
assistant turn after it, and the last human turn with its chosen answer: 5,081 exchanges
from 1,645 dialogues), taken in order and repeated to ``--rows`` rows with new ids. Every
row's query and response end in ``" (#<row number>)"``, so no query and no response
repeats anywhere in the corpus (the encoder's per-call de-duplication saves nothing). It
is written as a Delta table with its Change Data Feed on (``ALTER TABLE ... SET
TBLPROPERTIES (delta.enableChangeDataFeed = true)``).

For each size, in one process and one ``local[2]`` Spark session (the demo profile's
``spark.master``):

1. **Full run**: the demo profile (``cleancurate.config.load("demo", overrides)``) on that
   table with a small selection fraction (``--fraction``; default ``15 / rows``, about 15
   documents, because the embedded 135M model generates on CPU) into a fresh output
   folder, through :class:`~cleancurate.jobs.curation.stages.CurationJob`. Seconds per
   stage from the progress events (``plan``, ``prepare``, ``round_0`` ..., ``finalize``,
   ``total``), and preparation rows/s = input rows / prepare seconds. Preparation is
   split further by timing, in this process only, the functions it calls (the wrappers
   are installed by this benchmark; the job's code is unchanged): the work set (keys,
   fingerprints, anti-join with the ledger, ``localCheckpoint``), the validation
   quarantine's commit, the ``docs`` commit (where the screen's UDF runs over every
   valid row), the screen's quarantine, the counts. Every Delta commit of the run is
   also timed, per table and phase.
2. **Encoder in process**: right after the full run, the harm check the safety screen
   runs (``harm.backend: head``), loaded the way ``udfs/screen.py`` loads it
   (``cleancurate.models.load(cfg, "encoder")``, then
   ``cleancurate.engine.harm.check_batch(cfg.harm, cfg.runtime, encoder, None, queries,
   responses)``), on the first ``--encoder-rows`` rows of the corpus, in calls of
   ``runtime.arrow_batch_rows`` rows (what one Arrow batch hands a Spark worker), after
   a warm-up call. ``--encoder-threads`` torch threads (default: the Spark master's
   cores, 2, i.e. the cores the job's two Python workers use; ``1,2`` measures both).
   ``ratio = prep_rows_per_s / encoder_rows_per_s`` at the threads of the master's
   cores (target >= 0.8 at 20,000 rows).
3. **Increment** (largest size only): ``--new-pct`` (1 %) new rows appended,
   ``--changed-pct`` (0.5 %) rows' response changed (``DeltaTable.update``) and
   ``--deleted-pct`` (0.5 %) rows deleted (``DeltaTable.delete``), changed and deleted
   rows drawn by a seeded RNG, disjoint; then ``CurationJob(cfg, incremental=True)`` on
   the same output. Its plan counts (the ``planned`` event), stage seconds and
   ``increment_seconds / full_run_seconds`` (target <= 0.10). Afterwards the output is
   checked against the source: mix rows = live source rows - quarantined at validation
   - quarantined by the screen (``accounting_ok``), no deleted id left in ``docs`` or
   ``mix``, every changed id's ``docs`` row holds the new response, every new id is in
   ``docs`` or ``quarantine``.

Machine load: the seconds are wall seconds of a shared machine; the ratios compare figures
measured in the same process minutes apart, which is the most this allows. The JSON records
the load average and Linux CPU pressure at the start and the end, and a view that load moves
less: the CPU seconds this process's descendants used during preparation (Spark's Python
workers and the JVM, from ``/proc``; workers that exit before ``prepared`` are missed), per
input row, beside the in-process check's CPU seconds per row (``prep_worker_cpu_ms_per_row``,
``prep_jvm_cpu_ms_per_row``, ``encoder_cpu_ms_per_row``). ``inputs.code`` names the commit
the job's code was read from (and any job file that differed from it at the start).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench._common import begin, cpu_pressure, emit, environment

SUFFIX = " (#{})"


# ------------------------------------------------------------------ corpus
def exchanges() -> list[tuple[str, str, str]]:
    """(dialogue id, query, response) of every exchange of the hh-rlhf dialogues, in file order."""
    from bench.real_data import HH, _jsonl_gz

    out = []
    for r in _jsonl_gz(HH):
        h = r["history"]
        for a, b in zip(h, h[1:]):
            if a["role"] == "human" and b["role"] == "assistant":
                out.append((r["id"], a["text"], b["text"]))
        out.append((r["id"], r["query"], r["response_chosen"]))
    return out


def corpus_rows(ex: list, start: int, n: int) -> list[tuple[str, str, str]]:
    """Rows ``start .. start+n-1``: id ``hh<row>``, the exchange ``row % len(ex)``, both texts suffixed with the row."""
    rows = []
    for i in range(start, start + n):
        _, q, r = ex[i % len(ex)]
        rows.append((f"hh{i:07d}", q + SUFFIX.format(i), r + SUFFIX.format(i)))
    return rows


def write_corpus(spark, path: str, rows: list) -> dict:
    """Write ``rows`` as a Delta table at ``path`` and turn its Change Data Feed on."""
    t0 = time.perf_counter()
    df = spark.createDataFrame(rows, "id string, query string, response string").repartition(4)
    df.write.format("delta").mode("overwrite").save(path)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    return {"seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------ timing the job's parts (this process only)
def descendant_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (kind, CPU seconds so far) of this process's descendants: the JVM and Spark's Python workers."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, info = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        pid = int(d)
        parent[pid] = int(fields[1])
        kind = "jvm" if "java" in cmd.split(" ")[0] else "python_worker" if "pyspark.daemon" in cmd else "other"
        info[pid] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    me, out = os.getpid(), {}
    for pid, (kind, cpu) in info.items():
        p, seen = parent.get(pid), 0
        while p and p != me and seen < 64:
            p, seen = parent.get(p), seen + 1
        if p == me:
            out[pid] = (kind, cpu)
    return out


def cpu_between(before: dict, after: dict) -> dict:
    """CPU seconds each kind of descendant used between two :func:`descendant_cpu` snapshots (processes alive at the end)."""
    out: dict[str, float] = defaultdict(float)
    for pid, (kind, cpu) in after.items():
        out[kind] += cpu - before.get(pid, (kind, 0.0))[1]
    return {k: round(v, 1) for k, v in out.items()} | {"python_workers_alive_at_end": sum(
        1 for k, _ in after.values() if k == "python_worker")}


class Probe:
    """Seconds of the job's functions, by phase, collected through wrappers installed once per process."""

    def __init__(self, load_log: str | None = None):
        self.load_log = load_log
        self.prepare_loads: list[str] = []
        self.prepare_cpu: dict = {}
        self._loads_at_plan = 0
        self.phase = "start"
        self.sections: dict[str, float] = defaultdict(float)
        self.writes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.commits: dict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.phase = "start"
        self.prepare_loads = []
        self.prepare_cpu = {}
        self.sections.clear()
        self.writes.clear()
        self.commits.clear()

    def add(self, label: str, seconds: float) -> None:
        self.sections[label] += seconds

    def progress(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self.phase = "plan"
        elif kind == "planned":
            self.phase = "prepare"
            self._loads_at_plan = len(_load_lines(self.load_log))
            self._cpu_at_plan = descendant_cpu()
            self._driver_cpu_at_plan = time.process_time()
        elif kind == "prepared":
            self.phase = "rounds"
            self.prepare_loads = _load_lines(self.load_log)[self._loads_at_plan:]
            self.prepare_cpu = cpu_between(self._cpu_at_plan, descendant_cpu())
            self.prepare_cpu["driver_python"] = round(time.process_time() - self._driver_cpu_at_plan, 1)
        elif kind == "round_start":
            self.phase = f"round_{event['round']}"
        elif kind == "step" and event["step"].startswith("round_"):
            self.phase = "after_" + event["step"].split(".")[0]
        elif kind == "step" and event["step"] == "finalize":
            self.phase = "after_finalize"

    def install(self) -> None:
        from cleancurate.jobs.curation import context, prepare, stages

        probe = self

        def timed_fn(module, name, label):
            orig = getattr(module, name)

            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return orig(*args, **kwargs)
                finally:
                    probe.add(label, time.perf_counter() - t0)

            setattr(module, name, wrapper)

        timed_fn(stages, "prepare", "prepare_fn")  # stages imported prepare() by name
        timed_fn(prepare, "quarantine", "validate_quarantine_commit")  # prepare()'s one quarantine() call
        timed_fn(prepare, "quarantine_screened", "screen_quarantine")
        timed_fn(prepare, "docs_counts", "docs_counts")

        orig_write = context.RunContext.write

        def write(self_ctx, df, name, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return orig_write(self_ctx, df, name, *args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                beat = threading.current_thread().name == "cleancurate-heartbeat"
                label = "heartbeat:" + name if beat else name  # the heartbeat thread's commits overlap the work
                probe.writes[probe.phase][label] += dt
                probe.commits[probe.phase] += 1
                if probe.phase == "prepare" and name == "docs" and not beat:
                    probe.add("docs_commit_with_screen", dt)

        context.RunContext.write = write


def r2(x):
    return None if x is None else round(float(x), 2)


def run_job(cfg, spark, probe: Probe, incremental: bool) -> dict:
    """One ``CurationJob.run()``: events, stage seconds, the prepare split, commits per phase."""
    from cleancurate.jobs.curation.stages import CurationJob

    events: list[dict] = []
    probe.reset()

    def progress(event):
        events.append({k: v for k, v in event.items() if k != "run_id"})
        probe.progress(event)

    t0 = time.perf_counter()
    job = CurationJob(cfg, spark=spark, progress=progress, incremental=incremental)
    result = job.run()
    wall = time.perf_counter() - t0
    by = {e["event"]: e for e in events}
    steps = {e["step"]: r2(e["seconds"]) for e in events if e["event"] == "step"}
    stages_s = {"plan": r2(job.timings.get("plan")), "prepare": r2(job.timings.get("prepare"))}
    for r in range(cfg.curation.rounds + 1):
        if f"round_{r}" in job.timings:
            stages_s[f"round_{r}"] = r2(job.timings[f"round_{r}"])
    stages_s["finalize"] = r2(job.timings.get("finalize"))
    stages_s["total"] = r2(by.get("complete", {}).get("seconds"))
    stages_s["wall"] = r2(wall)
    prep = by.get("prepared", {})
    sec = probe.sections
    known = ("validate_quarantine_commit", "docs_commit_with_screen", "screen_quarantine", "docs_counts")
    split = {
        "work_set_and_validate_plan": r2(job.timings.get("prepare", 0) - sec.get("prepare_fn", 0)),
        **{k: r2(sec.get(k, 0.0)) for k in known},
        "rest_of_prepare_fn": r2(sec.get("prepare_fn", 0) - sum(sec.get(k, 0.0) for k in known)),
    }
    return {
        "result": result,
        "stages_seconds": stages_s,
        "steps_seconds": steps,
        "prepared": {k: v for k, v in prep.items() if k not in ("event", "quarantined_by_stage")},
        "planned": {k: v for k, v in by.get("planned", {}).items() if k != "event"},
        "prepare_split_seconds": split,
        "commits_per_phase": dict(probe.commits),
        "model_loads_during_prepare": [line.split("\t")[:2] for line in probe.prepare_loads],
        "prepare_cpu_seconds": dict(probe.prepare_cpu),
        "commit_seconds_per_phase": {ph: {t: r2(s) for t, s in tabs.items()} for ph, tabs in probe.writes.items()},
        "events": [e["event"] if e["event"] != "step" else f"step:{e['step']}" for e in events],
    }


# ------------------------------------------------------------------ the encoder in process
def encoder_rate(cfg, rows: list, threads: int) -> dict:
    """rows/s of the screen's harm check (head backend) in this process, in Arrow-batch-sized calls."""
    import torch

    from cleancurate.engine.harm import backend, check_batch
    from cleancurate.models import load

    assert backend(cfg.harm) == "head", f"harm backend is {backend(cfg.harm)!r}, this measures the head"
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        enc = load(cfg, "encoder")
        load_s = time.perf_counter() - t0
        batch = int(cfg.runtime.arrow_batch_rows or 10_000)
        qs, rs = [r[1] for r in rows], [r[2] for r in rows]
        check_batch(cfg.harm, cfg.runtime, enc, None, qs[:batch], rs[:batch])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        errors = 0
        for i in range(0, len(rows), batch):
            out = check_batch(cfg.harm, cfg.runtime, enc, None, qs[i:i + batch], rs[i:i + batch])
            errors += int(out["error"].notna().sum())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(old)
    return {"threads": threads, "rows": len(rows), "batch_rows": batch, "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2), "rows_per_s": round(len(rows) / wall, 1), "row_errors": errors,
            "load_seconds_first_call": round(load_s, 2)}


# ------------------------------------------------------------------ the increment
def change_source(spark, path: str, ex: list, n: int, pct: dict, seed: int) -> dict:
    """Append, update and delete rows of the Delta source with DML; return the ids touched."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    rng = random.Random(seed)
    n_new, n_changed, n_deleted = (max(1, round(n * pct[k] / 100)) for k in ("new", "changed", "deleted"))
    picked = rng.sample(range(n), n_changed + n_deleted)
    changed = [f"hh{i:07d}" for i in picked[:n_changed]]
    deleted = [f"hh{i:07d}" for i in picked[n_changed:]]
    new_rows = corpus_rows(ex, n, n_new)
    t = {}
    t0 = time.perf_counter()
    spark.createDataFrame(new_rows, "id string, query string, response string").write.format("delta") \
        .mode("append").save(path)
    t["append"] = time.perf_counter() - t0
    table = DeltaTable.forPath(spark, path)
    t0 = time.perf_counter()
    table.update(F.col("id").isin(changed), {"response": F.concat(F.col("response"), F.lit(" [edited]"))})
    t["update"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table.delete(F.col("id").isin(deleted))
    t["delete"] = time.perf_counter() - t0
    version = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").collect()[0]["version"]
    return {"new": [r[0] for r in new_rows], "changed": changed, "deleted": deleted,
            "counts": {"new": n_new, "changed": n_changed, "deleted": n_deleted},
            "dml_seconds": {k: round(v, 2) for k, v in t.items()}, "source_version": int(version)}


def check_output(spark, cfg, run_id: str, src_path: str, touched: dict | None) -> dict:
    """The output against the live source: mix = live - quarantined at validation and screen; DML reflected."""
    from pyspark.sql import functions as F

    from cleancurate.tables import TableStore

    store = TableStore(spark, cfg.output)
    read = lambda name: store.read(name).where(F.col("run_id") == run_id)  # noqa: E731
    live = spark.read.format("delta").load(src_path)
    live_rows = live.count()
    q = {r.stage: int(r["count"]) for r in read("quarantine").groupBy("stage").count().collect()}
    mix = read("mix")
    mix_rows = mix.count()
    expected = live_rows - q.get("validate", 0) - q.get("screen", 0)
    out = {"live_source_rows": live_rows, "mix_rows": mix_rows, "quarantined_by_stage": q,
           "expected_mix_rows": expected, "accounting_ok": mix_rows == expected,
           "mix_ids_distinct": mix.select("doc_id").distinct().count() == mix_rows,
           "mix_ids_not_in_source": mix.join(live.select(F.col("id").alias("doc_id")), "doc_id", "left_anti").count()}
    if touched:
        docs = read("docs")
        gone = spark.createDataFrame([(i,) for i in touched["deleted"]], "doc_id string")
        changed = spark.createDataFrame([(i,) for i in touched["changed"]], "doc_id string")
        new = spark.createDataFrame([(i,) for i in touched["new"]], "doc_id string")
        out["deleted_ids_left_in_docs_or_mix"] = (docs.join(gone, "doc_id").count()
                                                  + mix.join(gone, "doc_id").count())
        ch_docs = docs.join(changed, "doc_id")
        out["changed_ids_in_docs"] = ch_docs.count()
        out["changed_ids_with_old_response_in_docs"] = ch_docs.where(~F.col("response").endswith(" [edited]")).count()
        held = docs.select("doc_id").unionByName(read("quarantine").select("doc_id"))
        out["new_ids_missing_from_docs_and_quarantine"] = new.join(held, "doc_id", "left_anti").count()
        out["increment_dml_reflected"] = (out["deleted_ids_left_in_docs_or_mix"] == 0
                                          and out["changed_ids_with_old_response_in_docs"] == 0
                                          and out["new_ids_missing_from_docs_and_quarantine"] == 0)
    return out


def code_version() -> dict:
    """The commit the job's code was read from, and whether its files differed from it (driver imports happen at start)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    dirty = git("status", "--porcelain", "--", "jobs", "cleancurate", "udfs", "conf")
    return {"commit": git("rev-parse", "HEAD"), "job_code_modified": [line[3:] for line in (dirty or "").splitlines()]}


def load_snapshot() -> dict:
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "cpu_pressure_some_avg60_pct": cpu_pressure()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="2000,20000", help="corpus sizes, comma-separated (default 2000,20000)")
    ap.add_argument("--fraction", type=float, default=None,
                    help="selection.fraction for every size (default 15 / rows: about 15 documents)")
    ap.add_argument("--encoder-rows", type=int, default=2000, help="rows of the in-process encoder run (default 2000)")
    ap.add_argument("--encoder-threads", default=None,
                    help="torch threads of the encoder run, comma-separated (default: the master's cores); "
                         "the ratio uses the master's cores when measured, else the last")
    ap.add_argument("--new-pct", type=float, default=1.0)
    ap.add_argument("--changed-pct", type=float, default=0.5)
    ap.add_argument("--deleted-pct", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=7, help="RNG seed of the changed and deleted rows")
    ap.add_argument("--no-increment", action="store_true", help="full runs only")
    ap.add_argument("--partial", default=None,
                    help="also write the JSON measured so far to this file after each size (stdout gets it at the end)")
    ap.add_argument("--workdir", default=None, help="folder for the corpora and outputs (default: a new temp folder)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.rows.split(",") if s.strip()]

    env_start = begin()
    version = code_version()
    load_log = os.path.join(tempfile.mkdtemp(prefix="bench-incremental-log-"), "loads.tsv")
    os.environ["CLEANCURATE_LOAD_LOG"] = load_log  # inherited by the JVM and its Python workers
    t_all = time.perf_counter()

    from cleancurate import config as config_mod
    from cleancurate.session import get_spark

    probe_cfg = config_mod.load("demo")
    master = probe_cfg.spark.master
    master_cores = os.cpu_count() if master in ("local[*]", "local") else int(master.split("[")[1].rstrip("]"))
    enc_threads = ([int(t) for t in args.encoder_threads.split(",")] if args.encoder_threads else [master_cores])
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-incremental-"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    spark = get_spark(master, probe_cfg.spark.app_name, probe_cfg.spark.conf)
    session_s = time.perf_counter() - t0
    probe = Probe(load_log)
    probe.install()
    ex = exchanges()

    per_size = {}
    increment = None

    def result() -> dict:
        return {
            "benchmark": "incremental",
            "inputs": {"sizes": sizes, "profile": "demo",
                       "fraction": {k: v["fraction"] for k, v in per_size.items()},
                       "corpus": "every exchange of data/real/hh-rlhf-multiturn (history pairs + last query with "
                                 f"response_chosen): {len(ex)} exchanges, repeated with new ids, each text suffixed "
                                 "' (#<row>)'",
                       "cores": os.cpu_count(), "spark_master": master, "master_cores": master_cores,
                       "encoder_rows": args.encoder_rows, "encoder_threads": enc_threads,
                       "harm_backend": probe_cfg.harm.backend, "encoder": probe_cfg.metrics.embedder,
                       "arrow_batch_rows": probe_cfg.runtime.arrow_batch_rows, "workdir": str(work),
                       "same_process": True, "code": version},
            "session_start_seconds": round(session_s, 2),
            "sizes": per_size,
            "increment": increment,
            "targets": {"ratio_prep_to_encoder_at_20000": ">= 0.8", "increment_to_full_run": "<= 0.10"},
            "seconds_total": round(time.perf_counter() - t_all, 1),
            "environment": {**environment(), **env_start},
        }

    def checkpoint() -> None:  # what is measured so far, in case the process does not live to print it
        if args.partial:
            import json

            Path(args.partial).write_text(json.dumps(result(), indent=2, default=str) + "\n", encoding="utf-8")

    for n in sizes:
        fraction = args.fraction if args.fraction is not None else round(15 / n, 6)
        src = str(work / f"corpus-{n}")
        out_path = str(work / f"out-{n}")
        rows = corpus_rows(ex, 0, n)
        distinct = {"queries": len({r[1] for r in rows}), "responses": len({r[2] for r in rows})}
        written = write_corpus(spark, src, rows)
        cfg = config_mod.load("demo", [f"input.path={src}", f"output.path={out_path}",
                                       f"selection.fraction={_decimal(fraction)}"])
        loads_before = _loads(load_log)
        full = run_job(cfg, spark, probe, incremental=False)
        loads_full = _loads(load_log) - loads_before
        load_after_full = load_snapshot()
        encs = [encoder_rate(cfg, rows[:args.encoder_rows], t) for t in enc_threads]
        enc = next((e for e in encs if e["threads"] == master_cores), encs[-1])
        input_rows = full["prepared"].get("input_rows", n)
        prep_rate = input_rows / full["stages_seconds"]["prepare"]
        check = check_output(spark, cfg, full["result"].run_id, src, None)
        per_size[str(n)] = {
            "rows": n, "fraction": fraction, "corpus_write_seconds": written["seconds"],
            "distinct_texts": distinct, "output": out_path,
            "full_run": {k: v for k, v in full.items() if k != "result"},
            "model_loads_in_workers": loads_full,
            "prep_rows_per_s": round(prep_rate, 1),
            "prep_valid_rows_per_s": round(full["prepared"].get("valid_rows", 0) / full["stages_seconds"]["prepare"], 1),
            "encoder": encs,
            "encoder_rows_per_s": enc["rows_per_s"],
            "ratio_prep_to_encoder": round(prep_rate / enc["rows_per_s"], 3),
            "ratio_threads": enc["threads"],
            # load-independent view: CPU seconds per row, Spark's Python workers in prepare vs the in-process check
            "prep_worker_cpu_ms_per_row": _per_row_ms(full["prepare_cpu_seconds"].get("python_worker"), input_rows),
            "prep_jvm_cpu_ms_per_row": _per_row_ms(full["prepare_cpu_seconds"].get("jvm"), input_rows),
            "encoder_cpu_ms_per_row": {e["threads"]: _per_row_ms(e["cpu_seconds"], e["rows"]) for e in encs},
            "check": check,
            "load_after_full_run": load_after_full,
        }
        checkpoint()
        if n == max(sizes) and not args.no_increment:
            pct = {"new": args.new_pct, "changed": args.changed_pct, "deleted": args.deleted_pct}
            touched = change_source(spark, src, ex, n, pct, args.seed)
            inc = run_job(cfg, spark, probe, incremental=True)
            checked = check_output(spark, cfg, inc["result"].run_id, src, touched)
            full_total = full["stages_seconds"]["total"]
            increment = {
                "rows": n, "pct": pct, "counts": touched["counts"], "dml_seconds": touched["dml_seconds"],
                "source_version": touched["source_version"],
                "plan": inc["planned"], "prepared": inc["prepared"],
                "stages_seconds": inc["stages_seconds"], "steps_seconds": inc["steps_seconds"],
                "prepare_split_seconds": inc["prepare_split_seconds"],
                "commits_per_phase": inc["commits_per_phase"],
                "model_loads_during_prepare": inc["model_loads_during_prepare"],
                "prepare_cpu_seconds": inc["prepare_cpu_seconds"],
                "commit_seconds_per_phase": inc["commit_seconds_per_phase"],
                "events": inc["events"],
                "increment_seconds": inc["stages_seconds"]["total"],
                "full_run_seconds": full_total,
                "ratio_to_full_run": round(inc["stages_seconds"]["total"] / full_total, 4),
                "check": checked,
                "accounting_ok": checked["accounting_ok"],
            }
            checkpoint()
    emit(result())
    spark.stop()


def _per_row_ms(seconds, rows) -> float | None:
    return round(1000 * seconds / rows, 2) if seconds is not None and rows else None


def _decimal(x: float) -> str:
    """``x`` without an exponent: the config's override parser reads ``1e-05`` as text, not a number."""
    return f"{x:.12f}".rstrip("0").rstrip(".") or "0"


def _load_lines(log: str | None) -> list[str]:
    """Lines of the model-load log (pid, spec, device), one per model load in any process."""
    try:
        with open(log, encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh if line.strip()]
    except (OSError, TypeError):
        return []


def _loads(log: str) -> int:
    return len(_load_lines(log))


if __name__ == "__main__":
    main()
