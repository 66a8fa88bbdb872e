"""The job's scorer through the Spark pandas UDF vs the same batch function called in-process.

    .venv/bin/python -m bench.scoring [--rows 96] [--arrow-batch-rows 32] [--threads 1] [--no-single-partition]

Same rows, same configuration, one process (the driver) plus its local[2] Spark workers:

1. ``get_spark("local[2]", "bench", {})``; ``spark.sql.execution.arrow.maxRecordsPerBatch``
   set to the demo profile's ``runtime.arrow_batch_rows`` (32), as the job does.
2. ``udf = batch_udf(score.make_scorer, score.RETURN_TYPE, cfg, strip=False)`` with
   ``cfg = load("demo", ["model.device=cpu"])``, built once: the scorer UDF the job runs
   on round 0's originals (``CurationJob``'s ``score_original``; the sample rows are
   originals). Per row it computes the text rules, the LM's perplexity, the encoder's
   similarity, helpfulness and harm (the demo's harm head); no retention pass
   (``strip=False``: an original is scored as it is).
3. Warm-up: one small action over both partitions, so each Python worker loads
   its models, the LM and the encoder (a model-load log proves no load happens in the timed runs).
4. Timed: ``df.select(udf("query", "text", "text").alias("p")).select("p.ppl").collect()``
   over a DataFrame of the rows (the text is its own original; Spark's default 2 partitions ->
   2 workers, each with 1 torch thread, since Spark sets OMP_NUM_THREADS=1 in its workers).
5. Timed: the same on ``df.coalesce(1)``: one worker, so the same CPU resources as
   the in-process run (isolates Spark's own overhead).
6. Timed: the same batch function, ``score.make_scorer(cfg, strip=False)``, called in the
   driver on all the rows at once (torch threads ``--threads``).

``ratio = inprocess_seconds / spark_seconds`` (step 6 / step 4). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile

import pandas as pd  # module level: pandas_udf resolves the (string) annotations against module globals

from bench._common import (
    MODEL_SPEC, add_threads_option, begin, cpu_pressure, emit, environment, max_rel_diff,
    sample_rows, set_threads, timed, timed_cpu,
)


def _loads(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [(int(line.split("\t")[0]), line.split("\t")[2].strip()) for line in fh if line.strip()]
    except OSError:
        return []


def worker_info_udf():
    """pandas UDF reporting each worker's pid, torch threads and OMP_NUM_THREADS."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def info(s: pd.Series) -> pd.Series:
        import os as _os

        import torch

        return pd.Series([f"pid={_os.getpid()} torch_threads={torch.get_num_threads()} "
                          f"OMP_NUM_THREADS={_os.environ.get('OMP_NUM_THREADS')}"] * len(s))

    return info


def _padded_tokens(data, token_budget: int, arrow_rows: int) -> dict:
    """Padded tokens the forward passes see: all rows in one score_batch call vs Spark's Arrow batches.

    Spark hands each worker its partition in Arrow batches of ``arrow_rows`` rows, and
    score_batch length-sorts within one batch only, so smaller batches pad more.
    """
    from cleancurate.batching import plan_microbatches
    from cleancurate.models import embedded_lm_dir
    from cleancurate.engine.perplexity import encode_pairs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_lm_dir()))
    lengths = [len(ids) for ids, _ in encode_pairs(tok, [d[1] for d in data], [d[2] for d in data])]

    def padded(ls):
        return sum(len(b) * max(ls[i] for i in b) for b in plan_microbatches(ls, token_budget)) if ls else 0

    def chunks(ls, size):
        size = size or len(ls)
        return [ls[i:i + size] for i in range(0, len(ls), size)]

    half = (len(lengths) + 1) // 2  # createDataFrame splits the list into 2 contiguous partitions
    return {
        "inprocess_one_call": padded(lengths),
        "spark_1_partition": sum(padded(c) for c in chunks(lengths, arrow_rows)),
        "spark_2_partitions": sum(padded(c) for part in (lengths[:half], lengths[half:]) for c in chunks(part, arrow_rows)),
        "unpadded": sum(lengths),
    }


def _note(spark_s, single, inproc_s, threads, partitions, arrow_rows, pressure, padded) -> str:
    """One paragraph on what dominates the timings, from the measured numbers."""
    parts = [
        f"Model compute dominates both paths (the 135M-parameter LM's and the encoder's forward passes on CPU). "
        f"The default Spark run used {partitions} partitions = {partitions} Python workers with 1 torch thread each; "
        f"the in-process run used 1 process with {threads} torch thread(s)."
    ]
    if single is not None:
        over = single["seconds"] / inproc_s - 1.0
        parts.append(
            f"At equal resources (Spark coalesce(1): one worker, one thread) Spark took {single['seconds']:.1f} s vs "
            f"{inproc_s:.1f} s in-process ({over:+.0%}). Part of that is batching, not Spark: the scorer gets "
            f"Arrow batches of {arrow_rows} rows and length-sorts only within one, so the forward passes see "
            f"{padded['spark_1_partition']} padded LM tokens vs {padded['inprocess_one_call']} in one in-process call "
            f"({padded['spark_1_partition'] / padded['inprocess_one_call'] - 1:+.1%}); the rest is Spark's own cost "
            f"(JVM->Arrow->Python transfer, task scheduling) and run-to-run noise."
        )
    if single is not None and spark_s > single["seconds"]:
        parts.append(
            f"The 2-worker run ({spark_s:.1f} s) was slower than the 1-worker run: with another process holding "
            f"about one core, the two workers time-share the rest, and each streams its own copy of the weights "
            f"through the shared caches, so a second worker adds contention instead of throughput here."
        )
    if pressure is not None and pressure > 5:
        parts.append(
            f"Other processes competed for the 2 cores (CPU pressure avg60 {pressure:.0f}%), so how much of the "
            f"second core the 2-worker Spark run actually got varied; its timing is the noisiest."
        )
    return " ".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--arrow-batch-rows", type=int, default=None,
                    help="spark.sql.execution.arrow.maxRecordsPerBatch (default: demo runtime.arrow_batch_rows)")
    add_threads_option(ap, help="torch threads of the in-process run (default 1; 0 keeps torch's default)")
    ap.add_argument("--no-single-partition", action="store_true", help="skip the coalesce(1) Spark run")
    args = ap.parse_args(argv)

    start = begin()
    load_log = os.path.join(tempfile.mkdtemp(prefix="bench-scoring-"), "loads.tsv")
    os.environ["CLEANCURATE_LOAD_LOG"] = load_log  # inherited by the JVM and its Python workers

    from cleancurate.config import load
    from cleancurate.session import get_spark
    from cleancurate.udfs import batch_udf, score  # the job's scorer UDF is what this benchmark measures

    cfg = load("demo", ["model.device=cpu"])
    runtime = cfg.runtime
    arrow_rows = args.arrow_batch_rows if args.arrow_batch_rows is not None else runtime.arrow_batch_rows
    rows = sample_rows(args.rows)
    data = [(r["id"], r["query"], r["response"]) for r in rows]

    padded = _padded_tokens(data, runtime.token_budget, arrow_rows)

    spark, session_s = timed(get_spark, "local[2]", "bench", {})
    if arrow_rows:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_rows))
    udf = batch_udf(score.make_scorer, score.RETURN_TYPE, cfg, strip=False)  # as the job builds score_original
    schema = "id string, query string, text string"
    df = spark.createDataFrame(data, schema).cache()
    df.count()  # materialise the cached input so the timed runs measure scoring
    partitions = df.rdd.getNumPartitions()

    def ppl(frame):  # each row is its own original, as the job scores round 0
        return frame.select(udf("query", "text", "text").alias("p")).select("p.ppl").collect()

    # warm-up: 2 rows in each of 2 partitions, so both Python workers load their models
    warm = spark.createDataFrame(data[:4], schema).repartition(2)
    _, warm_s = timed(lambda: ppl(warm))
    workers = sorted({r[0] for r in warm.select(worker_info_udf()("id")).collect()})
    loads_after_warm = len(_loads(load_log))

    res, spark_s = timed(lambda: ppl(df))
    spark_ppl = [r[0] for r in res]
    loads_after_spark = len(_loads(load_log))

    single = None
    if not args.no_single_partition:
        one = df.coalesce(1)
        res1, spark1_s = timed(lambda: ppl(one))
        single = {"seconds": round(spark1_s, 3), "partitions": 1,
                  "max_rel_diff_ppl_vs_inprocess": None, "_ppl": [r[0] for r in res1]}
    loads_after_single = len(_loads(load_log))

    # in-process: the driver's own copies of the models, the UDF's batch function, same rows in one call
    set_threads(args.threads)
    fn, load_s = timed(score.make_scorer, cfg, False)
    queries = pd.Series([d[1] for d in data])
    texts = pd.Series([d[2] for d in data])
    fn(queries[:4], texts[:4], texts[:4])
    out, inproc_s, inproc_cpu = timed_cpu(fn, queries, texts, texts)
    inproc_ppl = out["ppl"].tolist()
    import torch

    inproc_threads = torch.get_num_threads()
    if single is not None:
        single["max_rel_diff_ppl_vs_inprocess"] = max_rel_diff(single.pop("_ppl"), inproc_ppl)
        single["ratio_inprocess_over_spark_1partition"] = round(inproc_s / single["seconds"], 3)

    loads = _loads(load_log)
    per_pid = collections.Counter(pid for pid, _ in loads)
    diff = max_rel_diff(spark_ppl, inproc_ppl)
    ratio = inproc_s / spark_s
    spark.stop()
    emit({
        "benchmark": "scoring",
        "date": __import__("datetime").date.today().isoformat(),
        "model": MODEL_SPEC,
        "inputs": {
            "rows": len(rows), "spark_master": "local[2]", "df_partitions": partitions,
            "arrow_max_records_per_batch": arrow_rows, "token_budget": runtime.token_budget,
            "udf": "batch_udf(score.make_scorer, score.RETURN_TYPE, load('demo'), strip=False)",
            "padded_tokens": padded,
        },
        "spark_session_start_s": round(session_s, 3),
        "warmup_s": round(warm_s, 3),
        "spark": {"seconds": round(spark_s, 3), "partitions": partitions, "workers": workers},
        "spark_single_partition": single,
        "inprocess": {"seconds": round(inproc_s, 3), "cpu_s": round(inproc_cpu, 3),
                      "torch_threads": inproc_threads, "model_load_s": round(load_s, 3)},
        "ratio_inprocess_over_spark": round(ratio, 3),
        "target_ratio": 0.9,
        "max_rel_diff_ppl": diff,
        "ppl_match_lt_1e-4": diff < 1e-4,
        "model_loads": {
            "total": len(loads), "per_pid": dict(per_pid), "after_warmup": loads_after_warm,
            "during_timed_spark_runs": loads_after_single - loads_after_warm,
            "during_default_spark_run": loads_after_spark - loads_after_warm,
        },
        "note": _note(spark_s, single, inproc_s, inproc_threads, partitions, arrow_rows, cpu_pressure(), padded),
        "environment": {**environment(), **start},
    })


if __name__ == "__main__":
    main()
