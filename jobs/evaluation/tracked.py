"""What an evaluation tells MLflow (:mod:`cleancurate.tracking`): one MLflow run per complete evaluation.

Params: the evaluation's settings (``evaluation.*``) and its hash; tags: ``cleancurate.eval_run_id``,
``cleancurate.run_id`` (the curation run evaluated) and that run's MLflow run
(``cleancurate.curation_mlflow_run_id``, from ``runs``), so the evaluation sits beside the curation
it judged; metrics: every row of ``evaluation``, each mix's estimate and each paired difference, as
``<prompt_set>.<metric>.<mix>`` with ``.ci_low``, ``.ci_high`` and ``.n``; artifacts: the report's
evaluation files (markdown, HTML, the charts, the stage chart among them).

Logged once the evaluation completes, from its tables: a resumed evaluation logs once.
"""

from __future__ import annotations

from cleancurate.tracking import TAG, Tracker, flatten, version


def log_evaluation(result) -> str | None:
    """Log a complete evaluation; returns its MLflow run id (None when not tracked)."""
    cfg, store = result.config, result.store
    tracker = Tracker(cfg.report, "evaluation")
    curation_mlflow = None
    if store.exists("runs"):
        got = [r.mlflow_run_id for r in store.read("runs").collect()
               if r.run_id == result.curation_run_id and "mlflow_run_id" in r.asDict()]
        curation_mlflow = got[0] if got else None
    tags = {f"{TAG}eval_run_id": result.eval_run_id, f"{TAG}run_id": result.curation_run_id,
            f"{TAG}curation_mlflow_run_id": curation_mlflow or "", f"{TAG}output": store.root,
            f"{TAG}model": cfg.model.name, f"{TAG}job": "evaluate", f"{TAG}version": version()}
    if not tracker.start(result.eval_run_id, tags):
        return None
    tracker.params({**flatten({"evaluation": cfg.user_dict()["evaluation"]}), "eval_run_id": result.eval_run_id})
    rows = result.table("evaluation").collect()
    metrics = {}
    for r in rows:
        key = f"{r.prompt_set}.{r.metric}.{r.mix}"
        metrics.update({key: r.value, f"{key}.ci_low": r.ci_low, f"{key}.ci_high": r.ci_high, f"{key}.n": r.n})
    metrics = {k: v for k, v in metrics.items() if v is None or v == v}  # NaN (nothing scored) is left out
    tracker.metrics({**metrics, "seconds": result.counts.get("seconds"),
                     "answer_rows": result.counts.get("answer_rows")})
    if result.report_path:
        from cleancurate.jobs.reporting import page_files

        for path in page_files(result.report_path):
            tracker.artifact(str(path), "report")
    tracker.end("FINISHED")
    return tracker.run_id
