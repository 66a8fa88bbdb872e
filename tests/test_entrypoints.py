"""The places users run the job: spark-submit, the CLI, the notebook, the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import jobdata

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

TINY = ["selection.max_docs=2", "curation.rounds=1", "curation.max_new_tokens=10",
        "curation.temperatures=[0.7]", "curation.top_ps=[0.9]"]


def test_config_show_prints_the_resolved_config_and_hash():
    out = subprocess.run([str(BIN / "cleancurate"), "config", "show", "--config", "paper", "--set", "curation.rounds=2"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    from cleancurate import config as C

    assert out.startswith(f"# config_hash: {C.load('paper', ['curation.rounds=2']).hash}")
    assert "rounds: 2" in out and "beam_size: 3" in out


def test_progress_line_of_a_resumed_run_says_where_it_resumes():
    from cleancurate.jobs.curate import ProgressPrinter

    printer = ProgressPrinter(quiet=True)
    fresh = printer.message({"event": "start", "run_id": "r1", "config_hash": "abc", "resume_after_round": -1}, 0.0)
    resumed = printer.message({"event": "start", "run_id": "r1", "config_hash": "abc", "resume_after_round": 1}, 0.0)
    assert fresh == "run r1 (config abc)"
    assert resumed == "run r1 (config abc): resuming after round 1"


def test_cli_errors_name_the_problem(tmp_path):
    bad = subprocess.run([str(BIN / "cleancurate"), "curate", "--config", "demo", "--set", "curation.rounds=-1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert "curation.rounds must be >= 1" in bad.stderr


@pytest.mark.spark
@pytest.mark.model
@pytest.mark.slow
def test_spark_submit_runs_the_job_and_writes_the_tables(spark, tmp_path):
    from cleancurate.session import delta_maven_coordinate

    src = jobdata.write_parquet(spark, str(tmp_path / "in.parquet"))
    out = tmp_path / "out"
    cmd = [str(BIN / "spark-submit"), "--master", "local[2]", "--packages", delta_maven_coordinate(),
           "--driver-memory", "2g", "--conf", "spark.sql.shuffle.partitions=1",
           "--conf", "spark.sql.adaptive.enabled=false", "--conf", "spark.databricks.delta.stats.collect=false",
           "--conf", "spark.databricks.delta.snapshotPartitions=2", "--conf", "spark.ui.enabled=false",
           "jobs/curate.py", "--config", "demo", "--input", src, "--output", str(out),
           "--set", "input.duplicate_ids=drop", "--set", "selection.fraction=1.0",
           *sum((["--set", s] for s in TINY), [])]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "tables in" in done.stdout
    curated = spark.read.format("delta").load(str(out / "curated"))
    mix = spark.read.format("delta").load(str(out / "mix"))
    screened = spark.read.format("delta").load(str(out / "quarantine")).where("stage = 'screen'")
    assert curated.count() == 2
    assert mix.count() + screened.count() == len(jobdata.GOOD)
    assert (out / "report" / "report.html").is_file()


@pytest.mark.spark
@pytest.mark.model
@pytest.mark.slow
def test_notebook_runs_headless_and_shows_the_report(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "curate.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    src = tmp_path / "in.parquet"  # six ordinary rows: the notebook's steps, not the sample's size, are under test
    pd.DataFrame(jobdata.GOOD, columns=["id", "query", "response"]).to_parquet(src, index=False)
    fast = ["spark.conf={'spark.sql.shuffle.partitions': '1', 'spark.sql.adaptive.enabled': 'false', "
            "'spark.databricks.delta.stats.collect': 'false'}"]  # tiny data: the test session's settings
    params.source += (f"\ninput_table = {str(src)!r}\noutput = {str(tmp_path / 'nb-out')!r}\n"
                      f"overrides = {TINY + ['selection.fraction=1.0'] + fast!r}\n")
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "report:" in text and (tmp_path / "nb-out" / "report" / "report.html").is_file()
