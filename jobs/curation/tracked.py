"""What a curation run tells MLflow (:mod:`cleancurate.tracking`): one MLflow run per increment.

* at the start: params (the user's config flattened, its hash), tags (``cleancurate.run_id``,
  increment, output, input and its version, objective, model, guard, cleancurate version);
* after each committed round (step = round): documents active, candidates, passed, in beam,
  converged, tokens, seconds, generated tokens per second, and ``rejected.<rule>`` per gate rule;
* when the increment completes: the whole output's row counts, this increment's, the
  increment's seconds and rows per second; then the report (HTML and PNGs) and the resolved
  config YAML as artifacts (:func:`log_report`, after ``curate`` wrote the report).

A cut-short increment's MLflow run ends KILLED and the rerun resumes it (its id is in ``runs``).
"""

from __future__ import annotations

import json

from cleancurate.tracking import TAG, Tracker, flatten, version


def start(ctx, stored_run: dict | None, identity) -> Tracker:
    """Start (or resume) the increment's MLflow run; sets ``ctx.mlflow_run_id``."""
    cfg = ctx.cfg
    tracker = Tracker(cfg.report, "curation")
    resume = None
    if stored_run and stored_run.get("status") == "running" and stored_run.get("increment") == ctx.increment:
        resume = stored_run.get("mlflow_run_id")
    tags = {f"{TAG}run_id": ctx.run_id, f"{TAG}increment": str(ctx.increment), f"{TAG}output": ctx.store.root,
            f"{TAG}input": identity.describe(), f"{TAG}input_kind": identity.kind,
            f"{TAG}input_version": "" if identity.version is None else str(identity.version),
            f"{TAG}objective": cfg.curation.objective, f"{TAG}model": cfg.model.name,
            f"{TAG}guard": cfg.harm.guard_model if cfg.harm.backend == "guard" else "head",
            f"{TAG}version": version(), f"{TAG}job": "curate"}
    name = ctx.run_id if ctx.increment == 0 else f"{ctx.run_id} increment {ctx.increment}"
    ctx.mlflow_run_id = tracker.start(name, tags, resume)
    if tracker.active:
        tracker.params({**flatten(cfg.user_dict()), "config_hash": ctx.hash})
    return tracker


def log_round(tracker: Tracker, stats: dict) -> None:
    """One committed round's statistics, at step = round."""
    if not tracker.active:
        return
    keys = ("docs_active", "candidates", "passed", "in_beam", "docs_converged", "gen_tokens", "scored_tokens",
            "median_beam_ppl", "seconds")
    metrics = {k: stats.get(k) for k in keys}
    if stats.get("seconds"):
        metrics["gen_tokens_per_second"] = stats["gen_tokens"] / stats["seconds"]
    for rule, n in json.loads(stats.get("reject_counts_json") or "{}").items():
        metrics[f"rejected.{rule}"] = n
    tracker.metrics(metrics, step=int(stats["round"]))


def log_complete(tracker: Tracker, counts: dict) -> None:
    """The output's row counts, this increment's (``increment.*``), and the time taken (``counts["seconds"]``)."""
    if not tracker.active:
        return
    inc = counts.get("increment") or {}
    metrics = {k: v for k, v in counts.items() if k.endswith("_rows")}
    metrics.update({f"increment.{k}": v for k, v in inc.items() if k.endswith("_rows")})
    for stage, n in (counts.get("quarantined_by_stage") or {}).items():
        metrics[f"quarantined.{stage}"] = n
    seconds = metrics["seconds"] = counts["seconds"]
    if seconds and inc.get("input_rows") is not None:
        metrics["input_rows_per_second"] = inc["input_rows"] / seconds
    tracker.metrics(metrics)


def log_report(tracker: Tracker, cfg, report_path: str | None) -> None:
    """Attach the resolved config and the report (its HTML, standalone copy and PNGs, not the other files an
    evaluation may have written beside it), then end the run."""
    import yaml

    from cleancurate.jobs.reporting import page_files

    if not tracker.active:
        return
    tracker.text(yaml.safe_dump(cfg.user_dict(), sort_keys=False), "config.yaml")
    if report_path:  # build_report writes a local folder (none for catalog outputs)
        for path in page_files(report_path):
            tracker.artifact(str(path), "report")
    tracker.end("FINISHED")
