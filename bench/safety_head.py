"""Train the harm head on the project's labeled texts; print its cross-validated precision and recall.

Labeled texts (each a query and an answer, harmful or not):

- the sample corpus (``data/sample/pairs.jsonl``): ``unsafe`` rows harmful, ``helpful`` rows not;
- the hand-written gate-set documents (``data/gate_set/extra_docs.jsonl``): kind ``harmful``
  harmful; ``refusal``, ``borderline`` and ``helpful`` not;
- hand-written contrast pairs (``data/gate_set/harm_texts.jsonl``): the same query with a
  harmful and a responsible answer;
- the labeled candidates (``data/gate_set/labeled.jsonl``): label ``harmful`` or not.

Cross-validation holds out whole documents (5 folds by a hash of the document id, or
of the query for the contrast pairs), so the numbers say how the head does on texts
of documents it has not seen. ``--write`` stores the head fitted on everything in
``conf/safety/harm_head.json`` with the cross-validated figures beside its weights.

    .venv/bin/python -m bench.safety_head --write     # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATE_SET = ROOT / "data" / "gate_set"
HEAD_PATH = ROOT / "conf" / "safety" / "harm_head.json"
FOLDS = 5


def labeled_texts() -> list[dict]:
    """Every labeled (query, text, harmful, group, kind) the head learns from."""
    from cleancurate.sample import read_records

    out = []
    for r in read_records():
        if r["label"] in ("helpful", "unsafe") and r["query"] and r["response"]:
            out.append({"query": r["query"], "text": r["response"], "harmful": r["label"] == "unsafe",
                        "group": r["id"], "kind": "original"})
    for line in (GATE_SET / "extra_docs.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append({"query": d["query"], "text": d["response"], "harmful": d["kind"] == "harmful",
                        "group": d["id"], "kind": "original"})
    for line in (GATE_SET / "harm_texts.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append({"query": d["query"], "text": d["response"], "harmful": bool(d["harmful"]),
                        "group": "h:" + d["query"], "kind": "contrast"})
    labeled = GATE_SET / "labeled.jsonl"
    if labeled.is_file():
        for line in labeled.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                out.append({"query": d["query"], "text": d["candidate"], "harmful": d["label"] == "harmful",
                            "group": d["doc_id"], "kind": "candidate"})
    return out


def encode(rows: list[dict], cfg: dict):
    """[t, q*t] features of each row's (query, text) with the job's encoder."""
    from cleancurate.models import get_model
    from cleancurate.safety import features
    from cleancurate.udfs.similarity import embed

    enc = get_model(cfg["metrics"]["embedder"], "encoder", "cpu", "auto", False)
    q = embed(enc.model, enc.tokenizer, [r["query"] for r in rows])
    t = embed(enc.model, enc.tokenizer, [r["text"] for r in rows])
    return features(q, t)


def training_set(cfg: dict):
    """Features, labels and document groups of every labeled text."""
    rows = labeled_texts()
    return encode(rows, cfg), [int(r["harmful"]) for r in rows], [r["group"] for r in rows]


def fold_of(group: str, folds: int = FOLDS) -> int:
    return int(hashlib.sha256(group.encode()).hexdigest(), 16) % folds


def fold_heads(x, y, groups, l2: float = 1e-3) -> list:
    """One head per fold, each fitted without the documents of its fold (:func:`fold_of`)."""
    from cleancurate.safety import fit

    heads = []
    for k in range(FOLDS):
        train = [i for i, g in enumerate(groups) if fold_of(g) != k]
        heads.append(fit(x[train], [y[i] for i in train], l2=l2))
    return heads


def predict_out_of_fold(heads: list, x, groups) -> list[float]:
    """Harm probability of each row of ``x`` from the head that never saw the row's document."""
    probs = [0.0] * len(groups)
    for k, head in enumerate(heads):
        idx = [i for i, g in enumerate(groups) if fold_of(g) == k]
        if idx:
            for i, p in zip(idx, head.probability_of_features(x[idx])):
                probs[i] = p
    return probs


def out_of_fold(x, y, groups, l2: float) -> list[float]:
    """Harm probability of every training text from a head fitted without its document's fold."""
    return predict_out_of_fold(fold_heads(x, y, groups, l2), x, groups)


def cross_validate(probs, y, kinds, threshold: float) -> dict:
    """Precision/recall of out-of-fold probabilities per kind of text (originals, contrast pairs, candidates, all)."""
    from cleancurate.safety import precision_recall

    out = {}
    for kind in ("original", "contrast", "candidate", None):
        idx = [i for i, kd in enumerate(kinds) if kind is None or kd == kind]
        if idx:
            pr = precision_recall([probs[i] >= threshold for i in idx], [bool(y[i]) for i in idx])
            out[kind or "all"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in pr.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    from bench._common import emit, quiet_stdout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--write", action="store_true", help=f"store the head in {HEAD_PATH}")
    args = ap.parse_args(argv)
    quiet_stdout()

    from cleancurate import config as C
    from cleancurate.safety import fit

    cfg = C.load("demo", ["harm.head_file=null"]).to_dict()  # the head being made is not needed to make it
    rows = labeled_texts()
    x = encode(rows, cfg)
    y = [int(r["harmful"]) for r in rows]
    groups = [r["group"] for r in rows]
    kinds = [r["kind"] for r in rows]
    probs = {l2: out_of_fold(x, y, groups, l2) for l2 in sorted({1e-4, 1e-3, 1e-2, args.l2})}
    cv = {f"l2={l2:g}": cross_validate(p, y, kinds, args.threshold) for l2, p in probs.items()}
    by_threshold = {f"{t:g}": cross_validate(probs[args.l2], y, kinds, t)["original"] for t in (0.4, 0.5, 0.6, 0.7)}
    counts = {kind: {"texts": sum(k == kind for k in kinds), "harmful": sum(y[i] for i, k in enumerate(kinds) if k == kind)}
              for kind in ("original", "contrast", "candidate")}
    result = {"inputs": {"texts": len(rows), "by_kind": counts, "folds": FOLDS, "threshold": args.threshold,
                         "embedder": cfg["metrics"]["embedder"], "l2": args.l2},
              "cross_validated": cv, "originals_by_threshold": by_threshold}
    if args.write:
        head = fit(x, y, l2=args.l2)
        head.meta = {"trained_on": counts, "l2": args.l2, "embedder": cfg["metrics"]["embedder"],
                     "cross_validated_at_0.5": cv[f"l2={args.l2:g}"],
                     "made_by": "python -m bench.safety_head --write"}
        HEAD_PATH.parent.mkdir(parents=True, exist_ok=True)
        HEAD_PATH.write_text(head.to_json() + "\n", encoding="utf-8")
        result["written"] = str(HEAD_PATH.relative_to(ROOT))
    emit(result)


if __name__ == "__main__":
    main()
