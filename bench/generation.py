"""Batched candidate generation vs one prompt at a time.

    .venv/bin/python -m bench.generation [--docs 4] [--max-new-tokens 32] [--batch-size 16] [--threads N]

Prompts: ``docs`` sample documents x the demo profile's (temperature, top_p) grid
(2 x 2), i.e. 16 revision prompts built with ``build_prompts`` and the demo
revision instruction, one fixed seed per prompt.

*Batched*: ``generate_batch(..., batch_size=16)``: one micro-batch; the 4 copies of
each document's prompt are prefilled once and share the KV cache.
*One at a time*: ``generate_batch(..., batch_size=1)`` with the same prompts,
settings and seeds: 16 prefills, 16 x up to 32 single-row decode steps.

Both in the same process on the same model; the texts should be identical
(each row samples from its own seeded generator). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import os

from bench._common import (
    DEFAULT_THREADS, cpu_pressure,
    MODEL_SPEC, emit, environment, load_model, maxrss_mib, quiet_stdout, sample_rows, set_threads,
    timed_cpu,
)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                    help="torch intra-op threads (default 1, see README; 0 keeps torch's own default)")
    args = ap.parse_args(argv)

    quiet_stdout()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_start = round(os.getloadavg()[0], 2)
    pressure_start = cpu_pressure()
    from cleancurate.config import load
    from cleancurate.udfs.rewrite import build_prompts, generate_batch

    cur = load("demo").to_dict()["curation"]
    grid = list(itertools.product(cur["temperatures"][:2], cur["top_ps"][:2]))
    docs = sample_rows(args.docs)

    set_threads(args.threads)
    lm, load_s = load_model()
    model, tok = lm.model, lm.tokenizer

    doc_prompts = build_prompts(tok, cur["prompt"], cur.get("system_prompt"),
                                [d["query"] for d in docs], [d["response"] for d in docs])
    prompts, temps, top_ps, seeds, doc_ids = [], [], [], [], []
    for d, p in zip(docs, doc_prompts):
        for k, (t, tp) in enumerate(grid):
            prompts.append(p)
            temps.append(t)
            top_ps.append(tp)
            seeds.append(1000 + len(seeds))
            doc_ids.append(d["id"])
    prompt_tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    # warm-up: a short batched and a short single-row run on one prompt
    generate_batch(model, tok, prompts[:2], temps[:2], top_ps[:2], seeds[:2], max_new_tokens=2, batch_size=2)
    generate_batch(model, tok, prompts[:1], temps[:1], top_ps[:1], seeds[:1], max_new_tokens=2, batch_size=1)

    def run(bs):
        return generate_batch(model, tok, prompts, temps, top_ps, seeds,
                              max_new_tokens=args.max_new_tokens, batch_size=bs)

    batched, t_b, c_b = timed_cpu(run, args.batch_size)
    single, t_s, c_s = timed_cpu(run, 1)

    tok_b = int(batched["gen_tokens"].sum())
    tok_s = int(single["gen_tokens"].sum())
    same = [a == b for a, b in zip(batched["text"].tolist(), single["text"].tolist())]
    diffs = [
        {"row": i, "doc": doc_ids[i], "temperature": temps[i], "top_p": top_ps[i],
         "batched": batched["text"][i][:120], "single": single["text"][i][:120]}
        for i, ok in enumerate(same) if not ok
    ]
    errors = [e for e in batched["error"].tolist() + single["error"].tolist() if e]
    emit({
        "benchmark": "generation",
        "date": __import__("datetime").date.today().isoformat(),
        "model": MODEL_SPEC,
        "inputs": {
            "documents": len(docs), "grid": [list(g) for g in grid], "prompts": len(prompts),
            "unique_prompts": len(set(prompts)), "prompt_tokens_min": min(prompt_tokens),
            "prompt_tokens_max": max(prompt_tokens), "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size, "seeds": [seeds[0], seeds[-1]],
        },
        "model_load_s": round(load_s, 3),
        "batched": {"seconds": round(t_b, 3), "cpu_s": round(c_b, 3), "tokens": tok_b,
                    "tokens_per_s": round(tok_b / t_b, 2)},
        "one_at_a_time": {"seconds": round(t_s, 3), "cpu_s": round(c_s, 3), "tokens": tok_s,
                          "tokens_per_s": round(tok_s / t_s, 2)},
        "speedup_tokens_per_s": round((tok_b / t_b) / (tok_s / t_s), 3),
        "speedup_wall": round(t_s / t_b, 3),
        "speedup_cpu": round(c_s / c_b, 3),
        "target_speedup": 3.0,
        "texts_identical": all(same),
        "identical_rows": sum(same),
        "differing_rows": diffs,
        "errors": errors,
        "gen_tokens_per_row_batched": batched["gen_tokens"].tolist(),
        "ru_maxrss_mib_process": maxrss_mib(),
        "environment": {**environment(), "loadavg_1m_at_start": load_start,
                        "cpu_pressure_some_avg60_pct_at_start": pressure_start},
    })


if __name__ == "__main__":
    main()
