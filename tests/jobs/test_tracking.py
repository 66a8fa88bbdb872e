"""MLflow tracking of curation runs, against real MLflow: a sqlite tracking store in a temp folder,
read back with ``MlflowClient``. The job runs with the fake UDFs (no model).

* a run stopped after round 1 and resumed logs into one MLflow run: params, tags, per-round and
  final metrics, the report and config as artifacts, its id in ``runs`` (the run is the fakes' minimize
  run, shared with their ranking test: tests/jobs/conftest.py);
* an unreachable tracking server is a warning, and the curation completes;
* ``report.mlflow`` auto without a tracking URI imports nothing; true without MLflow is an error.
"""

from __future__ import annotations

import sys

import pytest

from tests.jobs.test_curation_fakes import fake_config, fake_udfs, write_input


def runs_row(spark, out: str):
    return spark.read.format("delta").load(f"{out}/runs").collect()[0]


@pytest.mark.spark
def test_a_resumed_run_logs_params_metrics_and_report_into_one_mlflow_run(tracked_minimize):
    """The shared fake run (tests/jobs/conftest.py), stopped after round 1 and resumed: one MLflow run."""
    t = tracked_minimize
    stopped, done, cfg, client = t.stopped, t.res, t.cfg, t.client
    assert stopped.mlflow_run_id and t.at_stop.info.status == "KILLED"
    assert t.stopped_runs_row["mlflow_run_id"] == stopped.mlflow_run_id and t.stopped_steps == [0, 1]
    assert done.complete and done.mlflow_run_id == stopped.mlflow_run_id  # the same MLflow run, resumed
    run = client.get_run(done.mlflow_run_id)
    exp = client.get_experiment_by_name("curation-tests")
    assert run.info.status == "FINISHED" and run.info.experiment_id == exp.experiment_id
    assert len(client.search_runs([exp.experiment_id])) == 1
    p, tags, m = run.data.params, run.data.tags, run.data.metrics
    assert p["config_hash"] == cfg.hash and p["curation.rounds"] == "2" and p["model.name"] == cfg.model.name
    assert p["curation.temperatures"] == "[0.5, 0.7, 1.0]" and "evaluation.judges" not in p
    assert (tags["cleancurate.run_id"], tags["cleancurate.increment"], tags["cleancurate.objective"]) == (
        done.run_id, "0", "minimize")
    assert tags["cleancurate.output"] == done.store.root and tags["cleancurate.input_kind"] == "parquet"
    # the final counts are the tables'
    assert m["mix_rows"] == len(t.tables["mix"]) and m["quarantined_rows"] == len(t.tables["quarantine"])
    assert m["input_rows"] == done.counts["input_rows"]
    assert m["seconds"] > 0 and m["quarantined.validate"] == done.counts["quarantined_by_stage"]["validate"]
    # one point per round, each round's the round_stats table's
    stats = t.tables["round_stats"].set_index("round")
    assert sorted(stats.index) == [0, 1, 2]
    for name in ("docs_active", "candidates", "passed", "gen_tokens"):
        hist = {x.step: x.value for x in client.get_metric_history(run.info.run_id, name)}
        assert hist == {r: float(stats.loc[r, name]) for r in stats.index}, name
    rejected = {x.step: x.value for x in client.get_metric_history(run.info.run_id, "rejected.lost_content")}
    assert rejected[1] >= 1  # g01's revisions all lose content
    arts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"config.yaml", "report/report.html", "report/report-standalone.html"} <= arts
    assert t.tables["runs"].mlflow_run_id.tolist() == [run.info.run_id]


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
