"""The job tests' shared run: one fake-UDF run serves two modules, as each job run costs 20-40 s of
Spark and Delta work on 2 cores (docs/tests.md)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def tracked_minimize(spark, tmp_path_factory):
    """The fakes' minimize run (``tests/jobs/test_curation_fakes.py``) stopped after round 1, then resumed
    from its tables alone and published with its report, tracked in MLflow all along: a sqlite store in a
    temp folder (``report.mlflow_tracking_uri``), the experiment ``curation-tests`` keeping its artifacts
    beside it. The ranking and accounting test reads its tables, the MLflow test (``test_tracking.py``) its
    MLflow run; what the stopped run left in MLflow is recorded before the resume."""
    from mlflow import MlflowClient

    from cleancurate.jobs.curation.stages import CurationJob, publish
    from tests.jobs.test_curation_fakes import fake_config, fake_udfs, write_input

    folder = tmp_path_factory.mktemp("tracked-minimize")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("curation-tests", artifact_location=str(folder / "artifacts"))
    out = str(folder / "out")
    cfg = fake_config(write_input(spark, str(folder / "in.parquet")), out).with_overrides(
        ["report.enabled=true", "report.mlflow_experiment=curation-tests", f"report.mlflow_tracking_uri={uri}"])
    stopped = CurationJob(cfg, spark=spark, udfs=fake_udfs(), stop_after_round=1).run()
    at_stop = client.get_run(stopped.mlflow_run_id) if stopped.mlflow_run_id else None
    stopped_steps = [m.step for m in client.get_metric_history(stopped.mlflow_run_id, "docs_active")] if at_stop else []
    stopped_runs_row = spark.read.format("delta").load(f"{out}/runs").collect()[0].asDict()
    curated_at_stop = (folder / "out" / "curated").exists()
    events = []
    job = CurationJob(cfg, spark=spark, udfs=fake_udfs(), progress=events.append)
    res = publish(job, job.run())
    tables = {name: spark.read.format("delta").load(f"{out}/{name}").toPandas()
              for name in ("docs", "rounds", "curated", "quarantine", "mix", "runs", "round_stats")}
    return SimpleNamespace(cfg=cfg, uri=uri, client=client, stopped=stopped, at_stop=at_stop,
                           stopped_steps=stopped_steps, stopped_runs_row=stopped_runs_row,
                           curated_at_stop=curated_at_stop, res=res, events=events, tables=tables)
