"""MLflow tracking of curation runs, against real MLflow: a sqlite tracking store in a temp folder,
read back with ``MlflowClient``. The job runs with the fake UDFs (no model).

* a run stopped after round 0 and resumed logs into one MLflow run: params, tags, per-round and
  final metrics, the report and config as artifacts, its id in ``runs``;
* an unreachable tracking server is a warning, and the curation completes;
* ``report.mlflow`` auto without a tracking URI imports nothing; true without MLflow is an error.
"""

from __future__ import annotations

import sys

import pytest

from tests.jobs.test_curation_fakes import fake_config, fake_udfs, write_input


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A sqlite tracking store in the test's folder; the working directory moves there too, since a
    sqlite store keeps its artifacts under ``./mlruns`` (else they land in the repository)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def runs_row(spark, out: str):
    return spark.read.format("delta").load(f"{out}/runs").collect()[0]


@pytest.mark.spark
def test_a_resumed_run_logs_params_metrics_and_report_into_one_mlflow_run(spark, tmp_path, store):
    from mlflow import MlflowClient

    from cleancurate.jobs.curation.stages import CurationJob, publish

    out = str(tmp_path / "out")
    cfg = fake_config(write_input(spark, str(tmp_path / "in.parquet")), out).with_overrides(
        ["report.mlflow_experiment=curation-tests", "report.enabled=true", "curation.rounds=1"])  # round 0, round 1
    stopped = CurationJob(cfg, spark=spark, udfs=fake_udfs(), stop_after_round=0).run()
    assert not stopped.complete and stopped.mlflow_run_id
    client = MlflowClient(store)
    first = client.get_run(stopped.mlflow_run_id)
    assert first.info.status == "KILLED" and runs_row(spark, out).mlflow_run_id == stopped.mlflow_run_id
    assert [m.step for m in client.get_metric_history(first.info.run_id, "docs_active")] == [0]

    job = CurationJob(cfg, spark=spark, udfs=fake_udfs())
    done = publish(job, job.run())
    assert done.complete and done.mlflow_run_id == stopped.mlflow_run_id  # the same MLflow run, resumed
    run = client.get_run(done.mlflow_run_id)
    exp = client.get_experiment_by_name("curation-tests")
    assert run.info.status == "FINISHED" and run.info.experiment_id == exp.experiment_id
    assert len(client.search_runs([exp.experiment_id])) == 1
    p, t, m = run.data.params, run.data.tags, run.data.metrics
    assert p["config_hash"] == cfg.hash and p["curation.rounds"] == "1" and p["model.name"] == cfg.model.name
    assert p["curation.temperatures"] == "[0.5, 0.7, 1.0]" and "evaluation.judges" not in p
    assert (t["cleancurate.run_id"], t["cleancurate.increment"], t["cleancurate.objective"]) == (
        done.run_id, "0", "minimize")
    assert t["cleancurate.output"] == done.store.root and t["cleancurate.input_kind"] == "parquet"
    # the final counts are the tables'
    mix = spark.read.format("delta").load(f"{out}/mix").count()
    q = spark.read.format("delta").load(f"{out}/quarantine").count()
    assert m["mix_rows"] == mix and m["quarantined_rows"] == q and m["input_rows"] == done.counts["input_rows"]
    assert m["seconds"] > 0 and m["quarantined.validate"] == done.counts["quarantined_by_stage"]["validate"]
    # one point per round, each round's the round_stats table's
    stats = spark.read.format("delta").load(f"{out}/round_stats").toPandas().set_index("round")
    for name in ("docs_active", "candidates", "passed", "gen_tokens"):
        hist = {x.step: x.value for x in client.get_metric_history(run.info.run_id, name)}
        assert hist == {r: float(stats.loc[r, name]) for r in stats.index}, name
    rejected = {x.step: x.value for x in client.get_metric_history(run.info.run_id, "rejected.lost_content")}
    assert rejected[1] >= 1  # g01's revisions all lose content
    arts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"config.yaml", "report/report.html", "report/report-standalone.html"} <= arts
    assert runs_row(spark, out).mlflow_run_id == run.info.run_id


@pytest.mark.spark
def test_an_unreachable_tracking_server_is_a_warning_and_the_run_completes(spark, tmp_path, monkeypatch):
    from cleancurate.jobs.curation.stages import CurationJob

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    out = str(tmp_path / "out")
    cfg = fake_config(write_input(spark, str(tmp_path / "in.parquet")), out).with_overrides(
        ["selection.fraction=1e-05", "report.mlflow=true", "report.mlflow_tracking_uri=http://127.0.0.1:9"])
    with pytest.warns(RuntimeWarning, match=r"MLflow tracking at http://127.0.0.1:9 failed while starting a run.*"
                                            r"tables are the record"):
        res = CurationJob(cfg, spark=spark, udfs=fake_udfs()).run()
    assert res.complete and res.mlflow_run_id is None and runs_row(spark, out).mlflow_run_id is None
    assert res.counts["input_rows"] == res.counts["mix_rows"] + res.counts["quarantined_rows"]


def test_where_tracking_goes(monkeypatch):
    from cleancurate import config as C
    from cleancurate.tracking import wanted

    for var in ("MLFLOW_TRACKING_URI", "DATABRICKS_RUNTIME_VERSION"):
        monkeypatch.delenv(var, raising=False)
    demo = C.load("demo")
    assert demo.report.mlflow == "auto"
    monkeypatch.setitem(sys.modules, "mlflow", None)  # MLflow not installed
    assert not wanted(demo.report)  # auto, nowhere named: nothing logged, nothing said, nothing imported
    assert not wanted(demo.with_overrides(["report.mlflow=false"]).report)
    with pytest.raises(C.ConfigError, match=r"report.mlflow is true but MLflow is not installed.*cleancurate\[mlflow\]"):
        wanted(demo.with_overrides(["report.mlflow=true"]).report)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert not wanted(demo.report)  # a URI but no MLflow: auto stays quiet
    monkeypatch.delitem(sys.modules, "mlflow")
    assert wanted(demo.report)
    with pytest.raises(C.ConfigError, match=r"report.mlflow must be one of \['auto', True, False\], got 'always'"):
        demo.with_overrides(["report.mlflow=always"])


def test_a_tracking_server_failing_mid_run_warns_once_and_stops_logging():
    from cleancurate.tracking import Tracker

    class Failing:
        calls = 0

        def log_batch(self, *a, **k):
            Failing.calls += 1
            raise ConnectionError("server went away")

    tr = Tracker(None, "curation")
    tr.client, tr.run_id, tr.uri = Failing(), "abc", "http://tracking:5000"
    with pytest.warns(RuntimeWarning, match=r"http://tracking:5000 failed while logging metrics.*server went away"):
        tr.metrics({"a": 1.0}, step=0)
    assert not tr.active
    tr.metrics({"a": 2.0})
    tr.end()  # no further calls, no further warnings
    assert Failing.calls == 1
