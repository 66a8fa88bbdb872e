"""Generation: the device-side decode loop vs the previous implementation, same batches.

    .venv/bin/python -m bench.generation [--docs 4] [--max-new-tokens 64] [--batch-size 16]
                                         [--repeats 2] [--threads 1] [--no-single]

Prompts: ``docs`` sample documents x the demo profile's (temperature, top_p) grid
(2 x 2), i.e. 16 revision prompts built with ``build_prompts`` and the demo
revision instruction, one fixed seed per prompt (the demo settings).

*Baseline*: the previous ``generate_batch`` (kept below, verbatim: host-side sampler
with a full-vocabulary sort, per-row Python work per step, growing attention mask).
*New*: ``generate_batch`` of :mod:`cleancurate.udfs.rewrite` with the same prompts,
settings, seeds and micro-batches, once with ``decode="dynamic"`` (the CPU default)
and once with ``decode="static"``. Runs alternate (new, baseline, new, baseline, ...)
so load from other processes hits both alike; medians are reported. Texts must be
identical. Every model forward is timed, which splits each run into model time and
everything else (sampling, bookkeeping).

*Batch vs alone* (skip with ``--no-single``): the new code at batch size 1 on the same
rows, to count how many texts the batch changes (see the determinism notes in
``udfs/rewrite.py``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import time

from bench._common import (
    DEFAULT_THREADS, MODEL_SPEC, cpu_pressure, emit, environment, load_model, maxrss_mib, quiet_stdout,
    sample_rows, set_threads,
)

# --- the previous implementation (baseline), kept verbatim -----------------------------------


def baseline_sample_next(logits, temperatures, top_ps, generators):
    import torch

    logits = logits.float().cpu()
    b, v = logits.shape
    temps = torch.tensor([float(t) for t in temperatures])
    ps = torch.tensor([float(p) for p in top_ps])
    probs = torch.softmax(logits / temps.clamp(min=1e-5)[:, None], dim=-1)
    sorted_p, idx = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < ps[:, None]
    keep[:, 0] = True
    cum = (sorted_p * keep).cumsum(-1)
    u = torch.stack([torch.rand((), generator=g) for g in generators]) * cum[:, -1]
    pos = torch.searchsorted(cum, u[:, None].contiguous()).clamp(max=v - 1)
    tokens = idx.gather(1, pos).squeeze(1)
    greedy = temps <= 0.0
    if bool(greedy.any()):
        tokens[greedy] = logits[greedy].argmax(-1)
    return tokens


def _baseline_generate_group(model, tokenizer, prompt_ids, temps, top_ps, seeds, max_new_tokens, stops):
    import inspect

    import torch

    from cleancurate.udfs.quality import trim_unfinished

    device = next(model.parameters()).device
    b = len(prompt_ids)
    uniq: dict[tuple, int] = {}
    owner = [uniq.setdefault(tuple(p), len(uniq)) for p in prompt_ids]
    uprompts = [list(p) for p in uniq]
    longest = max(len(p) for p in uprompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(uprompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(uprompts), longest), dtype=torch.long)
    for i, p in enumerate(uprompts):
        ids[i, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, longest - len(p):] = 1
    gens = [torch.Generator().manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF) for s in seeds]
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out_tokens: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    sel = torch.tensor(owner, dtype=torch.long)
    with torch.inference_mode():
        res = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position.to(device),
                    use_cache=True, logits_to_keep=1)
        past = getattr(res, cache_kw)
        logits = res.logits[:, -1, :]
        if len(uprompts) != b or owner != list(range(b)):
            past.reorder_cache(sel.to(device))
            logits = logits[sel.to(device)]
        cur_mask = mask[sel].to(device)
        cur_pos = position[sel][:, -1:].to(device)
        for step in range(max_new_tokens):
            nxt = baseline_sample_next(logits, temps, top_ps, gens)
            for i in range(b):
                if done[i]:
                    continue
                tok = int(nxt[i])
                if tok in stops:
                    done[i] = True
                else:
                    out_tokens[i].append(tok)
            if all(done) or step == max_new_tokens - 1:
                break
            feed = torch.tensor([pad_id if done[i] else int(nxt[i]) for i in range(b)], dtype=torch.long)
            cur_pos = cur_pos + 1
            cur_mask = torch.cat([cur_mask, torch.ones((b, 1), dtype=cur_mask.dtype, device=device)], dim=1)
            res = model(input_ids=feed[:, None].to(device), attention_mask=cur_mask, position_ids=cur_pos,
                        use_cache=True, logits_to_keep=1, **{cache_kw: past})
            past = getattr(res, cache_kw)
            logits = res.logits[:, -1, :]
    texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in out_tokens]
    return [(t if done[i] else trim_unfinished(t), len(out_tokens[i])) for i, t in enumerate(texts)]


def baseline_generate_batch(model, tokenizer, prompts, temperatures, top_ps, seeds, *, max_new_tokens=256,
                            batch_size=16, token_budget=None):
    import pandas as pd

    from cleancurate.batching import error_text, plan_microbatches, run_with_backoff
    from cleancurate.schemas.udf import GENERATION_COLUMNS
    from cleancurate.udfs.rewrite import stop_token_ids

    n = len(prompts)
    texts, counts, errors = [None] * n, [0] * n, [None] * n
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    stops = stop_token_ids(tokenizer)
    budget = token_budget or 10**12
    lengths = [len(e) + max_new_tokens for e in encoded]
    for batch in plan_microbatches(lengths, budget, max_rows=batch_size, keys=list(prompts)):
        outs = run_with_backoff(
            batch,
            lambda part: _baseline_generate_group(
                model, tokenizer, [encoded[i] for i in part], [temperatures[i] for i in part],
                [top_ps[i] for i in part], [seeds[i] for i in part], max_new_tokens, stops,
            ),
            lambda i, exc: error_text(exc),
        )
        for i, out in zip(batch, outs):
            if isinstance(out, str):
                errors[i] = out
            else:
                texts[i], counts[i] = out
    df = pd.DataFrame({"text": texts, "gen_tokens": pd.Series(counts, dtype="int32"), "error": errors})
    return df[GENERATION_COLUMNS]


# --- the benchmark ----------------------------------------------------------------------------


class ForwardTimer:
    """Wraps ``model.forward`` to add up the seconds spent in the model."""

    def __init__(self, model):
        self.seconds, self.calls = 0.0, 0
        inner = model.forward

        @functools.wraps(inner)  # keeps the signature: the decode loops inspect it
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        model.forward = timed

    def take(self) -> tuple[float, int]:
        out = (self.seconds, self.calls)
        self.seconds, self.calls = 0.0, 0
        return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each implementation (alternating)")
    ap.add_argument("--no-single", action="store_true", help="skip the batch-size-1 comparison")
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
    prompts, temps, top_ps, seeds = [], [], [], []
    for p in doc_prompts:
        for t, tp in grid:
            prompts.append(p)
            temps.append(t)
            top_ps.append(tp)
            seeds.append(1000 + len(seeds))
    prompt_tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    timer = ForwardTimer(model)
    common = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    def new(decode, stats=None):
        return generate_batch(model, tok, prompts, temps, top_ps, seeds, decode=decode, stats=stats, **common)

    runs = {
        "baseline": lambda: baseline_generate_batch(model, tok, prompts, temps, top_ps, seeds, **common),
        "new_dynamic": lambda: new("dynamic", sampler_stats),
        "new_static": lambda: new("static"),
    }
    # warm-up: one short run of each
    for name in runs:
        short = dict(common, max_new_tokens=2)
        if name == "baseline":
            baseline_generate_batch(model, tok, prompts[:2], temps[:2], top_ps[:2], seeds[:2], **short)
        else:
            generate_batch(model, tok, prompts[:2], temps[:2], top_ps[:2], seeds[:2],
                           decode=name.split("_")[1], **short)
    timer.take()

    results: dict[str, dict] = {name: {"seconds": [], "forward_s": [], "forward_calls": 0} for name in runs}
    outputs = {}
    sampler_stats: dict = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            results[name]["seconds"].append(time.perf_counter() - t0)
            fwd, calls = timer.take()
            results[name]["forward_s"].append(fwd)
            results[name]["forward_calls"] = calls

    def summary(name):
        r, df = results[name], outputs[name]
        sec, fwd = statistics.median(r["seconds"]), statistics.median(r["forward_s"])
        tokens = int(df["gen_tokens"].sum())
        return {"seconds_median": round(sec, 3), "seconds_runs": [round(s, 3) for s in r["seconds"]],
                "tokens": tokens, "tokens_per_s": round(tokens / sec, 2),
                "model_forward_s": round(fwd, 3), "forward_calls": r["forward_calls"],
                "other_s": round(sec - fwd, 3)}

    base = summary("baseline")
    out = {"benchmark": "generation", "date": __import__("datetime").date.today().isoformat(), "model": MODEL_SPEC}
    out["inputs"] = {
        "documents": len(docs), "grid": [list(g) for g in grid], "prompts": len(prompts),
        "unique_prompts": len(set(prompts)), "prompt_tokens_min": min(prompt_tokens),
        "prompt_tokens_max": max(prompt_tokens), "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "seeds": [seeds[0], seeds[-1]], "repeats": args.repeats,
    }
    out["model_load_s"] = round(load_s, 3)
    out["baseline"] = base
    ref = outputs["baseline"]
    for name in ("new_dynamic", "new_static"):
        s = summary(name)
        df = outputs[name]
        s["identical_to_baseline"] = int(sum(a == b for a, b in zip(ref["text"], df["text"])))
        s["gen_tokens_identical"] = ref["gen_tokens"].tolist() == df["gen_tokens"].tolist()
        s["speedup_tokens_per_s"] = round(s["tokens_per_s"] / base["tokens_per_s"], 3)
        out[name] = s
    runs_per_impl = args.repeats
    out["sampler"] = {"row_steps": sampler_stats.get("rows", 0) // runs_per_impl,
                      "row_steps_needing_wider_head": sampler_stats.get("wider", 0) // runs_per_impl}
    # everything but the model forward gone: the most any sampler/loop change could give
    out["ceiling_speedup_same_forward"] = round(base["seconds_median"] / base["model_forward_s"], 3)
    out["target_speedup"] = 1.5
    if not args.no_single:
        t0 = time.perf_counter()
        single = generate_batch(model, tok, prompts, temps, top_ps, seeds, decode="dynamic",
                                max_new_tokens=args.max_new_tokens, batch_size=1)
        sec = time.perf_counter() - t0
        timer.take()
        same = [a == b for a, b in zip(outputs["new_dynamic"]["text"], single["text"])]
        out["one_at_a_time"] = {
            "seconds": round(sec, 3), "tokens": int(single["gen_tokens"].sum()),
            "tokens_per_s": round(int(single["gen_tokens"].sum()) / sec, 2),
            "identical_to_batched": int(sum(same)),
            "differing_rows": [i for i, ok in enumerate(same) if not ok],
        }
    out["errors"] = [e for name in outputs for e in outputs[name]["error"].tolist() if e]
    out["ru_maxrss_mib_process"] = maxrss_mib()
    out["environment"] = {**environment(), "loadavg_1m_at_start": load_start,
                          "cpu_pressure_some_avg60_pct_at_start": pressure_start}
    emit(out)


if __name__ == "__main__":
    main()
