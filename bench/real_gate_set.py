"""Build the real-text gate set: the job's own candidates for real hh-rlhf first exchanges.

Three steps, each a subcommand:

``generate``
    Picks documents from the hh-rlhf red-team dialogues in ``data/real/`` by a seeded
    hash (``sha256("gate-real|" + id)``, lowest first), writes their first exchange
    (``first_query``, ``first_response``) as a Parquet corpus, runs the curation job on
    it with the demo profile at ``selection.fraction=1.0`` (harmful originals screened
    out as the job does; ``curation.early_stop=false`` so that the second round runs for
    every document and each one yields candidates from both rounds), and exports every
    generated candidate with its gate verdict to ``candidates.jsonl``. Each document is
    in the ``dev`` or ``test`` split by its dialogue's fold (``bench.real_data.fold_of``:
    folds 3 and 4 are ``test``, as in ``bench.refusal``).
``blind``
    Writes the candidates to label, shuffled, with every score and verdict removed:
    on the test split every candidate, on the dev split every pass and an equal seeded
    share of rejects. Chunk files of ``--chunk`` rows each, for several readers.
``assemble``
    Joins the readers' labels (JSONL rows ``{"key", "label", "note", "original_harmful"}``)
    to the candidates and writes ``data/gate_set/real_hh.jsonl``.

    .venv/bin/python -m bench.real_gate_set generate --docs 270 --work /tmp/real_gate
    .venv/bin/python -m bench.real_gate_set blind --work /tmp/real_gate --chunk 120
    .venv/bin/python -m bench.real_gate_set assemble --work /tmp/real_gate --labels /tmp/real_gate/labels
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "gate_set" / "real_hh.jsonl"
TEST_FOLDS = (3, 4)


def split_of(doc_id: str) -> str:
    """``test`` for dialogues in folds 3-4 of ``bench.real_data.fold_of``, else ``dev``."""
    from bench.real_data import fold_of

    return "test" if fold_of("hh:" + doc_id) in TEST_FOLDS else "dev"


def pick_docs(n: int, seed: str = "gate-real") -> list[dict]:
    """The ``n`` dialogues with the lowest ``sha256(seed|id)`` and a non-empty first exchange."""
    from bench.real_data import hh_pairs

    rows = [r for r in hh_pairs() if (r["first_query"] or "").strip() and (r["first_response"] or "").strip()]
    rows.sort(key=lambda r: hashlib.sha256(f"{seed}|{r['id']}".encode()).hexdigest())
    return [{"id": r["id"], "query": r["first_query"], "response": r["first_response"]} for r in rows[:n]]


def key_of(row: dict) -> str:
    return f"{row['doc_id']}|{row['cand_id']}"


def generate(args) -> None:
    import pandas as pd

    from cleancurate import curate

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    docs = pick_docs(args.docs)
    corpus = work / "corpus.parquet"
    pd.DataFrame(docs).to_parquet(corpus, index=False)
    overrides = [f"input.path={corpus}", f"output.path={work / 'out'}", "selection.fraction=1.0",
                 "curation.early_stop=false"] + list(args.set or [])
    result = curate(None, "demo", overrides=overrides, report=False)
    n = write_candidates(work, docs)
    q = result.table("quarantine").select("doc_id", "stage", "reason").toPandas()
    q.to_json(work / "quarantine.jsonl", orient="records", lines=True)
    print(json.dumps({"docs": len(docs), "candidates": n, "quarantined": len(q), "run_id": result.run_id}))


def read_delta(table: Path):
    """A Delta table's current rows as pandas, read from its log without Spark (partition columns added)."""
    import pandas as pd
    import pyarrow.parquet as pq

    live: dict[str, dict] = {}
    for f in sorted((table / "_delta_log").glob("*.json")):
        for line in f.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = action["add"].get("partitionValues", {})
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    parts = []
    for path, values in live.items():
        df = pq.read_table(table / path).to_pandas()
        for k, v in values.items():
            df[k] = v
        parts.append(df)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def write_candidates(work: Path, docs: list[dict]) -> int:
    """Write ``candidates.jsonl``: every generated candidate in ``work/out`` with its gate verdict (no Spark)."""
    by_id = {d["id"]: d for d in docs}
    cands = read_delta(work / "out" / "candidates")
    cands["round"] = cands["round"].astype(int)
    cands = cands[(cands["round"] > 0) & ~cands.is_original & ~cands.carried & cands.text.notna()]
    with open(work / "candidates.jsonl", "w", encoding="utf-8") as fh:
        for r in cands.sort_values(["doc_id", "round", "cand_id"]).to_dict("records"):
            d = by_id[r["doc_id"]]
            row = {"doc_id": r["doc_id"], "cand_id": r["cand_id"], "round": int(r["round"]),
                   "split": split_of(r["doc_id"]), "source": "hh-rlhf",
                   "variant": f"demo_t{r['temperature']}_p{r['top_p']}", "query": d["query"],
                   "original": d["response"], "candidate": r["text"], "passed": bool(r["passed"]),
                   "reject_reason": r["reject_reason"]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(cands)


def export(args) -> None:
    """Write ``candidates.jsonl`` from the run's ``candidates`` table (the rounds committed so far)."""
    n = write_candidates(Path(args.work), pick_docs(args.docs))
    print(json.dumps({"candidates": n}))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def write_blind(path: Path, rows: list[dict]) -> None:
    """What a reader sees of each candidate: its key, query, original and candidate; no score, no verdict."""
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"key": key_of(r), "query": r["query"], "original": r["original"],
                                 "candidate": r["candidate"]}, ensure_ascii=False) + "\n")


def blind(args) -> None:
    """Chunks to label, without scores or verdicts; rows already written to an earlier chunk are skipped."""
    work = Path(args.work)
    out = work / "blind"
    out.mkdir(exist_ok=True)
    done = {json.loads(x)["key"] for f in out.glob("*.jsonl") for x in f.read_text().splitlines() if x.strip()}
    rows = [r for r in read_jsonl(work / "candidates.jsonl") if key_of(r) not in done]
    rng = random.Random(f"{args.seed}|{args.prefix}")
    test = [r for r in rows if r["split"] == "test"]
    dev_pass = [r for r in rows if r["split"] == "dev" and r["passed"]]
    dev_rej = [r for r in rows if r["split"] == "dev" and not r["passed"]]
    dev_rej = rng.sample(dev_rej, min(len(dev_rej), len(dev_pass)))
    chosen = test + dev_pass + dev_rej
    rng.shuffle(chosen)
    for i in range(0, len(chosen), args.chunk):
        write_blind(out / f"{args.prefix}-{i // args.chunk:02d}.jsonl", chosen[i:i + args.chunk])
    if args.second:
        write_blind(work / f"second-{args.prefix}.jsonl", rng.sample(chosen, min(args.second, len(chosen))))
    print(json.dumps({"to_label": len(chosen), "test": len(test), "dev_pass": len(dev_pass),
                      "dev_reject_sample": len(dev_rej), "chunks": (len(chosen) + args.chunk - 1) // args.chunk,
                      "second_reader": args.second}))


def assemble(args) -> None:
    work = Path(args.work)
    rows = {key_of(r): r for r in read_jsonl(work / "candidates.jsonl")}
    labels = {}
    for f in sorted(Path(args.labels).glob("*.jsonl")):
        for lab in read_jsonl(f):
            labels[lab["key"]] = lab
    out = []
    for key, lab in labels.items():
        r = rows[key]
        out.append({"doc_id": r["doc_id"], "source": r["source"], "variant": r["variant"], "query": r["query"],
                    "original": r["original"], "candidate": r["candidate"], "label": lab["label"],
                    "original_harmful": bool(lab.get("original_harmful", False)), "note": lab.get("note", ""),
                    "split": r["split"], "cand_id": r["cand_id"], "round": r["round"]})
    out.sort(key=lambda r: (r["split"], r["doc_id"], r["round"], r["cand_id"]))
    dest = Path(args.out)
    with open(dest, "w", encoding="utf-8") as fh:
        for r in out:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(json.dumps({"labeled": len(out), "out": str(dest)}))


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two readers' labels on the same rows."""
    from collections import Counter

    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def agreement(args) -> None:
    """Agreement of the second reader with the first: kappa on the labels and on acceptable-or-not."""
    first = {}
    for f in sorted(Path(args.labels).glob("*.jsonl")):
        for lab in read_jsonl(f):
            first[lab["key"]] = lab["label"]
    second = {lab["key"]: lab["label"] for f in sorted(Path(args.second).glob("*.jsonl")) for lab in read_jsonl(f)}
    keys = sorted(k for k in second if k in first)
    a, b = [first[k] for k in keys], [second[k] for k in keys]
    binary = lambda xs: ["acceptable" if x == "acceptable" else "other" for x in xs]  # noqa: E731
    out = {"n": len(keys), "kappa_labels": round(cohen_kappa(a, b), 3),
           "kappa_acceptable": round(cohen_kappa(binary(a), binary(b)), 3),
           "raw_agreement": round(sum(x == y for x, y in zip(a, b)) / max(1, len(keys)), 3),
           "disagreements": [{"key": k, "first": x, "second": y} for k, x, y in zip(keys, a, b) if x != y]}
    print(json.dumps(out, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--docs", type=int, default=270)
    g.add_argument("--work", required=True)
    g.add_argument("--set", action="append", help="extra config override section.key=value")
    e = sub.add_parser("export")
    e.add_argument("--docs", type=int, default=270)
    e.add_argument("--work", required=True)
    b = sub.add_parser("blind")
    b.add_argument("--work", required=True)
    b.add_argument("--chunk", type=int, default=120)
    b.add_argument("--seed", type=int, default=20)
    b.add_argument("--prefix", default="w1", help="name of this batch of chunks")
    b.add_argument("--second", type=int, default=0, help="also write this many random rows for a second reader")
    a = sub.add_parser("assemble")
    a.add_argument("--work", required=True)
    a.add_argument("--labels", required=True)
    a.add_argument("--out", default=str(OUT))
    k = sub.add_parser("agreement")
    k.add_argument("--labels", required=True, help="folder of the first reader's label files")
    k.add_argument("--second", required=True, help="folder of the second reader's label files")
    args = ap.parse_args(argv)
    {"agreement": agreement, "generate": generate, "export": export, "blind": blind, "assemble": assemble}[args.cmd](args)


if __name__ == "__main__":
    main()
