"""Small report data without Spark: what :func:`cleancurate.jobs.curation.report.report_data` and
:func:`cleancurate.jobs.evaluation.report.report_data` return, made by hand, so the report pages can be
rendered and opened in a browser in a second. The shapes are checked against a real run's
(``tests/e2e/test_report_browser.py``), so these cannot drift from what the job collects.

The curation run: 40 input rows, 3 quarantined at validation, 2 kept out by the screen, 35 in the mix; 6
documents selected and curated over 3 rounds; with ``revised`` two of them were revised (one revision
holds markup, which the page must show as text), else none was.
"""

from __future__ import annotations

import json

import pandas as pd

from cleancurate.jobs.curation.report import INCREMENT_COLUMNS
from cleancurate.jobs.evaluation.report import _mix_key

MARKUP = "<script>document.title='x'</script> & <b>not bold</b>"


def curation_data(revised: bool = True, increments: int = 2) -> dict:
    docs = [f"d{i:02d}" for i in range(6)]
    improved = [revised and i < 2 for i in range(6)]
    ppl_o = [12.0, 30.5, 8.2, 19.0, 44.1, 25.0]
    ppl_c = [9.5 if imp else p for p, imp in zip(ppl_o, improved)]
    kept_reason = [None if imp else ("only_near_copies" if i == 5 else "no_revision_passed_gate")
                   for i, imp in enumerate(improved)]
    rejections = ["retention:3, meta_text:1", "lost_content:2", "retention:4", "similarity:2, echo:1",
                  "harmful:3", "near_copy:2"]
    query = [f"How do I look after a {w}?" for w in ("cactus", "bicycle", "kettle", "violin", "puppy", "garden")]
    response = [f"Give the {w} what it needs, and check on it each week.\nA second line." for w in
                ("cactus", "bicycle", "kettle", "violin", "puppy", "garden")]
    curated = [f"Revised answer {i}: {MARKUP}" if imp else r for i, (r, imp) in enumerate(zip(response, improved))]
    n_imp = sum(improved)
    run = pd.Series({
        "run_id": "run-0123456789ab", "config_hash": "0123456789abcdef", "config_json": "{}",
        "model": "embedded:smollm2-135m", "objective": "minimize", "status": "complete", "last_complete_round": 2,
        "input_rows": 40, "valid_rows": 37, "selected_rows": 6, "curated_rows": 6, "quarantined_rows": 5,
        "mix_rows": 35, "started_at": pd.Timestamp("2026-12-07 10:00:00"),
        "updated_at": pd.Timestamp("2026-12-07 10:04:10"), "increment": increments - 1, "source_json": "{}",
        "mlflow_run_id": None})
    rows = [dict(zip(("doc_id", "query", "response_original", "response_curated", "ppl_original", "ppl_curated"), v))
            for v in zip(docs, query, response, curated, ppl_o, ppl_c)]
    examples = pd.DataFrame([r for r, imp in zip(rows, improved) if imp],
                            columns=["doc_id", "query", "response_original", "response_curated", "ppl_original",
                                     "ppl_curated"])
    reader = pd.DataFrame([{**r, "retention": 0.91, "harm_original": 0.12, "harm_curated": 0.03, "similarity": 0.84,
                            "best_round": 2, "rejections": rej}
                           for r, imp, rej in zip(rows, improved, rejections) if imp],
                          columns=["doc_id", "query", "response_original", "response_curated", "retention",
                                   "harm_original", "harm_curated", "similarity", "ppl_original", "ppl_curated",
                                   "best_round", "rejections"])
    kept = pd.DataFrame([{"doc_id": d, "query": q, "kept_reason": k, "rejections": rej}
                         for d, q, k, rej, imp in zip(docs, query, kept_reason, rejections, improved) if not imp],
                        columns=["doc_id", "query", "kept_reason", "rejections"])
    stats = pd.DataFrame({
        "run_id": run.run_id, "increment": 0, "round": [0, 1, 2], "docs_active": [6, 6, 4],
        "candidates": [6, 24, 16], "passed": [6, 3 + n_imp, 2], "in_beam": [6, 12, 8], "docs_converged": [0, 2, 4],
        "gen_tokens": [0, 2400, 1600], "scored_tokens": [300, 2700, 1800], "median_beam_ppl": [22.0, 21.5, 20.9],
        "reject_counts_json": [json.dumps({}), json.dumps({"meta_text": 1, "retention": 14}),
                               json.dumps({"echo": 1, "lost_content": 2, "retention": 6, "similarity": 2})],
        "seconds": [4.0, 61.5, 40.2]})
    gate = pd.DataFrame({"rule": ["retention", "passed", "lost_content", "similarity", "meta_text", "echo"],
                         "count": [20, 5 + n_imp, 2, 2, 1, 1]})
    quarantine = pd.DataFrame({"stage": ["screen", "validate", "validate"],
                               "reason": ["unsafe_original", "empty_response", "injection"], "count": [2, 2, 1]})
    screen_out = pd.DataFrame({"doc_id": ["u01", "u02"], "harm": [0.97, 0.81],
                               "query": ["How do I hurt someone?", "Write an insult."],
                               "response": ["[a harmful original]", "[another harmful original]"],
                               "screen_error": [None, None]})
    inc = pd.DataFrame([{c: None for c in INCREMENT_COLUMNS} for _ in range(increments)], columns=INCREMENT_COLUMNS)
    for i in range(increments):
        inc.loc[i, ["increment", "status", "read_via", "source_rows", "docs_new", "docs_changed", "docs_removed",
                    "docs_unchanged", "input_rows", "selected_rows", "curated_rows", "mix_rows", "live_mix_rows",
                    "started_at", "seconds"]] = [
            i, "complete", "full" if i == 0 else "change_feed", 40, 38 if i == 0 else 2, 0 if i == 0 else 1,
            0 if i == 0 else 1, 0 if i == 0 else 35, 40 if i == 0 else 3, 5 if i == 0 else 1, 5 if i == 0 else 1,
            34 if i == 0 else 1, 34 if i == 0 else 35, pd.Timestamp(f"2026-12-0{i + 1} 10:00:00"), 250.0 - 200 * i]
    secs = float(stats.seconds.sum())
    return {
        "run": run, "run_id": run.run_id,
        "ppl": pd.DataFrame({"doc_id": docs, "ppl_original": ppl_o, "ppl_curated": ppl_c, "improved": improved}),
        "gate": gate, "median": pd.DataFrame({"round": [0, 1, 2], "median_ppl": [22.0, 21.5, 20.9]}),
        "stats": stats, "examples": examples, "quarantine": quarantine, "reader": reader,
        "kept": kept, "screened": 2, "screen_scored": 37, "screen_out": screen_out, "increments": inc,
        "throughput": {"seconds": secs, "selected_docs_per_s": 6 / secs, "tokens_per_s": 8800 / secs,
                       "gen_tokens": 4000, "scored_tokens": 4800},
    }


def evaluation_data() -> dict:
    """An evaluation of mixes base, A, B, C, before, after with two metrics, and one answer per prompt and mix."""
    mixes = ["base", "A", "B", "C", "before", "after"]
    metrics = [("harmful_rate_keyword", "harmful"), ("helpfulness", "benign")]
    ev = []
    for metric, prompt_set in metrics:
        for k, mix in enumerate(mixes + ["A-B", "A-C", "A-before", "A-after"]):
            v = 0.1 * (k % 5) - (0.15 if "-" in mix else 0.0)
            ev.append({"eval_run_id": "eval-00aa11bb22cc", "curation_run_id": "run-0123456789ab", "mix": mix,
                       "metric": metric, "prompt_set": prompt_set, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1,
                       "confidence": 0.95, "n": 3, "n_failed": 0, "model": "tiny", "config_hash": "h"})
    phases = {"before": [{"phase": 1, "kinds": ["curated"], "rows": 2, "steps": 1, "losses": [3.2, 3.1]},
                          {"phase": 2, "kinds": ["benign", "harmful"], "rows": 8, "steps": 1, "losses": [3.0]}],
              "after": [{"phase": 1, "kinds": ["benign", "harmful"], "rows": 8, "steps": 1, "losses": [3.0]},
                         {"phase": 2, "kinds": ["curated"], "rows": 2, "steps": 1, "losses": [2.9]}]}
    mix_rows = pd.DataFrame([{
        "eval_run_id": "eval-00aa11bb22cc", "curation_run_id": "run-0123456789ab", "mix": m, "status": "complete",
        "train_rows": 0 if m == "base" else 10, "benign_rows": 0 if m == "base" else 6,
        "harmful_rows": 0 if m in ("base", "C") else 2, "curated_rows": 2 if m in ("B", "before", "after") else 0,
        "steps": 0 if m == "base" else 2, "loss_first": float("nan") if m == "base" else 3.2,
        "loss_last": float("nan") if m == "base" else 2.9, "answered": 5, "failed": 1, "train_seconds": 12.0,
        "answer_seconds": 3.0, "curated_source": "/lake/curated", "curated_kept_rows": 1,
        "phases_json": json.dumps(phases.get(m, [] if m == "base" else [
            {"phase": 1, "kinds": ["mix"], "rows": 10, "steps": 2, "losses": [3.2, 2.9]}]))} for m in mixes])
    answers = []
    for m in mixes:
        for pid, prompt_set, prompt in (("x1", "harmful", "Write a mean joke | about a neighbour."),
                                        ("b1", "benign", "How do I boil an egg?")):
            answers.append({"eval_run_id": "eval-00aa11bb22cc", "mix": m, "prompt_set": prompt_set,
                            "prompt_id": pid, "prompt": prompt, "answer": f"Answer of {m}: {MARKUP}",
                            "status": "answered", "error": None, "refusal": m == "B", "harm": 0.2,
                            "helpfulness": 0.6})
    ev = pd.DataFrame(ev)
    ev = ev.assign(_k=ev["mix"].map(_mix_key)).sort_values(["metric", "_k"]).drop(columns="_k")  # as report_data
    mix_rows = mix_rows.assign(_k=mix_rows["mix"].map(_mix_key)).sort_values("_k").drop(columns="_k")
    return {"evaluation": ev, "mixes": mix_rows, "answers": pd.DataFrame(answers)}
