"""Train the harm head on real labels and print its out-of-fold figures with intervals.

What it learns from (``P`` = a labeled row, ``pair`` = one answer more harmful than another):

- XSTest answers of five models (``data/real/xstest-dev``), P: harmful when the answer
  fully complies with an unsafe prompt;
- hh-rlhf red-team dialogues (``data/real/hh-rlhf-multiturn``), pair: the rejected
  final answer is more harmful than the chosen one for the same conversation;
- the project's own labeled texts, P: the sample corpus (``unsafe`` vs ``helpful``),
  the hand-written documents and contrast pairs, and the labeled candidates of
  ``data/gate_set/``.

Every figure is out of fold. Rows are grouped (XSTest prompt, hh-rlhf dialogue,
project document) and fold ``int(sha256(group), 16) % 5`` is scored by a head that
never saw a row of its groups. Inside each outer fold's training folds, a nested
cross-validation chooses the regularisation and the pairwise weight (mean of XSTest
AUC and hh-rlhf pairwise AUC) and then the threshold (best XSTest F1 among those
that flag at most ``--max-flag`` of the less harmful hh-rlhf answers); the outer fold
never takes part in either choice. Figures: XSTest AUC with a bootstrap interval
resampled by prompt; XSTest precision and recall at each fold's own threshold and at
the shipped one (Wilson); hh-rlhf pairwise AUC (share of pairs ranked right,
Wilson); the share of less and more harmful hh-rlhf answers flagged; precision and
recall on the project's labeled originals. The previous head
(``bench/results/harm_head_previous.json``, trained on the project's texts only) is
measured on the same real rows, none of which it saw.

``--write`` runs the same selection on all folds, fits the head on everything and
stores it in ``conf/safety/harm_head.json`` with its threshold and these figures.

    .venv/bin/python -m bench.safety_head --write     # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bench._common import wilson_rate
from bench.real_data import fold_of, hh_pairs, xstest_rows

if TYPE_CHECKING:
    from cleancurate.config import Config

ROOT = Path(__file__).resolve().parent.parent
GATE_SET = ROOT / "data" / "gate_set"
HEAD_PATH = ROOT / "conf" / "safety" / "harm_head.json"
PREVIOUS_HEAD = ROOT / "bench" / "results" / "harm_head_previous.json"
FOLDS = 5
L2_GRID = (3e-3, 1e-2, 3e-2)
PAIR_WEIGHT_GRID = (0.5, 1.0, 2.0)
GATE_RECALL = 0.85  # the gate's threshold: the highest that still catches this share of harmful XSTest answers
THRESHOLDS = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))
BOOTSTRAP = 1000


def labeled_texts() -> list[dict]:
    """The project's own labeled (query, text, harmful, group, kind) rows."""
    from cleancurate.sample import read_records

    out = []
    for r in read_records():
        if r["label"] in ("helpful", "unsafe") and r["query"] and r["response"]:
            out.append({"query": r["query"], "text": r["response"], "harmful": r["label"] == "unsafe",
                        "group": r["id"], "kind": "original"})
    for d in _jsonl(GATE_SET / "extra_docs.jsonl"):
        out.append({"query": d["query"], "text": d["response"], "harmful": d["kind"] == "harmful",
                    "group": d["id"], "kind": "original"})
    for d in _jsonl(GATE_SET / "harm_texts.jsonl"):
        out.append({"query": d["query"], "text": d["response"], "harmful": bool(d["harmful"]),
                    "group": "h:" + d["query"], "kind": "contrast"})
    for d in _jsonl(GATE_SET / "labeled.jsonl"):
        out.append({"query": d["query"], "text": d["candidate"], "harmful": d["label"] == "harmful",
                    "group": d["doc_id"], "kind": "candidate"})
    return out


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def embed_rows(rows: list[dict], cfg: Config):
    """Query and text embeddings of each row with the job's encoder (torch, n x d each), on the CPU."""
    from cleancurate.engine.embedding import embed
    from cleancurate.models import load

    enc = load(cfg.with_overrides(["model.device=cpu", "model.allow_network=false"]), "encoder")
    return embed(enc.model, enc.tokenizer, [r["query"] for r in rows]), \
        embed(enc.model, enc.tokenizer, [r["text"] for r in rows])


def encode(rows: list[dict], cfg: Config, spec: str | None = None):
    """Features of each row's (query, text) with the job's encoder (``spec``: the head's parts)."""
    from cleancurate.safety import FEATURES, features

    return features(*embed_rows(rows, cfg), spec or FEATURES)


@dataclass
class TrainingData:
    """Labeled rows (``x``, ``y``, ``groups``, ``kinds``) and pairs (``xa`` more harmful than ``xb``)."""

    x: object
    y: list[int]
    groups: list[str]
    kinds: list[str]
    xa: object
    xb: object
    pair_groups: list[str]
    texts: list[str]
    more_texts: list[str]
    less_texts: list[str]
    embeddings: tuple  # (q, t) of every row, then of every rejected and every chosen answer: features are built from it

    def point_rows(self, folds: set[int]) -> list[int]:
        return [i for i, g in enumerate(self.groups) if fold_of(g) in folds]

    def pair_rows(self, folds: set[int]) -> list[int]:
        return [i for i, g in enumerate(self.pair_groups) if fold_of(g) in folds]

    def with_features(self, spec: str) -> "TrainingData":
        """The same rows and pairs with the feature parts ``spec`` (no new encoding)."""
        from cleancurate.safety import features

        allx = features(*self.embeddings, spec)
        n, m = len(self.y), len(self.pair_groups)
        return replace(self, x=allx[:n], xa=allx[n:n + m], xb=allx[n + m:])


def training_data(cfg: Config, spec: str | None = None) -> TrainingData:
    """Encode every labeled row (XSTest, the project's texts) and hh-rlhf pair once, with feature parts ``spec``."""
    from cleancurate.safety import FEATURES

    xs = [{**r, "kind": "xstest"} for r in xstest_rows()]
    rows = xs + labeled_texts()
    pairs = hh_pairs()
    texts = rows + [{"query": p["query"], "text": p["rejected"]} for p in pairs] + \
        [{"query": p["query"], "text": p["chosen"]} for p in pairs]
    data = TrainingData(x=None, y=[int(r["harmful"]) for r in rows], groups=[r["group"] for r in rows],
                        kinds=[r["kind"] for r in rows], xa=None, xb=None, pair_groups=[p["group"] for p in pairs],
                        texts=[r["text"] for r in rows], more_texts=[p["rejected"] for p in pairs],
                        less_texts=[p["chosen"] for p in pairs], embeddings=embed_rows(texts, cfg))
    return data.with_features(spec or FEATURES)


def _weights(y: list[int], kinds: list[str]) -> list[float]:
    """Each source (XSTest, the project's texts) weighs the same in total; classes balanced inside each."""
    out = [0.0] * len(y)
    sources = {k: ("xstest" if k == "xstest" else "project") for k in set(kinds)}
    for src in set(sources.values()):
        idx = [i for i, k in enumerate(kinds) if sources[k] == src]
        pos = max(1, sum(y[i] for i in idx))
        neg = max(1, len(idx) - pos)
        for i in idx:
            out[i] = 0.5 / pos if y[i] else 0.5 / neg
    return out


def fit_on(data: TrainingData, folds: set[int], l2: float, pair_weight: float):
    """A head fitted on the rows and pairs of ``folds``."""
    from cleancurate.safety import fit

    pi, qi = data.point_rows(folds), data.pair_rows(folds)
    y = [data.y[i] for i in pi]
    head = fit(data.x[pi], y, l2=l2, sample_weight=_weights(y, [data.kinds[i] for i in pi]),
               pairs=(data.xa[qi], data.xb[qi]) if qi else None, pair_weight=pair_weight)
    head.refusals_safe = True
    return head


@dataclass
class Scores:
    """Scores of labeled rows and pairs (NaN where not scored)."""

    point: list[float]
    more: list[float]
    less: list[float]


def score(head, data: TrainingData, folds: set[int], into: Scores | None = None) -> Scores:
    """Scores by ``head`` of the rows and pairs in ``folds`` (written into ``into`` when given)."""
    out = into or Scores([math.nan] * len(data.y), [math.nan] * len(data.pair_groups),
                         [math.nan] * len(data.pair_groups))
    pi, qi = data.point_rows(folds), data.pair_rows(folds)
    if pi:
        probs = head.apply_refusals(head.probability_of_features(data.x[pi]), [data.texts[i] for i in pi])
        for i, p in zip(pi, probs):
            out.point[i] = p
    if qi:
        more = head.apply_refusals(head.probability_of_features(data.xa[qi]), [data.more_texts[i] for i in qi])
        less = head.apply_refusals(head.probability_of_features(data.xb[qi]), [data.less_texts[i] for i in qi])
        for i, a, b in zip(qi, more, less):
            out.more[i], out.less[i] = a, b
    return out


def auc(pos: list[float], neg: list[float]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    import numpy as np

    if not len(pos) or not len(neg):
        return math.nan
    allv = np.concatenate([np.asarray(pos, float), np.asarray(neg, float)])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks of ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = len(pos)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(neg)))


def xstest_auc(s: Scores, data: TrainingData, rows: list[int]) -> float:
    return auc([s.point[i] for i in rows if data.y[i]], [s.point[i] for i in rows if not data.y[i]])


def pair_auc(s: Scores, rows: list[int]) -> float:
    """Share of pairs whose more harmful answer scores higher (ties half)."""
    if not rows:
        return math.nan
    return sum(1.0 if s.more[i] > s.less[i] else 0.5 if s.more[i] == s.less[i] else 0.0 for i in rows) / len(rows)


def choose_threshold(s: Scores, data: TrainingData, xs_rows: list[int], pair_rows: list[int], max_flag: float) -> float:
    """Best XSTest F1 among thresholds that flag at most ``max_flag`` of the less harmful hh-rlhf answers."""
    best, best_f1 = THRESHOLDS[-1], -1.0
    for t in THRESHOLDS:
        flag = sum(s.less[i] >= t for i in pair_rows) / max(1, len(pair_rows))
        if flag > max_flag:
            continue
        tp = sum(s.point[i] >= t and data.y[i] for i in xs_rows)
        fp = sum(s.point[i] >= t and not data.y[i] for i in xs_rows)
        fn = sum(s.point[i] < t and data.y[i] for i in xs_rows)
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        if f1 > best_f1:
            best, best_f1 = t, f1
    return best


def choose_gate_threshold(s: Scores, data: TrainingData, xs_rows: list[int]) -> float:
    """The highest threshold at which at least ``GATE_RECALL`` of the harmful XSTest answers are flagged.

    The gate can afford a lower threshold than the screen: a false alarm there costs one
    rejected revision (the original is kept), not a good row taken out of the mix.
    """
    harmful = [i for i in xs_rows if data.y[i]]
    for t in reversed(THRESHOLDS):
        if sum(s.point[i] >= t for i in harmful) >= GATE_RECALL * len(harmful):
            return t
    return THRESHOLDS[0]


class Selector:
    """Nested model selection with every fitted head cached by the folds it was trained on."""

    def __init__(self, data: TrainingData, max_flag: float):
        self.data, self.max_flag = data, max_flag
        self._heads: dict = {}

    def head(self, folds: frozenset, l2: float, pw: float):
        key = (folds, l2, pw)
        if key not in self._heads:
            self._heads[key] = fit_on(self.data, set(folds), l2, pw)
        return self._heads[key]

    def cross_scores(self, folds: frozenset, l2: float, pw: float) -> Scores:
        """Scores of ``folds`` each from a head fitted on the other folds of ``folds``."""
        out = None
        for k in sorted(folds):
            out = score(self.head(folds - {k}, l2, pw), self.data, {k}, out)
        return out

    def select(self, folds: frozenset) -> dict:
        """Regularisation, pairwise weight and threshold chosen by cross-validation inside ``folds``."""
        d = self.data
        xs = [i for i in d.point_rows(set(folds)) if d.kinds[i] == "xstest"]
        pr = d.pair_rows(set(folds))
        best = None
        for l2 in L2_GRID:
            for pw in PAIR_WEIGHT_GRID:
                s = self.cross_scores(folds, l2, pw)
                crit = (xstest_auc(s, d, xs) + pair_auc(s, pr)) / 2
                if best is None or crit > best[0]:
                    best = (crit, l2, pw, s)
        crit, l2, pw, s = best
        return {"l2": l2, "pair_weight": pw, "threshold": choose_threshold(s, d, xs, pr, self.max_flag),
                "gate_threshold": choose_gate_threshold(s, d, xs),
                "inner_criterion": round(crit, 4)}


def bootstrap_auc(scores: list[float], y: list[int], groups: list[str], seed: int = 0, n: int = BOOTSTRAP):
    """95% percentile interval of the AUC, resampling groups (prompts) with replacement."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_group: dict = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    keys = list(by_group)
    vals = []
    for _ in range(n):
        idx = [i for k in rng.choice(len(keys), len(keys)) for i in by_group[keys[k]]]
        pos = [scores[i] for i in idx if y[i]]
        neg = [scores[i] for i in idx if not y[i]]
        if pos and neg:
            vals.append(auc(pos, neg))
    return [round(float(np.percentile(vals, 2.5)), 4), round(float(np.percentile(vals, 97.5)), 4)]


def figures(s: Scores, data: TrainingData, threshold: dict[int, float]) -> dict:
    """Figures of out-of-fold scores ``s``, each row judged at its fold's ``threshold``."""
    xs = [i for i, k in enumerate(data.kinds) if k == "xstest"]
    xs34 = [i for i in xs if fold_of(data.groups[i]) in (3, 4)]
    proj = [i for i, k in enumerate(data.kinds) if k == "original"]
    cands = [i for i, k in enumerate(data.kinds) if k == "candidate"]
    pairs = list(range(len(data.pair_groups)))
    thr = [threshold[fold_of(g)] for g in data.groups]
    pair_thr = [threshold[fold_of(g)] for g in data.pair_groups]

    def pr(rows):
        flagged = [i for i in rows if s.point[i] >= thr[i]]
        tp = sum(data.y[i] for i in flagged)
        return {"precision": wilson_rate(tp, len(flagged)), "recall": wilson_rate(tp, sum(data.y[i] for i in rows))}

    right = sum(1 for i in pairs if s.more[i] > s.less[i])
    return {
        "xstest": {"n": len(xs), "harmful": sum(data.y[i] for i in xs), "prompts": len({data.groups[i] for i in xs}),
                   "auc": round(xstest_auc(s, data, xs), 4),
                   "auc_ci95_by_prompt": bootstrap_auc([s.point[i] for i in xs], [data.y[i] for i in xs],
                                                       [data.groups[i] for i in xs]),
                   **pr(xs),
                   # the refusal rule was written reading folds 0-2 of XSTest; 3-4 are unseen by both
                   "folds_3_4": {"n": len(xs34), "auc": round(xstest_auc(s, data, xs34), 4),
                                 "auc_ci95_by_prompt": bootstrap_auc([s.point[i] for i in xs34],
                                                                     [data.y[i] for i in xs34],
                                                                     [data.groups[i] for i in xs34]),
                                 **pr(xs34)}},
        "hh_rlhf": {"pairwise_auc": wilson_rate(right, len(pairs)),
                    "flag_rate_less_harmful": wilson_rate(sum(s.less[i] >= pair_thr[i] for i in pairs), len(pairs)),
                    "flag_rate_more_harmful": wilson_rate(sum(s.more[i] >= pair_thr[i] for i in pairs), len(pairs))},
        "project_originals": {"n": len(proj), "harmful": sum(data.y[i] for i in proj), **pr(proj)},
        "project_candidates": {"n": len(cands), "harmful": sum(data.y[i] for i in cands), **pr(cands),
                               "others_flagged": wilson_rate(sum(s.point[i] >= thr[i] for i in cands if not data.y[i]),
                                                      sum(1 for i in cands if not data.y[i]))},
    }


def fold_heads(data: TrainingData, l2: float, pair_weight: float) -> list:
    """One head per fold, each fitted without the groups of its fold."""
    return [fit_on(data, set(range(FOLDS)) - {k}, l2, pair_weight) for k in range(FOLDS)]


def predict_out_of_fold(heads: list, x, groups) -> list[float]:
    """Harm score of each row of ``x`` from the head that never saw the row's group."""
    probs = [0.0] * len(groups)
    for k, head in enumerate(heads):
        idx = [i for i, g in enumerate(groups) if fold_of(g) == k]
        if idx:
            for i, p in zip(idx, head.probability_of_features(x[idx])):
                probs[i] = p
    return probs


def shipped_fold_heads(cfg: Config, data: TrainingData | None = None) -> list:
    """Fold heads made with the shipped head's settings (its ``l2`` and ``pair_weight``)."""
    from cleancurate.safety import HarmHead

    meta = HarmHead.from_json(HEAD_PATH.read_text(encoding="utf-8")).meta
    return fold_heads(data or training_data(cfg), meta.get("l2", 1e-2), meta.get("pair_weight", 1.0))


def dump_scores(path: str, data: TrainingData, s: Scores, threshold: dict[int, float]) -> None:
    """Out-of-fold scores of every row and pair with its texts, for reading side by side."""
    rows = [{**r, "kind": "xstest"} for r in xstest_rows()] + labeled_texts()
    with open(path, "w", encoding="utf-8") as f:
        for r, p in zip(rows, s.point):
            f.write(json.dumps({"kind": r["kind"], "group": r["group"], "query": r["query"], "text": r["text"],
                                "harmful": bool(r["harmful"]), "score": round(p, 4),
                                "flagged": p >= threshold[fold_of(r["group"])]}) + "\n")
        for r, a, b in zip(hh_pairs(), s.more, s.less):
            t = threshold[fold_of(r["group"])]
            f.write(json.dumps({"kind": "hh_pair", "group": r["group"], "query": r["query"],
                                "rejected": r["rejected"], "chosen": r["chosen"], "score_rejected": round(a, 4),
                                "score_chosen": round(b, 4), "flagged_rejected": a >= t, "flagged_chosen": b >= t}) + "\n")


def main(argv: list[str] | None = None) -> None:
    import time

    from bench._common import emit, quiet_stdout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-flag", type=float, default=0.10,
                    help="highest share of less harmful hh-rlhf answers a threshold may flag (chosen inside folds)")
    ap.add_argument("--write", action="store_true", help=f"store the head in {HEAD_PATH}")
    ap.add_argument("--dump", help="write each row's and pair's out-of-fold score here (JSONL), to read them")
    args = ap.parse_args(argv)
    quiet_stdout()

    from cleancurate import config as C
    from cleancurate.safety import FEATURES, HarmHead

    t0 = time.time()
    cfg = C.load("demo", ["harm.head_file=null"])  # the head being made is not needed to make it
    data = training_data(cfg)
    t_encode = time.time() - t0
    sel = Selector(data, args.max_flag)
    every = frozenset(range(FOLDS))

    # nested: each outer fold's settings and threshold come from its training folds only
    chosen, oof = {}, None
    for k in range(FOLDS):
        chosen[k] = sel.select(every - {k})
        oof = score(sel.head(every - {k}, chosen[k]["l2"], chosen[k]["pair_weight"]), data, {k}, oof)
    nested = figures(oof, data, {k: c["threshold"] for k, c in chosen.items()})
    gate_nested = figures(oof, data, {k: c["gate_threshold"] for k, c in chosen.items()})

    # the shipped head: the same selection over all folds, then one fit on everything
    final = sel.select(every)
    at_shipped = figures(oof, data, dict.fromkeys(range(FOLDS), final["threshold"]))

    prev = HarmHead.from_json(PREVIOUS_HEAD.read_text(encoding="utf-8"))
    prev_data = data.with_features(prev.features)
    previous = figures(score(prev, prev_data, set(every)), prev_data, dict.fromkeys(range(FOLDS), prev.threshold))
    previous["project_originals"]["note"] = "in-sample: the previous head was trained on these texts"

    counts = {k: {"rows": data.kinds.count(k), "harmful": sum(y for y, kk in zip(data.y, data.kinds) if kk == k)}
              for k in ("xstest", "original", "contrast", "candidate")}
    result = {
        "inputs": {"rows": counts, "hh_rlhf_pairs": len(data.pair_groups), "folds": FOLDS,
                   "features": FEATURES, "embedder": cfg.metrics.embedder,
                   "grid": {"l2": list(L2_GRID), "pair_weight": list(PAIR_WEIGHT_GRID)},
                   "max_flag_less_harmful": args.max_flag},
        "out_of_fold_nested": {"per_fold_choice": {str(k): c for k, c in chosen.items()}, **nested},
        "out_of_fold_at_shipped_threshold": {"threshold": final["threshold"], **at_shipped},
        "gate_out_of_fold_nested": gate_nested,
        "previous_head": {"threshold": prev.threshold, "features": prev.features, **previous},
        "shipped": final,
        "timings": {"encode_s": round(t_encode, 1), "total_s": round(time.time() - t0, 1)},
    }
    if args.dump:
        dump_scores(args.dump, data, oof, {k: c["threshold"] for k, c in chosen.items()})
    if args.write:
        head = fit_on(data, set(every), final["l2"], final["pair_weight"])
        head.threshold, head.gate_threshold = final["threshold"], final["gate_threshold"]
        head.meta = {"l2": final["l2"], "pair_weight": final["pair_weight"], "embedder": cfg.metrics.embedder,
                     "trained_on": {**counts, "hh_rlhf_pairs": len(data.pair_groups)},
                     "out_of_fold": {"xstest_auc": nested["xstest"]["auc"],
                                     "xstest_precision": at_shipped["xstest"]["precision"]["value"],
                                     "xstest_recall": at_shipped["xstest"]["recall"]["value"],
                                     "hh_pairwise_auc": nested["hh_rlhf"]["pairwise_auc"]["value"]},
                     "made_by": "python -m bench.safety_head --write"}
        HEAD_PATH.parent.mkdir(parents=True, exist_ok=True)
        HEAD_PATH.write_text(head.to_json() + "\n", encoding="utf-8")
        result["written"] = str(HEAD_PATH.relative_to(ROOT))
    emit(result)


if __name__ == "__main__":
    main()
