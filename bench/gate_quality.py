"""How well the gate keeps what a reader accepts: precision and recall on the labeled gate set.

Re-scores every labeled candidate of ``data/gate_set/labeled.jsonl`` with the job's own
scorer (:func:`cleancurate.engine.scorer.score_candidates`: the embedded model's
perplexity and retention, the encoder's similarity, helpfulness and harm) against its
document's original, applies each profile's gate (:func:`cleancurate.gate.apply_gate`)
and prints one JSON object:

- per profile: how many candidates passed, **precision** (share of passed candidates a
  reader labeled ``acceptable``), **recall** (share of acceptable candidates that
  passed), how many of each fault got through, and rejections per rule; once for the
  gate alone (every candidate, whatever its original) and once as the job runs it
  (``with_screen``: candidates of originals the safety screen flags are never made);
- the harm check on candidates (``harm >= harm.gate_threshold``, the gate's rule) and
  on originals (``harm >= harm.threshold``, the screen) against the ``harmful`` labels.

The harm head was trained on these labels, so by default every text is scored by a
head refitted without its own document (``--harm out_of_fold``, 5 folds grouped by
document): the numbers then say how the check does on documents it has not seen.
``--harm shipped`` uses the head in ``conf/safety/``.

    .venv/bin/python -m bench.gate_quality                 # ~3 min on 2 cores
    .venv/bin/python -m bench.gate_quality --dump /tmp/gate.jsonl   # per-candidate scores and decisions
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cleancurate.config import Config

ROOT = Path(__file__).resolve().parent.parent
LABELED = ROOT / "data" / "gate_set" / "labeled.jsonl"
FAULTS = ("wrong_fact", "lost_content", "not_an_answer", "incoherent", "meta_or_echo", "harmful", "off_topic")
# not a revision at all: the job keeps the original for it, so it is neither a pass that counts nor a fault
NEAR_COPY = "near_copy"
LABELS = ("acceptable", NEAR_COPY) + FAULTS


def read_labeled(path: Path = LABELED) -> list[dict]:
    """The labeled candidates; raises ValueError naming the line of a bad label."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("label") not in LABELS:
            raise ValueError(f"{path}:{i}: label {row.get('label')!r} is not one of {list(LABELS)}")
        rows.append(row)
    return rows


def score_rows(rows: list[dict], cfg: Config) -> tuple[list[dict], list[dict]]:
    """Scores of every candidate and of each distinct (query, original), as the job computes them.

    ``cfg``: the configuration whose scorer runs (its models are loaded on the CPU, never downloaded).
    """
    from cleancurate.engine.scorer import score_candidates
    from cleancurate.models import load

    cfg = cfg.with_overrides(["model.device=cpu", "model.allow_network=false"])
    lm, enc = load(cfg, "lm"), load(cfg, "encoder")
    docs = list(dict.fromkeys((r["query"], r["original"]) for r in rows))
    ref = score_candidates(lm, enc, None, [q for q, _ in docs], [o for _, o in docs], [o for _, o in docs],
                           strip=False, cfg=cfg)
    cand = score_candidates(lm, enc, None, [r["query"] for r in rows], [r["candidate"] for r in rows],
                            [r["original"] for r in rows], strip=True, cfg=cfg)
    return cand.to_dict("records"), [dict(zip(("query", "original"), d), **s) for d, s in
                                     zip(docs, ref.to_dict("records"))]


def evaluate(rows: list[dict], decisions: list[str | None]) -> dict:
    """Precision and recall of ``passed`` against the labels, and faults that got through.

    Near-copies (label ``near_copy``) are left out of precision: passing one is no
    revision, and the job keeps the original for it. Precision and recall carry Wilson
    95% intervals and their n.
    """
    from bench._common import wilson_rate

    passed = [d is None for d in decisions]
    ok = [r["label"] == "acceptable" for r in rows]
    near = [r["label"] == NEAR_COPY for r in rows]
    n_pass = sum(p and not c for p, c in zip(passed, near))
    tp = sum(p and a for p, a in zip(passed, ok))
    through = Counter(r["label"] for r, p in zip(rows, passed) if p and r["label"] not in ("acceptable", NEAR_COPY))
    return {
        "passed": sum(passed),
        "near_copies_passed": sum(p and c for p, c in zip(passed, near)),
        "precision": wilson_rate(tp, n_pass) if n_pass else None,
        "recall": wilson_rate(tp, sum(ok)) if sum(ok) else None,
        "acceptable_passed": tp,
        "faults_passed": {f: through.get(f, 0) for f in FAULTS},
        "rejected_by_rule": dict(sorted(Counter(d for d in decisions if d).items())),
    }


def evaluate_by_split(rows: list[dict], decisions: list[str | None]) -> dict:
    """:func:`evaluate` over all rows, and once per ``split`` when the rows carry one."""
    out = {"all": evaluate(rows, decisions)}
    for split in sorted({r["split"] for r in rows if r.get("split")}):
        idx = [i for i, r in enumerate(rows) if r.get("split") == split]
        out[split] = evaluate([rows[i] for i in idx], [decisions[i] for i in idx])
    return out


def main(argv: list[str] | None = None) -> None:
    from bench._common import emit, quiet_stdout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="demo,paper,buckle_up")
    ap.add_argument("--harm", choices=("out_of_fold", "shipped"), default=None,
                    help="out_of_fold (default for the project's own set, which trained the head) or shipped "
                         "(default for any other file)")
    ap.add_argument("--labeled", default=str(LABELED))
    ap.add_argument("--dump", help="write per-candidate scores and decisions here (JSONL)")
    args = ap.parse_args(argv)
    quiet_stdout()

    import pandas as pd

    from bench.safety_head import encode, predict_out_of_fold, shipped_fold_heads
    from cleancurate import config as C
    from cleancurate.gate import GateSettings, apply_gate
    from cleancurate.safety import HarmHead, precision_recall

    t0 = time.time()
    rows = read_labeled(Path(args.labeled))
    if args.harm is None:
        args.harm = "out_of_fold" if Path(args.labeled).resolve() == LABELED.resolve() else "shipped"
    profiles = {name: C.load(name) for name in args.profiles.split(",")}
    base = next(iter(profiles.values()))
    cand_scores, ref_scores = score_rows(rows, base)
    t_score = time.time() - t0
    refs = {(r["query"], r["original"]): r for r in ref_scores}

    # harm scores: the shipped head, or heads refitted without each text's own document
    if args.harm == "out_of_fold":
        heads = shipped_fold_heads(base)
        cx = encode([{"query": r["query"], "text": r["candidate"]} for r in rows], base)
        ox = encode([{"query": r["query"], "text": r["original"]} for r in ref_scores], base)
        cand_harm = predict_out_of_fold(heads, cx, [r["doc_id"] for r in rows])
        doc_of = {(r["query"], r["original"]): r["doc_id"] for r in rows}
        ref_harm = predict_out_of_fold(heads, ox, [doc_of[(r["query"], r["original"])] for r in ref_scores])
        for s, h in zip(cand_scores, cand_harm):
            s["harm"] = h
        for s, h in zip(ref_scores, ref_harm):
            s["harm"] = h

    frame = pd.DataFrame(cand_scores)
    frame["text"] = frame["clean_text"]
    frame["dup"] = [c.strip().lower() == r["original"].strip().lower() for c, r in zip(frame.text, rows)]
    for col in ("ppl", "readability", "helpfulness", "safety", "harm"):
        frame[f"ref_{col}"] = [refs[(r["query"], r["original"])][col] for r in rows]

    result = {"inputs": {
        "labeled": args.labeled, "candidates": len(rows), "documents": len({r["doc_id"] for r in rows}),
        "labels": dict(Counter(r["label"] for r in rows).most_common()),
        "splits": dict(Counter(r.get("split") or "-" for r in rows).most_common()),
        "harm_scores": args.harm, "model": base.model.name, "embedder": base.metrics.embedder,
    }, "profiles": {}}
    decisions_by_profile = {}
    for name, cfg in profiles.items():
        gated = apply_gate(frame, GateSettings.from_config(cfg))
        decisions = [None if pd.isna(x) else x for x in gated["reject_reason"]]
        # the job never curates an original the safety screen flags: its candidates are never made
        screened = [refs[(r["query"], r["original"])]["harm"] >= cfg.harm.threshold for r in rows]
        job = ["screened_original" if s else dec for s, dec in zip(screened, decisions)]
        decisions_by_profile[name] = job
        result["profiles"][name] = {"objective": cfg.curation.objective,
                                    "gate_alone": evaluate_by_split(rows, decisions),
                                    "with_screen": evaluate_by_split(rows, job)}

    harm_cfg = profiles[next(iter(profiles))].harm
    threshold, gate_threshold = harm_cfg.threshold, harm_cfg.gate_threshold
    result["harm_check"] = {
        "threshold": threshold, "gate_threshold": gate_threshold,
        "candidates": precision_recall([s["harm"] >= gate_threshold for s in cand_scores],
                                       [r["label"] == "harmful" for r in rows]),
        "originals": precision_recall(
            [s["harm"] >= threshold for s in ref_scores],
            [_original_harmful(rows, s) for s in ref_scores]),
    }
    if args.harm == "shipped":
        result["harm_check"]["head"] = HarmHead.from_json(base.harm.head).meta
    result["timings"] = {"scoring_s": round(t_score, 1), "total_s": round(time.time() - t0, 1)}
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as f:
            for r, s, i in zip(rows, cand_scores, range(len(rows))):
                f.write(json.dumps({**r, **{k: s[k] for k in ("ppl", "retention", "similarity", "helpfulness", "harm",
                                                              "meta_text", "form_fault", "length_ratio")},
                                    "decisions": {p: dec[i] for p, dec in decisions_by_profile.items()}},
                                   default=str) + "\n")
    emit(result)


def _original_harmful(rows: list[dict], ref: dict) -> bool:
    for r in rows:
        if r["query"] == ref["query"] and r["original"] == ref["original"]:
            return bool(r.get("original_harmful"))
    return False


if __name__ == "__main__":
    main()
