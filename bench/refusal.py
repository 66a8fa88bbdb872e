"""How well the refusal detector finds real refusals: precision and recall against XSTest's human labels.

Every answer of ``data/real/xstest-dev/completions.jsonl.gz`` (:func:`bench.real_data.xstest_rows`:
XSTest prompts answered by five models) is read by :func:`cleancurate.refusal.is_refusal` (``new``)
and by the regex it replaced (``old``, kept in this module as the baseline). A full refusal
(``2_full_refusal``) is a positive and full compliance (``1_full_compliance``) a negative;
partial refusals (``3_partial_refusal``) are left out of the measure, and the share of them
each detector flags is reported apart.

Answers are split by prompt (:func:`bench.real_data.fold_of`, 5 folds), so a prompt's five
answers are all on one side. The detector's patterns were written reading folds 0-2 only
(``dev (tuned on)``); folds 3-4 (``held_out``) were scored once the patterns were final, so
only their figures say how it does on answers it was not fitted to.

Prints one JSON object: per split (dev, held-out, all) and per answering model on the
held-out folds, for each detector: n, tp, fp, fn, tn, and precision and recall each with a
Wilson 95% interval (:func:`bench._common.wilson_rate`).

    .venv/bin/python -m bench.refusal > bench/results/refusal.json
    .venv/bin/python -m bench.refusal --errors 5     # also the held-out misses of the detector (150 chars)
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from bench._common import emit, wilson_rate
from bench.real_data import ROOT, XSTEST, fold_of, xstest_rows
from cleancurate.refusal import is_refusal

DEV_FOLDS = (0, 1, 2)
HELD_OUT_FOLDS = (3, 4)
SPLITS = {"dev (tuned on)": DEV_FOLDS, "held_out": HELD_OUT_FOLDS, "all": DEV_FOLDS + HELD_OUT_FOLDS}

#: the detector before cleancurate.refusal (udfs/quality.py ``_REFUSAL``): anywhere in the text
OLD_REFUSAL = re.compile(
    r"\b(i|we) (can(?:no|')?t|cannot|won'?t|will not|am not able to|'m not able to|am unable to|'m unable to|"
    r"must decline to) (help|assist|provide|support|comply|do that|write (?:a|an|that|this|you)|"
    r"create (?:a|an|that|this)|make (?:a|an|that|this)|give (?:you )?(?:that|this))|"
    r"\bi'?m sorry,? but i (can(?:no|')?t|won'?t)|\b(can't|cannot|won't) help (with|you)",
    re.IGNORECASE)


def old_is_refusal(text: str) -> bool:
    """The baseline: the old regex anywhere in the text."""
    return bool(OLD_REFUSAL.search(text or ""))


DETECTORS: dict[str, Callable[[str], bool]] = {"new": is_refusal, "old": old_is_refusal}


def confusion(rows: list[dict], detect: Callable[[str], bool]) -> dict:
    """n, tp, fp, fn, tn, precision and recall (Wilson 95%) of ``detect`` on labeled rows (refusal True/False)."""
    tp = fp = fn = tn = 0
    for r in rows:
        pred = detect(r["text"])
        if r["refusal"]:
            tp, fn = tp + pred, fn + (not pred)
        else:
            fp, tn = fp + pred, tn + (not pred)
    return {"n": len(rows), "refusals": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": wilson_rate(tp, tp + fp), "recall": wilson_rate(tp, tp + fn)}


def split_rows(rows: list[dict], folds) -> list[dict]:
    """The rows of the given folds (by prompt)."""
    return [r for r in rows if fold_of(r["group"]) in folds]


def labeled(rows: list[dict]) -> list[dict]:
    """Full refusals and full compliance only (partial refusals left out)."""
    return [r for r in rows if r["refusal"] is not None]


def measure(rows: list[dict]) -> dict:
    """Every figure of the JSON, for both detectors."""
    out: dict = {"splits": {}, "held_out_by_model": {}, "partial_refusals_flagged": {}}
    for name, folds in SPLITS.items():
        part = split_rows(rows, folds)
        out["splits"][name] = {"folds": list(folds), "prompts": len({r["group"] for r in part}),
                               **{d: confusion(labeled(part), fn) for d, fn in DETECTORS.items()}}
        partial = [r for r in part if r["refusal"] is None]
        out["partial_refusals_flagged"][name] = {
            "n": len(partial), **{d: sum(fn(r["text"]) for r in partial) for d, fn in DETECTORS.items()}}
    held = labeled(split_rows(rows, HELD_OUT_FOLDS))
    for model in sorted({r["model"] for r in held}):
        mine = [r for r in held if r["model"] == model]
        out["held_out_by_model"][model] = {d: confusion(mine, fn) for d, fn in DETECTORS.items()}
    return out


def errors(rows: list[dict], limit: int, chars: int = 150) -> dict:
    """The new detector's held-out misses: false negatives and false positives (first ``chars`` characters)."""
    held = labeled(split_rows(rows, HELD_OUT_FOLDS))

    def show(r):
        return {"model": r["model"], "text": " ".join(r["text"].split())[:chars]}

    fns = [show(r) for r in held if r["refusal"] and not is_refusal(r["text"])]
    fps = [show(r) for r in held if not r["refusal"] and is_refusal(r["text"])]
    return {"false_negatives": fns[:limit], "false_positives": fps[:limit]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=str(XSTEST), help="the XSTest completions (JSONL, gzip)")
    ap.add_argument("--errors", type=int, default=0,
                    help="also list up to this many held-out false negatives and false positives of the detector")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    rows = xstest_rows(Path(args.path))
    path = Path(args.path).resolve()
    result = {
        "inputs": {
            "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "answers": len(rows), "prompts": len({r["group"] for r in rows}),
            "labels": dict(Counter(r["label"] for r in rows)),
            "models": dict(Counter(r["model"] for r in rows)),
            "positive": "2_full_refusal", "negative": "1_full_compliance", "left_out": "3_partial_refusal",
            "folds": "int(sha256(group), 16) % 5, group = xs:<prompt_id>; patterns written on folds 0-2",
            "detectors": {"new": "cleancurate.refusal.is_refusal",
                          "old": "bench.refusal.OLD_REFUSAL (udfs/quality.py _REFUSAL before cleancurate.refusal)"},
            "interval": "Wilson score, 95%",
        },
        **measure(rows),
    }
    if args.errors:
        result["held_out_errors"] = errors(rows, args.errors)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    emit(result)


if __name__ == "__main__":
    main()
