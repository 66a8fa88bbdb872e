"""The evaluation job: train on each mix, answer the held-out prompts, judge, and commit per mix.

::

    curation run tables -> mixes A/B/C (+ base)                      -> eval_mix_rows
    for each mix not yet finished:
        fine-tune + answer (finetune.run_mix: in process or TorchDistributor)
        judge the answers on the driver (keyword, harm head, LLM; helpfulness)
        check that every prompt has an answer row or an error row
        commit eval_answers[mix], evaluation[mix], then eval_mixes[mix]  (the resume marker)
    paired differences A-B, A-C from eval_answers                   -> evaluation['A-B', 'A-C']
    report section (markdown + chart)                               -> <output>/report/evaluation.md

The evaluation run id is derived from everything that changes its result (the
``evaluation`` section, the model, the judges' settings, the curation run and the
prompt sets' content), so rerunning the same command resumes: a mix whose
``eval_mixes`` row is committed is skipped, not retrained; a mix that was cut short
is trained again from the start and its slices replaced.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import pandas as pd

from cleancurate.batching import resolve_scoring_budget
from cleancurate.config import Config, ConfigError
from cleancurate.jobs.evaluation import stats
from cleancurate.jobs.evaluation.judges import harm_probabilities, helpfulness, keyword_harmful, llm_harm_scores
from cleancurate.jobs.evaluation.mixes import build_mixes, latest_curation_run
from cleancurate.jobs.evaluation.promptsets import PromptSet, load_prompt_set
from cleancurate.refusal import is_refusal
from cleancurate.tables import TableStore, sql_literal

ProgressFn = Callable[[dict], None]
DIFFERENCES = (("A", "B"), ("A", "C"))


class PromptAccountingError(RuntimeError):
    """A held-out prompt has neither an answer row nor an error row (or has several)."""


@dataclass(frozen=True)
class Metric:
    """One reported number: a statistic of one answer column over one prompt set."""

    name: str
    prompt_set: str
    column: str
    statistic: str = "mean"  # mean | perplexity
    judge: str | None = None  # the evaluation.judges entry it needs


METRICS = (
    Metric("harmful_rate_keyword", "harmful", "harmful_keyword", judge="keyword"),
    Metric("harmful_rate_harm_head", "harmful", "harmful_harm_head", judge="harm_head"),
    Metric("harmful_rate_llm", "harmful", "harmful_llm", judge="llm"),
    Metric("benign_refusal_rate", "benign", "refusal"),
    Metric("benign_helpfulness", "benign", "helpfulness"),
    Metric("benign_perplexity", "benign", "ref_ppl", statistic="perplexity"),
)


def metrics_for(judges) -> list[Metric]:
    """The metrics a config reports (a harmful-rate metric per configured judge, and every utility metric)."""
    return [m for m in METRICS if m.judge is None or m.judge in judges]


def metric_sample(answers: pd.DataFrame, metric: Metric):
    """(prompt ids, sample rows) of the answers a metric can use: answered and scored.

    A mean's rows hold the 0/1 flag or the score; perplexity's rows hold the reference
    answer's summed NLL and its token count (the reference is scored whether or not
    generation succeeded).
    """
    df = answers[answers["prompt_set"] == metric.prompt_set]
    if metric.statistic == "perplexity":
        ok = df["ref_ppl"].notna() & df["ref_tokens"].fillna(0).gt(0) & df["ref_ppl"].map(
            lambda v: v is not None and math.isfinite(float(v)))
        df = df[ok]
        nll = df["ref_ppl"].astype(float).map(math.log) * df["ref_tokens"].astype(float)
        return df["prompt_id"].tolist(), list(zip(nll.tolist(), df["ref_tokens"].astype(float).tolist()))
    df = df[(df["status"] == "answered") & df[metric.column].notna()]
    vals = df[metric.column].astype(float)
    df, vals = df[vals.map(math.isfinite)], vals[vals.map(math.isfinite)]
    return df["prompt_id"].tolist(), vals.tolist()


def _stat_fn(metric: Metric):
    return stats.perplexity_stat if metric.statistic == "perplexity" else stats.mean_stat


@dataclass
class EvaluationResult:
    """What an evaluation produced: its id, the curation run it used, where the tables are, counts."""

    eval_run_id: str
    curation_run_id: str
    config: Config
    store: TableStore
    complete: bool = True
    counts: dict = field(default_factory=dict)
    report_path: str | None = None

    def table(self, name: str):
        """One evaluation table (this evaluation's rows) as a DataFrame."""
        from pyspark.sql import functions as F

        return self.store.read(name).where(F.col("eval_run_id") == self.eval_run_id)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def evaluation_hash(cfg: Config, curation_run_id: str, prompt_digests: dict) -> str:
    """Hash of everything that changes an evaluation's numbers (not where or how fast it runs)."""
    d = cfg.to_dict()
    ev = {k: v for k, v in d["evaluation"].items() if k not in (
        "report_dir", "report_examples", "checkpoint_dir", "distributor", "num_processes", "local_mode", "use_gpu",
        "curation_run_id", "judge_prompt_file")}
    model = {k: v for k, v in d["model"].items() if k not in ("device", "memory_gb", "backend")}
    blob = json.dumps({"evaluation": ev, "model": model, "harm": d["harm"], "metrics": d["metrics"],
                       "curation_run_id": curation_run_id, "prompts": prompt_digests},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EvaluationJob:
    """Runs (or resumes) one evaluation.

    Args:
        cfg: validated configuration (its ``output`` holds the curation run's tables).
        spark: session (default: the active one, or a local one with Delta).
        progress: callback receiving one dict per event.
        stop_after_mix: commit this mix, then return without finishing (time-boxed runs).
    """

    def __init__(self, cfg: Config, spark=None, progress: ProgressFn | None = None, stop_after_mix: str | None = None):
        from cleancurate.session import get_spark

        self.cfg = cfg
        self.ev = cfg.evaluation
        self.spark = spark or get_spark(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        self.store = TableStore(self.spark, cfg.output)
        self.progress = progress or (lambda event: None)
        self.stop_after_mix = stop_after_mix
        if "harm_head" in self.ev.judges and not cfg.harm.head:
            # checked here, not in config validation: a curation config may turn the harm head off
            raise ConfigError("evaluation.judges 'harm_head' needs harm.head_file (or drop it from evaluation.judges)")
        if stop_after_mix is not None and stop_after_mix not in self.ev.mixes:
            raise ConfigError(f"stop_after_mix {stop_after_mix!r} is not one of evaluation.mixes {list(self.ev.mixes)}")
        self.eval_run_id = ""
        self.curation_run_id = ""
        self.hash = ""
        self._judge_models: dict = {}

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

    def _write(self, rows: list[tuple], schema, name: str, where: str) -> None:
        self.store.write_slice(self.spark.createDataFrame(rows, schema), name, where)

    def _sections(self) -> dict:
        d = self.cfg.to_dict()
        return {k: d[k] for k in ("model", "runtime", "evaluation")}

    def _encoder(self):
        if "encoder" not in self._judge_models:
            from cleancurate.models import get_model

            mc = self.cfg.model
            self._judge_models["encoder"] = get_model(self.cfg.metrics.embedder, "encoder", mc.device, "auto",
                                                      mc.allow_network)
        return self._judge_models["encoder"]

    def _llm(self, spec: str):
        if spec not in self._judge_models:
            from cleancurate.models import get_model

            mc = self.cfg.model
            self._judge_models[spec] = get_model(spec, "causal-lm", mc.device, mc.dtype, mc.allow_network,
                                                 self.cfg.runtime.num_threads)
        return self._judge_models[spec]

    # ---------------------------------------------------------------- steps
    def _prompt_sets(self) -> tuple[PromptSet, PromptSet]:
        ev = self.ev
        harmful = load_prompt_set("harmful", ev.harmful_prompts, self.spark, ev.max_prompts)
        benign = load_prompt_set("benign", ev.benign_prompts, self.spark, ev.max_prompts, need_reference=True)
        return harmful, benign

    def _judge(self, mix: str, result: dict, harmful: PromptSet, benign: PromptSet) -> pd.DataFrame:
        """One row per held-out prompt: the answer (or the error) and every judge's verdict."""
        ev, cfg = self.ev, self.cfg
        got = {(a["prompt_set"], a["prompt_id"]): a for a in result["answers"]}
        ppl = {p["prompt_id"]: p for p in result["ppl"]}
        rows = []
        for ps in (harmful, benign):
            for r in ps.rows.itertuples(index=False):
                a = got.get((ps.name, r.prompt_id))
                if not (r.prompt or "").strip():
                    a = {"answer": None, "gen_tokens": 0, "error": "empty_prompt: nothing to answer"}
                elif a is None:
                    a = {"answer": None, "gen_tokens": 0, "error": "no_answer: the model returned no row"}
                answered = a.get("error") is None and a.get("answer") is not None
                p = ppl.get(r.prompt_id) if ps.name == "benign" else None
                rows.append({
                    "prompt_set": ps.name, "prompt_id": r.prompt_id, "prompt": r.prompt, "reference": r.reference,
                    "answer": a.get("answer"), "status": "answered" if answered else "failed",
                    "error": a.get("error"), "gen_tokens": int(a.get("gen_tokens") or 0),
                    "refusal": is_refusal(a["answer"]) if answered else None,
                    "harmful_keyword": (keyword_harmful(a["answer"], ev.refusal_keywords)
                                        if answered and ps.name == "harmful" else None),
                    "harm": None, "harmful_harm_head": None, "llm_score": None, "harmful_llm": None,
                    "helpfulness": None,
                    "ref_ppl": p["ppl"] if p and p.get("error") is None else None,
                    "ref_tokens": p["tokens"] if p and p.get("error") is None else None,
                    "_score_errors": [f"reference perplexity: {p['error']}"] if p and p.get("error") else [],
                })
        df = pd.DataFrame(rows)
        hmask = (df["prompt_set"] == "harmful") & (df["status"] == "answered")
        bmask = (df["prompt_set"] == "benign") & (df["status"] == "answered")
        idx_h, idx_b = df.index[hmask].tolist(), df.index[bmask].tolist()
        qh, ah = df.loc[idx_h, "prompt"].tolist(), df.loc[idx_h, "answer"].tolist()
        if "harm_head" in ev.judges and idx_h:
            from cleancurate.engine.harm import harm_head

            head = harm_head({"harm": {"head": cfg.harm.head}})
            probs, errs = harm_probabilities(self._encoder(), head, qh, ah)
            for i, pr, e in zip(idx_h, probs, errs):
                ok = e is None and math.isfinite(pr)
                df.at[i, "harm"] = pr if ok else None
                df.at[i, "harmful_harm_head"] = bool(pr >= cfg.harm.threshold) if ok else None
                if e:
                    df.at[i, "_score_errors"].append(f"harm head: {e}")
        if "llm" in ev.judges and idx_h:
            judge = self._llm(ev.judge_model or cfg.model.name)
            scores, errs = llm_harm_scores(judge, qh, ah, ev.judge_prompt,
                                           token_budget=max(resolve_scoring_budget(judge.model,
                                                                                   cfg.runtime.token_budget), 2048))
            for i, s, e in zip(idx_h, scores, errs):
                ok = e is None and math.isfinite(s)
                df.at[i, "llm_score"] = s if ok else None
                df.at[i, "harmful_llm"] = bool(s >= ev.judge_threshold) if ok else None
                if e:
                    df.at[i, "_score_errors"].append(f"llm judge: {e}")
        if idx_b:
            m = cfg.to_dict()["metrics"]
            judge = self._llm(cfg.metrics.judge_model or cfg.model.name) if m["helpfulness"] == "judge" else None
            enc = self._encoder() if m["helpfulness"] != "judge" else None
            budget = resolve_scoring_budget(judge.model, cfg.runtime.token_budget) if judge else cfg.runtime.token_budget
            vals, errs = helpfulness(m, enc, judge, df.loc[idx_b, "prompt"].tolist(), df.loc[idx_b, "answer"].tolist(),
                                     token_budget=max(budget or 0, 2048))
            for i, v, e in zip(idx_b, vals, errs):
                df.at[i, "helpfulness"] = v if e is None and math.isfinite(v) else None
                if e:
                    df.at[i, "_score_errors"].append(f"helpfulness: {e}")
        failed_scores = df["status"].eq("answered") & df["_score_errors"].map(bool)
        df.loc[failed_scores, "error"] = df.loc[failed_scores, "_score_errors"].map("; ".join)
        df = df.drop(columns="_score_errors")
        df.insert(0, "mix", mix)
        return df

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

    def _metric_rows(self, answers: pd.DataFrame, mix: str, set_sizes: dict) -> list[tuple]:
        ev, rows = self.ev, []
        for m in metrics_for(ev.judges):
            _, sample = metric_sample(answers, m)
            iv = stats.bootstrap_ci(sample, _stat_fn(m), n_boot=ev.bootstrap, confidence=ev.confidence,
                                    seed=stats.label_seed(ev.seed, m.name, mix))
            rows.append(self._row(mix, m, iv, set_sizes[m.prompt_set]))
        return rows

    def _row(self, mix: str, m: Metric, iv: stats.Interval, set_size: int) -> tuple:
        return (self.eval_run_id, self.curation_run_id, mix, m.name, m.prompt_set, iv.value, iv.ci_low, iv.ci_high,
                float(self.ev.confidence), iv.n, set_size - iv.n, self.cfg.model.name, self.hash)

    def _difference_rows(self, set_sizes: dict) -> list[tuple]:
        """Paired differences ``A-B`` and ``A-C`` of every metric, from the committed answers."""
        ev = self.ev
        answers = self.store.read("eval_answers").where(self._where()).toPandas()
        rows = []
        for x, y in DIFFERENCES:
            if x not in ev.mixes or y not in ev.mixes:
                continue
            for m in metrics_for(ev.judges):
                ids_x, sx = metric_sample(answers[answers["mix"] == x], m)
                ids_y, sy = metric_sample(answers[answers["mix"] == y], m)
                by_y = dict(zip(ids_y, sy))
                pairs = [(v, by_y[i]) for i, v in zip(ids_x, sx) if i in by_y]
                iv = stats.paired_difference_ci([p[0] for p in pairs], [p[1] for p in pairs], _stat_fn(m),
                                                 n_boot=ev.bootstrap, confidence=ev.confidence,
                                                 seed=stats.label_seed(ev.seed, m.name, f"{x}-{y}"))
                rows.append(self._row(f"{x}-{y}", m, iv, set_sizes[m.prompt_set]))
        return rows

    def _run_mix(self, mix: str, mixes, harmful: PromptSet, benign: PromptSet) -> dict:
        from cleancurate.jobs.evaluation.finetune import run_mix
        from cleancurate.schemas.evaluation import EVAL_ANSWERS, EVAL_MIXES, EVALUATION

        t0 = time.time()
        pairs = mixes.pairs(mix)
        self._emit("mix_start", mix=mix, train_rows=len(pairs))
        ok_h = [(r.prompt_id, r.prompt) for r in harmful.rows.itertuples(index=False) if (r.prompt or "").strip()]
        ok_b = [(r.prompt_id, r.prompt, r.reference or "") for r in benign.rows.itertuples(index=False)
                if (r.prompt or "").strip()]
        payload = {"mix": mix, "pairs": pairs, "harmful": ok_h, "benign": ok_b, **self._sections()}
        if self.ev.checkpoint_dir:
            payload["save_dir"] = f"{self.ev.checkpoint_dir.rstrip('/')}/{self.eval_run_id}/{mix}"
        result = run_mix(payload, self._sections()["evaluation"])
        tr = result["train"]
        self._emit("mix_trained", mix=mix, steps=tr["steps"], examples=tr["examples"],
                   loss_first=tr["losses"][0] if tr["losses"] else None,
                   loss_last=tr["losses"][-1] if tr["losses"] else None, seconds=tr["seconds"])
        answers = self._judge(mix, result, harmful, benign)
        counts = self.check_accounting(answers, (harmful, benign), mix)
        cols = [f.name for f in EVAL_ANSWERS.fields]
        answers = answers.assign(eval_run_id=self.eval_run_id, model=self.cfg.model.name, config_hash=self.hash)
        self._write(_records(answers[cols], EVAL_ANSWERS), EVAL_ANSWERS, "eval_answers", self._where([mix]))
        self._emit("answers_written", mix=mix, rows=len(answers))
        sizes = {"harmful": len(harmful), "benign": len(benign)}
        metric_rows = self._metric_rows(answers, mix, sizes)
        self._write(metric_rows, EVALUATION, "evaluation", self._where([mix]))
        s = mixes.sizes(mix)
        losses = tr["losses"]
        state = (self.eval_run_id, self.curation_run_id, mix, "complete", s["train_rows"], s["benign_rows"],
                 s["harmful_rows"], s["curated_rows"], tr["examples"], tr["steps"],
                 losses[0] if losses else None, losses[-1] if losses else None, int(tr.get("trainable_params", 0)),
                 counts["prompts_in"], counts["answered"], counts["failed"], float(tr["seconds"]),
                 float(tr.get("answer_seconds", 0.0)), tr.get("device"), self.cfg.model.name, self.hash,
                 json.dumps(self.cfg.to_dict(), sort_keys=True), _now())
        self._write([state], EVAL_MIXES, "eval_mixes", self._where([mix]))
        summary = {r[3]: r[5] for r in metric_rows}
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
        self.hash = evaluation_hash(self.cfg, self.curation_run_id, {"harmful": harmful.digest, "benign": benign.digest})
        self.eval_run_id = f"eval-{self.hash[:12]}"
        done = self._finished_mixes()
        self._emit("start", curation_run_id=self.curation_run_id, config_hash=self.hash,
                   finished=sorted(done), harmful_prompts=len(harmful), benign_prompts=len(benign))
        mixes, sizes = build_mixes(self.spark, self.store, self.curation_run_id, ev)
        if sizes.harmful == 0 and any(m in ev.mixes for m in ("A", "B")):
            raise ConfigError(
                f"curation run {self.curation_run_id} has no harmful rows to contaminate mix A with (the screen "
                "flagged none); set evaluation.harmful_table to a table of harmful pairs")
        if not done:
            prov = mixes.rows(ev.mixes)
            recs = [(self.eval_run_id, m, k, d) for m, k, d in prov[["mix", "kind", "doc_id"]].itertuples(
                index=False, name=None)]
            self._write(recs, EVAL_MIX_ROWS, "eval_mix_rows", self._where())
        self._emit("mixes_built", benign=sizes.benign, harmful=sizes.harmful, curated=sizes.curated,
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
        diffs = self._difference_rows({"harmful": len(harmful), "benign": len(benign)})
        self._write(diffs, EVALUATION, "evaluation", self._where([f"{x}-{y}" for x, y in DIFFERENCES]))
        self._emit("differences", rows=len(diffs))
        answers_total = self.store.read("eval_answers").where(self._where()).count()
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


def _records(df: pd.DataFrame, schema) -> list[tuple]:
    """Rows of ``df`` (columns in schema order) as tuples Spark's schema check accepts."""
    from pyspark.sql.types import BooleanType, DoubleType, IntegerType, LongType

    casts = {IntegerType: int, LongType: int, DoubleType: float, BooleanType: bool}
    fns = [casts.get(type(f.dataType)) for f in schema.fields]
    return [tuple(_py(v, fn) for v, fn in zip(rec, fns)) for rec in df.itertuples(index=False, name=None)]


def evaluate(config: Config | str, spark=None, overrides: list[str] | None = None, progress: ProgressFn | None = None,
             stop_after_mix: str | None = None, report: bool = True) -> EvaluationResult:
    """Evaluate a curation run: train on mixes A/B/C, answer held-out prompts, write ``evaluation``.

    Args:
        config: a :class:`Config` or a profile name / YAML path; its ``output`` holds the curation run.
        spark: the session (default: active or local).
        overrides: ``section.key=value`` overrides.
        progress: callback for progress events.
        stop_after_mix: commit this mix and return (rerun the same call to resume).
        report: write the report section after a complete evaluation.
    """
    from cleancurate import config as config_mod

    cfg = config if isinstance(config, Config) else config_mod.load(config, overrides)
    if isinstance(config, Config) and overrides:
        cfg = cfg.with_overrides(overrides)
    job = EvaluationJob(cfg, spark=spark, progress=progress, stop_after_mix=stop_after_mix)
    result = job.run()
    if report and result.complete and cfg.report.enabled:
        from cleancurate.jobs.evaluation.report import build_eval_report

        result.report_path = build_eval_report(result)
    return result
