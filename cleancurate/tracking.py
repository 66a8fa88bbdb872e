"""MLflow tracking: one MLflow run per increment of a curation run, and one per evaluation.

Where it goes (``report.mlflow``):

* ``auto`` (default): log when MLflow is importable and a tracking server is named
  (``MLFLOW_TRACKING_URI``, ``report.mlflow_tracking_uri``, or a Databricks runtime); else
  nothing is logged and nothing is said.
* ``true``: log; MLflow missing is a :class:`~cleancurate.config.ConfigError` before any work.
* ``false``: never.

The experiment is ``report.mlflow_experiment`` (default: MLflow's own, which on Databricks is
the notebook's). The tables stay the record: a tracking server that fails, at the start or
mid-run, gives one warning and the run goes on without it. The MLflow run id is kept in the
``runs`` table, so a resumed increment logs into the MLflow run it started.

Only the MLflow client (``MlflowClient``) is used, never the fluent API's global active run:
a notebook's own active run is left alone.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

#: tag names in the MLflow run (``cleancurate.run_id`` finds every MLflow run of a curation run)
TAG = "cleancurate."
#: MLflow's limit on one param's value length (older servers: 500)
PARAM_CHARS = 500


def version() -> str:
    """cleancurate's installed version (its metadata: importing the package would pull in both jobs)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("cleancurate")
    except PackageNotFoundError:
        return "unknown"


def wanted(report) -> bool:
    """Whether ``report.mlflow`` asks for tracking here. ``true`` without MLflow installed is an error."""
    from cleancurate.config import ConfigError

    mode = report.mlflow
    if mode is False:
        return False
    if mode == "auto" and not (report.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                               or os.environ.get("DATABRICKS_RUNTIME_VERSION")):
        return False  # nowhere named to log to: MLflow is not even imported
    try:
        import mlflow  # noqa: F401
    except ImportError:
        if mode is True:
            raise ConfigError("report.mlflow is true but MLflow is not installed: pip install 'cleancurate[mlflow]' "
                              "(or mlflow), or set report.mlflow: auto to log only where MLflow is set up") from None
        return False
    return True


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists as JSON; values cut to MLflow's param length."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v)
            out[key] = text if len(text) <= PARAM_CHARS else text[:PARAM_CHARS - 3] + "..."
    return out


class Tracker:
    """One MLflow run, or nothing. Every call is safe: a failure warns once and turns the tracker off."""

    def __init__(self, report, what: str):
        self.report = report
        self.what = what
        self.client = None
        self.run_id: str | None = None
        self.uri: str | None = None

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _fail(self, step: str, err: Exception) -> None:
        warnings.warn(f"MLflow tracking at {self.uri or 'the default tracking URI'} failed while {step} "
                      f"({type(err).__name__}: {str(err)[:300]}); the {self.what} goes on without it and its "
                      "tables are the record", RuntimeWarning, stacklevel=3)
        self.run_id = None

    def _call(self, step: str, method: str, *args, **kwargs) -> Any:
        """``self.client.<method>(*args, **kwargs)`` while active; a failure warns and turns tracking off."""
        if not self.active:
            return None
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  the tracking server never fails the job
            self._fail(step, err)
            return None

    def start(self, name: str, tags: dict[str, str], resume: str | None = None) -> str | None:
        """Start an MLflow run (or resume ``resume``, the run id a cut-short run left in its table)."""
        if not wanted(self.report):
            return None
        try:
            from mlflow import MlflowClient
            from mlflow.tracking import get_tracking_uri

            self.uri = self.report.mlflow_tracking_uri or get_tracking_uri()
            self.client = MlflowClient(self.uri)
            if resume:
                try:
                    self.client.update_run(resume, status="RUNNING")
                    self.run_id = resume
                    return resume
                except Exception:  # noqa: BLE001  gone from this server: start another
                    pass
            exp = self._experiment()
            run = self.client.create_run(exp, tags={**tags, "mlflow.runName": name})
            self.run_id = run.info.run_id
        except Exception as err:  # noqa: BLE001
            self._fail("starting a run", err)
        return self.run_id

    def _experiment(self) -> str:
        name = self.report.mlflow_experiment
        if not name:
            from mlflow.tracking.fluent import _get_experiment_id

            return _get_experiment_id() or "0"
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found else self.client.create_experiment(name)

    def params(self, params: dict[str, str]) -> None:
        """Log params (100 per call); a param already logged with the same value is fine."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self._call("logging parameters", "log_batch", self.run_id, params=items[i:i + 100])

    def metrics(self, metrics: dict[str, float | int | None], step: int = 0) -> None:
        """Log numeric metrics at ``step`` (None and non-numbers are skipped)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            self._call("logging metrics", "log_batch", self.run_id, metrics=items[i:i + 1000])

    def artifact(self, path: str, folder: str | None = None) -> None:
        """Attach a local file (into ``folder`` of the run's artifacts)."""
        self._call("attaching an artifact", "log_artifact", self.run_id, path, folder)

    def text(self, text: str, file: str) -> None:
        self._call("attaching an artifact", "log_text", self.run_id, text, file)

    def end(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED or KILLED (a run stopped after a round: resumed later into the same MLflow run)."""
        self._call("ending the run", "set_terminated", self.run_id, status)
