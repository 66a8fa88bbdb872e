"""Generate revision candidates for the labeled gate set (no Spark).

Runs the job's own prompt construction, sampler and text clean-up
(:func:`cleancurate.engine.generate.generate_batch`, :func:`cleancurate.textrules.strip_preamble`)
over a list of documents and several generation settings, and writes one JSONL row
per candidate for a reader to label. The labeled file is ``data/gate_set/labeled.jsonl``;
see ``data/gate_set/README.md`` for how it was made.

    .venv/bin/python -m bench.gate_candidates --out /tmp/cands.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRA_DOCS = ROOT / "data" / "gate_set" / "extra_docs.jsonl"

# (name, prompt file, temperature, top_p, max_new_tokens)
VARIANTS = (
    ("ctrl_t0.6", "prompts/ctrl_revise.txt", 0.6, 0.8, 96),
    ("ctrl_t1.0", "prompts/ctrl_revise.txt", 1.0, 1.0, 96),
    ("buckle_t0.6", "prompts/buckle_up_revise.txt", 0.6, 0.8, 128),
)


def load_docs(sample_ids: list[str], written: bool = True) -> list[dict]:
    """Sample-corpus rows by id, then (``written``) every hand-written document."""
    from cleancurate.sample import read_records

    by_id = {r["id"]: r for r in read_records()}
    docs = [{"id": i, "query": by_id[i]["query"], "response": by_id[i]["response"],
             "kind": "harmful" if by_id[i]["label"] == "unsafe" else "helpful", "source": "sample"}
            for i in sample_ids]
    for line in EXTRA_DOCS.read_text(encoding="utf-8").splitlines() if written else []:
        if line.strip():
            d = json.loads(line)
            docs.append({**d, "source": "written"})
    return docs


def main(argv: list[str] | None = None) -> None:
    from cleancurate.config import load as load_config
    from cleancurate.config import read_conf_file
    from cleancurate.models import load
    from cleancurate.textrules import strip_preamble
    from cleancurate.engine.generate import generate_batch
    from cleancurate.engine.prompting import build_prompts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sample-ids", default="", help="comma-separated sample ids to include")
    ap.add_argument("--no-written", action="store_true", help="leave out the hand-written documents")
    args = ap.parse_args(argv)
    ids = [s for s in args.sample_ids.split(",") if s]
    docs = load_docs(ids, written=not args.no_written)
    # the job's curation model, as the set was made with it: the embedded SmolLM2 on the CPU, never downloaded
    cfg = load_config("demo", ["model.name=embedded:smollm2-135m", "model.device=cpu", "model.dtype=auto",
                               "model.allow_network=false"])
    lm = load(cfg, "lm")
    rows = []
    for name, prompt_file, t, p, max_new in VARIANTS:
        instruction = read_conf_file(prompt_file, ROOT / "conf")
        prompts = build_prompts(lm.tokenizer, instruction, None, [d["query"] for d in docs],
                                [d["response"] for d in docs])
        seeds = [int(hashlib.sha256(f"{d['id']}|{name}".encode()).hexdigest()[:12], 16) for d in docs]
        out = generate_batch(lm.model, lm.tokenizer, prompts, [t] * len(docs), [p] * len(docs), seeds,
                             max_new_tokens=max_new, batch_size=16)
        for d, raw, err in zip(docs, out["text"], out["error"]):
            if err or not raw:
                continue
            clean, _ = strip_preamble(raw)
            rows.append({"doc_id": d["id"], "source": d["source"], "doc_kind": d["kind"], "variant": name,
                         "query": d["query"], "original": d["response"], "candidate": clean})
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(json.dumps({"docs": len(docs), "candidates": len(rows), "out": args.out}))


if __name__ == "__main__":
    main()
