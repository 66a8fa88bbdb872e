"""The evaluation job: train on each mix, answer the held-out prompts, judge, and commit per mix.

::

    curation run tables -> mixes A/B/C, before/after (+ base)        -> eval_mix_rows
    for each mix not yet finished:
        fine-tune phase by phase + answer (finetune.run_mix: in process or TorchDistributor)
        judge the answers on the driver (keyword, harm check, LLM; helpfulness)
        check that every prompt has an answer row or an error row
        commit eval_answers[mix], evaluation[mix], then eval_mixes[mix]  (the resume marker)
    paired differences A-B, A-C, A-before, A-after from eval_answers -> evaluation['A-B', ...]
    report section (markdown + chart)                               -> <output>/report/evaluation.md

The evaluation run id is derived from everything that changes its result (the
``evaluation`` section, the model, the judges' settings, the curation run, the curated
texts' run when it is another one, and the prompt sets' content; not the list of
mixes, since a mix's rows and training do not depend on the others), so rerunning the
same command resumes: a mix whose ``eval_mixes`` row is committed is skipped, not
retrained; a mix that was cut short is trained again from the start and its slices
replaced; a mix added to a finished evaluation is the only one trained.

This module holds the steps and the tables; what a metric is lives in
:mod:`~cleancurate.jobs.evaluation.metrics` and how answers are judged in
:mod:`~cleancurate.jobs.evaluation.judging`. Rows are built as dicts keyed by the
schema's field names (:mod:`cleancurate.schemas.evaluation`) and turned into Spark rows
in one place, :meth:`EvaluationJob._write`, which names any missing or unknown field.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import pandas as pd

from cleancurate.config import Config, ConfigError, EvaluationRunConfig
from cleancurate.engine.harm import backend as harm_backend
from cleancurate.engine.harm import check_batch, load_guard
from cleancurate.jobs.evaluation import stats
from cleancurate.jobs.evaluation.judging import judge_answers
from cleancurate.jobs.evaluation.metrics import Metric, difference_interval, metric_interval, metrics_for
from cleancurate.jobs.evaluation.mixes import MIX_KINDS, build_mixes, curated_store, latest_curation_run
from cleancurate.jobs.evaluation.promptsets import PromptSet, load_prompt_set
from cleancurate.tables import TableStore, sql_literal

ProgressFn = Callable[[dict], None]
DIFFERENCES = (("A", "B"), ("A", "C"), ("A", "before"), ("A", "after"))


class PromptAccountingError(RuntimeError):
    """A held-out prompt has neither an answer row nor an error row (or has several)."""


@dataclass
class EvaluationResult:
    """What an evaluation produced: its id, the curation run it used, where the tables are, counts."""

    eval_run_id: str
    curation_run_id: str
    config: EvaluationRunConfig
    store: TableStore
    complete: bool = True
    counts: dict = field(default_factory=dict)
    report_path: str | None = None
    mlflow_run_id: str | None = None  # the evaluation's MLflow run (report.mlflow), None when not tracked

    def table(self, name: str):
        """One evaluation table (this evaluation's rows) as a DataFrame."""
        from pyspark.sql import functions as F

        return self.store.read(name).where(F.col("eval_run_id") == self.eval_run_id)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def evaluation_hash(cfg: EvaluationRunConfig, curation_run_id: str, prompt_digests: dict, curated_source: str | None = None) -> str:
    """Hash of everything that changes an evaluation's numbers (not where or how fast it runs).

    ``curated_source`` names the curated texts' run when it is not the evaluated one.
    Left out: ``mixes`` (a mix's rows and training do not depend on which other mixes
    are listed, so adding ``before`` to a finished evaluation trains only ``before``)
    and ``allow_kept_originals`` (it decides whether a shortfall fails, never which
    rows a successful run takes: revisions always come first).
    """
    d = cfg.to_dict()
    ev = {k: v for k, v in d["evaluation"].items() if k not in (
        "report_dir", "report_examples", "checkpoint_dir", "distributor", "num_processes", "local_mode", "use_gpu",
        "curation_run_id", "judge_prompt_file", "curated_output", "curated_run_id", "mixes", "allow_kept_originals")}
    model = {k: v for k, v in d["model"].items() if k not in ("device", "memory_gb", "backend")}
    extra = {"curated_source": curated_source} if curated_source else {}
    blob = json.dumps({"evaluation": ev, "model": model, "harm": d["harm"], "metrics": d["metrics"],
                       "curation_run_id": curation_run_id, "prompts": prompt_digests, **extra},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class JudgeModelLoader:
    """The models the judges use (encoder, LLM judges, harm check), each loaded on first use and kept for the job."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._models: dict = {}

    def encoder(self):
        if "encoder" not in self._models:
            from cleancurate.models import load

            self._models["encoder"] = load(self.cfg, "encoder")
        return self._models["encoder"]

    def llm(self, spec: str):
        if spec not in self._models:
            from cleancurate.models import ModelSpec, get_model

            s = ModelSpec.of(self.cfg, "lm")
            self._models[spec] = get_model(spec, s.kind, s.device, s.dtype, s.allow_network, s.num_threads)
        return self._models[spec]

    def harm(self):
        """The configured harm check (``harm.backend``): its models load on first use, then stay."""
        if "harm" not in self._models:
            h, rt = self.cfg.harm, self.cfg.runtime
            guard = load_guard(self.cfg) if harm_backend(h) == "guard" else None
            enc = self.encoder() if harm_backend(h) == "head" else None
            self._models["harm"] = lambda prompts, answers: check_batch(h, rt, enc, guard, prompts, answers)
        return self._models["harm"]


class EvaluationJob:
    """Runs (or resumes) one evaluation.

    Args:
        cfg: validated configuration (its ``output`` holds the curation run's tables).
        spark: session (default: the active one, or a local one with Delta).
        progress: callback receiving one dict per event.
        stop_after_mix: commit this mix, then return without finishing (time-boxed runs).
    """

    def __init__(self, cfg: EvaluationRunConfig, spark=None, progress: ProgressFn | None = None, stop_after_mix: str | None = None):
        from cleancurate.session import get_spark

        self.cfg = cfg
        self.ev = cfg.evaluation
        self.spark = spark or get_spark(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        self.store = TableStore(self.spark, cfg.output)
        self.progress = progress or (lambda event: None)
        self.stop_after_mix = stop_after_mix
        if "harm" in self.ev.judges and harm_backend(cfg.harm) is None:
            # checked here, not in config validation: a curation config may turn the harm check off
            raise ConfigError("evaluation.judges 'harm' needs the configured harm check: harm.head_file (harm.backend "
                              "head) or harm.guard_model (harm.backend guard); or drop it from evaluation.judges")
        if stop_after_mix is not None and stop_after_mix not in self.ev.mixes:
            raise ConfigError(f"stop_after_mix {stop_after_mix!r} is not one of evaluation.mixes {list(self.ev.mixes)}")
        self.eval_run_id = ""
        self.curation_run_id = ""
        self.hash = ""
        self.judge_models = JudgeModelLoader(cfg)

    # ---------------------------------------------------------------- helpers
    def _emit(self, event: str, **data) -> None:
        self.progress({"event": event, "eval_run_id": self.eval_run_id, **data})

    def _where(self, mixes=None) -> str:
        where = f"eval_run_id = {sql_literal(self.eval_run_id)}"
        if mixes is not None:
            where += " AND mix IN (" + ", ".join(sql_literal(m) for m in mixes) + ")"
        return where

    def _finished_mixes(self) -> set[str]:
        if not self.store.exists("eval_mixes"):
            return set()
        rows = self.store.read("eval_mixes").where(self._where()).where("status = 'complete'").select("mix").collect()
        return {r.mix for r in rows}

    def _write(self, records: list[dict], schema, name: str, where: str) -> None:
        """Replace the slice ``where`` of table ``name`` with ``records`` (dicts keyed by the schema's fields)."""
        rows = [_spark_row(r, schema, name) for r in records]
        # merge_schema: an eval table written before a column was added gains it
        self.store.write_slice(self.spark.createDataFrame(rows, schema), name, where, merge_schema=True)

    def _sections(self) -> dict:
        return {"model": self.cfg.model, "runtime": self.cfg.runtime, "evaluation": self.cfg.evaluation}

    # ---------------------------------------------------------------- steps
    def _prompt_sets(self) -> tuple[PromptSet, PromptSet]:
        ev = self.ev
        harmful = load_prompt_set("harmful", ev.harmful_prompts, self.spark, ev.max_prompts)
        benign = load_prompt_set("benign", ev.benign_prompts, self.spark, ev.max_prompts, need_reference=True)
        return harmful, benign

    @staticmethod
    def check_accounting(answers: pd.DataFrame, sets: tuple[PromptSet, ...], mix: str) -> dict:
        """Every prompt read has exactly one row, answered or failed; raise otherwise."""
        counts = {"prompts_in": sum(len(s) for s in sets)}
        counts["answered"] = int((answers["status"] == "answered").sum())
        counts["failed"] = int((answers["status"] == "failed").sum())
        problems = []
        for s in sets:
            want = set(s.rows["prompt_id"])
            got = answers.loc[answers["prompt_set"] == s.name, "prompt_id"]
            if set(got) != want or got.duplicated().any():
                problems.append(f"{s.name}: {len(want)} prompts in, {len(got)} rows out "
                                f"({len(set(got) ^ want)} ids unmatched, {int(got.duplicated().sum())} repeated)")
        if counts["prompts_in"] != counts["answered"] + counts["failed"] or len(answers) != counts["prompts_in"]:
            problems.append(f"prompts in {counts['prompts_in']} != answered {counts['answered']} + failed "
                            f"{counts['failed']}")
        if problems:
            raise PromptAccountingError(f"prompt accounting failed for mix {mix}: " + "; ".join(problems))
        return counts

    def _metric_records(self, answers: pd.DataFrame, mix: str, set_sizes: dict) -> list[dict]:
        """One ``evaluation`` record per reported metric of one mix."""
        return [self._metric_record(mix, m, metric_interval(answers, m, self.ev, mix), set_sizes[m.prompt_set])
                for m in metrics_for(self.ev.judges)]

    def _metric_record(self, mix: str, m: Metric, iv: stats.Interval, set_size: int) -> dict:
        return {"eval_run_id": self.eval_run_id, "curation_run_id": self.curation_run_id, "mix": mix,
                "metric": m.name, "prompt_set": m.prompt_set, "value": iv.value, "ci_low": iv.ci_low,
                "ci_high": iv.ci_high, "confidence": float(self.ev.confidence), "n": iv.n,
                "n_failed": set_size - iv.n, "model": self.cfg.model.name, "config_hash": self.hash}

    def _difference_records(self, set_sizes: dict) -> list[dict]:
        """Paired differences (``A-B``, ``A-C``, ``A-before``, ``A-after``) of every metric between mixes this
        evaluation finished (in this run or an earlier one), from the committed answers."""
        ev = self.ev
        finished = self._finished_mixes()
        answers = self.store.read("eval_answers").where(self._where(sorted(finished))).toPandas()
        records = []
        for x, y in DIFFERENCES:
            if x not in finished or y not in finished:
                continue
            for m in metrics_for(ev.judges):
                label = f"{x}-{y}"
                iv = difference_interval(answers[answers["mix"] == x], answers[answers["mix"] == y], m, ev, label)
                records.append(self._metric_record(label, m, iv, set_sizes[m.prompt_set]))
        return records

    def _mix_record(self, mix: str, mixes, tr: dict, counts: dict) -> dict:
        """The ``eval_mixes`` record that marks ``mix`` finished: what it trained on, its counts and timings."""
        sizes = mixes.sizes(mix)
        losses = tr["losses"]
        uses_curated = sizes["curated_rows"] > 0
        return {"eval_run_id": self.eval_run_id, "curation_run_id": self.curation_run_id, "mix": mix,
                "status": "complete", "train_rows": sizes["train_rows"], "benign_rows": sizes["benign_rows"],
                "harmful_rows": sizes["harmful_rows"], "curated_rows": sizes["curated_rows"],
                "examples": tr["examples"], "steps": tr["steps"],
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                "trainable_params": int(tr.get("trainable_params", 0)),
                "prompts_in": counts["prompts_in"], "answered": counts["answered"], "failed": counts["failed"],
                "train_seconds": float(tr["seconds"]), "answer_seconds": float(tr.get("answer_seconds", 0.0)),
                "device": tr.get("device"), "model": self.cfg.model.name, "config_hash": self.hash,
                "config_json": json.dumps(self.cfg.to_dict(), sort_keys=True), "finished_at": _now(),
                "curated_source": str(mixes.curated_source) if uses_curated and mixes.curated_source else None,
                "curated_kept_rows": mixes.kept_originals() if uses_curated else 0,
                "phases_json": json.dumps(tr.get("phases", []))}

    def _run_mix(self, mix: str, mixes, harmful: PromptSet, benign: PromptSet) -> dict:
        from cleancurate.jobs.evaluation.finetune import run_mix
        from cleancurate.schemas.evaluation import EVAL_ANSWERS, EVAL_MIXES, EVALUATION

        t0 = time.time()
        phases = mixes.phases(mix)
        self._emit("mix_start", mix=mix, train_rows=sum(len(p["pairs"]) for p in phases),
                   phases=[(p["kinds"], len(p["pairs"])) for p in phases])
        ok_h = [(r.prompt_id, r.prompt) for r in harmful.rows.itertuples(index=False) if (r.prompt or "").strip()]
        ok_b = [(r.prompt_id, r.prompt, r.reference or "") for r in benign.rows.itertuples(index=False)
                if (r.prompt or "").strip()]
        payload = {"mix": mix, "phases": phases, "harmful": ok_h, "benign": ok_b, **self._sections()}
        if self.ev.checkpoint_dir:
            payload["save_dir"] = f"{self.ev.checkpoint_dir.rstrip('/')}/{self.eval_run_id}/{mix}"
        result = run_mix(payload, self._sections()["evaluation"])
        tr = result["train"]
        self._emit("mix_trained", mix=mix, steps=tr["steps"], examples=tr["examples"],
                   loss_first=tr["losses"][0] if tr["losses"] else None,
                   loss_last=tr["losses"][-1] if tr["losses"] else None, seconds=tr["seconds"],
                   phases=[{k: p[k] for k in ("phase", "kinds", "steps", "losses")} for p in tr.get("phases", [])])
        answers = judge_answers(mix, result, harmful, benign, self.cfg, self.judge_models)
        counts = self.check_accounting(answers, (harmful, benign), mix)
        answers = answers.assign(eval_run_id=self.eval_run_id, model=self.cfg.model.name, config_hash=self.hash)
        self._write(_frame_records(answers, EVAL_ANSWERS), EVAL_ANSWERS, "eval_answers", self._where([mix]))
        self._emit("answers_written", mix=mix, rows=len(answers))
        sizes = {"harmful": len(harmful), "benign": len(benign)}
        metric_records = self._metric_records(answers, mix, sizes)
        self._write(metric_records, EVALUATION, "evaluation", self._where([mix]))
        self._write([self._mix_record(mix, mixes, tr, counts)], EVAL_MIXES, "eval_mixes",
                    self._where([mix]))
        summary = {r["metric"]: r["value"] for r in metric_records}
        self._emit("mix_committed", mix=mix, **counts, metrics=summary, seconds=time.time() - t0)
        return counts

    # ---------------------------------------------------------------- run
    def run(self) -> EvaluationResult:
        """Run the evaluation, skipping mixes a previous run of the same evaluation finished."""
        from cleancurate.schemas.evaluation import EVAL_MIX_ROWS, EVALUATION

        t_start = time.time()
        ev = self.ev
        self.curation_run_id = ev.curation_run_id or latest_curation_run(self.store)
        harmful, benign = self._prompt_sets()
        cstore, crun = curated_store(self.spark, self.store, self.curation_run_id, ev)
        other = None if (cstore.root, crun) == (self.store.root, self.curation_run_id) else f"{cstore.root}@{crun}"
        self.hash = evaluation_hash(self.cfg, self.curation_run_id, {"harmful": harmful.digest, "benign": benign.digest},
                                    other)
        self.eval_run_id = f"eval-{self.hash[:12]}"
        done = self._finished_mixes()
        self._emit("start", curation_run_id=self.curation_run_id, config_hash=self.hash,
                   finished=sorted(done), harmful_prompts=len(harmful), benign_prompts=len(benign))
        pending = [m for m in ev.mixes if m not in done]
        mixes, sizes = build_mixes(self.spark, self.store, self.curation_run_id, ev, pending, (cstore, crun))
        if sizes.harmful == 0 and any("harmful" in MIX_KINDS[m] for m in ev.mixes):
            raise ConfigError(
                f"curation run {self.curation_run_id} has no harmful rows to contaminate mix A with (the screen "
                "flagged none); set evaluation.harmful_table to a table of harmful pairs")
        if pending:
            prov = mixes.rows(pending)
            recs = [{"eval_run_id": self.eval_run_id, "mix": m, "kind": k, "doc_id": d, "phase": int(p)}
                    for m, k, d, p in prov[["mix", "kind", "doc_id", "phase"]].itertuples(index=False, name=None)]
            self._write(recs, EVAL_MIX_ROWS, "eval_mix_rows", self._where(pending))
        src = mixes.curated_source
        self._emit("mixes_built", benign=sizes.benign, harmful=sizes.harmful, curated=sizes.curated,
                   curated_kept=mixes.kept_originals(), curated_source=str(src),
                   revisions_available=src.replaced, kept_originals_available=src.kept,
                   **{f"rows_{m}": mixes.sizes(m)["train_rows"] for m in ev.mixes})
        counts = {"trained": [], "skipped": [], "harmful_prompts": len(harmful), "benign_prompts": len(benign)}
        for mix in ev.mixes:
            if mix in done:
                counts["skipped"].append(mix)
                self._emit("mix_skipped", mix=mix)
            else:
                self._run_mix(mix, mixes, harmful, benign)
                counts["trained"].append(mix)
            if self.stop_after_mix == mix and mix != ev.mixes[-1]:
                self._emit("stopped", mix=mix)
                return EvaluationResult(self.eval_run_id, self.curation_run_id, self.cfg, self.store, False, counts)
        diffs = self._difference_records({"harmful": len(harmful), "benign": len(benign)})
        self._write(diffs, EVALUATION, "evaluation", self._where([f"{x}-{y}" for x, y in DIFFERENCES]))
        self._emit("differences", rows=len(diffs))
        answers_total = self.store.read("eval_answers").where(self._where(ev.mixes)).count()
        expected = len(ev.mixes) * (len(harmful) + len(benign))
        if answers_total != expected:
            raise PromptAccountingError(f"eval_answers holds {answers_total} rows for {self.eval_run_id}, expected "
                                        f"{len(ev.mixes)} mixes x {len(harmful) + len(benign)} prompts = {expected}")
        counts["answer_rows"] = answers_total
        counts["seconds"] = time.time() - t_start
        self._emit("complete", **{k: v for k, v in counts.items() if k not in ("trained", "skipped")})
        return EvaluationResult(self.eval_run_id, self.curation_run_id, self.cfg, self.store, True, counts)


def _py(v, cast=None):
    """A pandas/numpy cell as a plain Python value of the column's type (NaN and NA become None)."""
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(v, "item"):
        v = v.item()
    return cast(v) if cast else v


def _frame_records(df: pd.DataFrame, schema) -> list[dict]:
    """Rows of ``df`` as dicts of plain Python values of each schema field's type, keyed by column name."""
    from pyspark.sql.types import BooleanType, DoubleType, IntegerType, LongType

    casts = {IntegerType: int, LongType: int, DoubleType: float, BooleanType: bool}
    fns = {f.name: casts.get(type(f.dataType)) for f in schema.fields}
    cols = list(df.columns)
    return [{c: _py(v, fns.get(c)) for c, v in zip(cols, rec)} for rec in df.itertuples(index=False, name=None)]


def _spark_row(record: dict, schema, table: str) -> tuple:
    """A record as a tuple in the schema's field order; a missing or unknown field is an error naming it."""
    names = schema.fieldNames()
    missing = [n for n in names if n not in record]
    unknown = [k for k in record if k not in names]
    if missing or unknown:
        raise ValueError(f"{table} record does not match its schema: missing {missing}, unknown {unknown}")
    return tuple(record[n] for n in names)


def evaluate(config: Config | str, spark=None, overrides: list[str] | None = None, progress: ProgressFn | None = None,
             stop_after_mix: str | None = None, report: bool = True) -> EvaluationResult:
    """Evaluate a curation run: train on each mix (A, B, C, before, after), answer held-out prompts, write
    ``evaluation``.

    Args:
        config: an :class:`EvaluationRunConfig` (a curation :class:`Config` takes the evaluation's defaults) or a
            profile name / YAML path; its ``output`` holds the curation run.
        spark: the session (default: active or local).
        overrides: ``section.key=value`` overrides.
        progress: callback for progress events.
        stop_after_mix: commit this mix and return (rerun the same call to resume).
        report: write the report section after a complete evaluation.
    """
    from cleancurate import config as config_mod

    if isinstance(config, Config):
        cfg = EvaluationRunConfig.of(config)  # a curation configuration: the evaluation's defaults
        cfg = cfg.with_overrides(overrides) if overrides else cfg
    else:
        cfg = config_mod.load_evaluation(config, overrides)
    job = EvaluationJob(cfg, spark=spark, progress=progress, stop_after_mix=stop_after_mix)
    result = job.run()
    if report and result.complete and cfg.report.enabled:
        from cleancurate.jobs.evaluation.report import build_eval_report

        result.report_path = build_eval_report(result)
    if result.complete:
        from cleancurate.jobs.evaluation.tracked import log_evaluation

        result.mlflow_run_id = log_evaluation(result)
    return result
