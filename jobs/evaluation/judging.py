"""Judging one mix's answers: one row per held-out prompt with the answer (or why there is none) and every verdict.

The job trains and generates; this module turns what came back into the rows of
``eval_answers``. It decides what counts as answered (an empty prompt or a missing
answer becomes a failed row with its reason, so every prompt is accounted for), runs
the configured judges of :mod:`cleancurate.jobs.evaluation.judges` on the answered
rows only, and records a judge's failure in the row's ``error`` rather than dropping
the row. The models the judges need are loaded by the caller (``models``), once per
job and only when a judge asks for them.
"""

from __future__ import annotations

import math
from typing import Protocol

import pandas as pd

from cleancurate.batching import resolve_scoring_budget
from cleancurate.config import EvaluationRunConfig
from cleancurate.jobs.evaluation.judges import harm_probabilities, helpfulness, keyword_harmful, llm_harm_scores
from cleancurate.jobs.evaluation.promptsets import PromptSet
from cleancurate.refusal import is_refusal


class JudgeModels(Protocol):
    """Where the judges get their models; each is loaded on first use."""

    def encoder(self): ...

    def llm(self, spec: str): ...

    def harm(self):
        """The configured harm check: ``fn(prompts, answers) -> DataFrame[harm, error]``."""


def _prompt_rows(result: dict, harmful: PromptSet, benign: PromptSet, refusal_keywords) -> list[dict]:
    """Every held-out prompt with its answer or error, the refusal and keyword verdicts and reference perplexity."""
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
                "harmful_keyword": (keyword_harmful(a["answer"], refusal_keywords)
                                    if answered and ps.name == "harmful" else None),
                "harm": None, "harmful_harm_head": None, "llm_score": None, "harmful_llm": None,
                "helpfulness": None,
                "ref_ppl": p["ppl"] if p and p.get("error") is None else None,
                "ref_tokens": p["tokens"] if p and p.get("error") is None else None,
                "_score_errors": [f"reference perplexity: {p['error']}"] if p and p.get("error") else [],
            })
    return rows


def judge_answers(mix: str, result: dict, harmful: PromptSet, benign: PromptSet, cfg: EvaluationRunConfig,
                  models: JudgeModels) -> pd.DataFrame:
    """One row per held-out prompt of ``mix``: the answer (or the error) and every judge's verdict.

    ``result`` is what the mix's fine-tune returned (``answers`` and reference ``ppl``);
    the columns are those of ``eval_answers`` less the run's id, model and hash.
    """
    ev = cfg.evaluation
    df = pd.DataFrame(_prompt_rows(result, harmful, benign, ev.refusal_keywords))
    hmask = (df["prompt_set"] == "harmful") & (df["status"] == "answered")
    bmask = (df["prompt_set"] == "benign") & (df["status"] == "answered")
    idx_h, idx_b = df.index[hmask].tolist(), df.index[bmask].tolist()
    qh, ah = df.loc[idx_h, "prompt"].tolist(), df.loc[idx_h, "answer"].tolist()
    if "harm" in ev.judges and idx_h:
        probs, errs = harm_probabilities(models.harm(), qh, ah)
        for i, pr, e in zip(idx_h, probs, errs):
            ok = e is None and math.isfinite(pr)
            df.at[i, "harm"] = pr if ok else None
            df.at[i, "harmful_harm_head"] = bool(pr >= cfg.harm.threshold) if ok else None
            if e:
                df.at[i, "_score_errors"].append(f"harm check: {e}")
    if "llm" in ev.judges and idx_h:
        judge = models.llm(ev.judge_model or cfg.model.name)
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
        m = cfg.metrics
        judge = models.llm(m.judge_model or cfg.model.name) if m.helpfulness == "judge" else None
        enc = models.encoder() if m.helpfulness != "judge" else None
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
