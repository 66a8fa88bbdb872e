"""Generation: the device-side decode loop vs the previous implementation; micro-batches vs refill.

    .venv/bin/python -m bench.generation [--docs 4] [--max-new-tokens 64] [--batch-size 16]
                                         [--repeats 2] [--threads 1] [--no-single] [--no-demo]
                                         [--refill-docs 16] [--refill-max-new-tokens 128]
                                         [--profile-cached 240]

Three sections, one JSON object.

*Demo settings* (skip with ``--no-demo``). Prompts: ``docs`` sample documents x the demo
profile's (temperature, top_p) grid (2 x 2), i.e. 16 revision prompts built with
``build_prompts`` and the demo revision instruction, one fixed seed per prompt.
*Baseline*: the previous ``generate_batch`` (kept verbatim in ``tests/oracles.py``: host-side sampler
with a full-vocabulary sort, per-row Python work per step, growing attention mask).
*New*: ``generate_batch`` of :mod:`cleancurate.engine.generate` with the same prompts,
settings, seeds and micro-batches: ``decode="dynamic"`` (the CPU default: KV cache
grown in place), the same with transformers' own concatenating ``DynamicCache``
(``new_dynamic_concat``, the code before the in-place cache), and ``decode="static"``.
Runs alternate (baseline, new, ..., baseline, new, ...) so load from other processes
hits all alike; medians are reported. Texts must be identical. Every model forward is
timed, which splits each run into model time and everything else (sampling,
bookkeeping). Then (skip with ``--no-single``) the default at batch size 1 on the same
rows, to count how many texts the batch changes (see the determinism notes in
``cleancurate/engine/generate.py``).

*Refill* (``refill``; ``--refill-docs 0`` skips it): the next ``refill-docs`` documents x
the same grid (64 rows by default), ``max_new_tokens`` 128 so rows end at different
steps, ``batch_size`` 16: micro-batches (``refill=False``) vs continuous batching
(``refill=True``), alternating. Reports tokens/s, decode steps, rows per step, the
share of a step's ``batch_size`` slots left empty (what a batch that kept its finished
rows would decode as padding), prefills and merges, whether reruns repeat their texts,
and how many texts equal the micro-batch path's.

*Decode step* (``decode_step``; ``--profile-cached 0`` skips it): one decode step of
``batch-size`` rows over ``profile-cached`` cached tokens, through the concatenating
and the in-place cache: median step times, whether the logits are bit-identical, and a
torch.profiler breakdown per step (linear layers, output layer, attention, cache
concatenation, other operators, Python and framework).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time

from bench._common import (
    MODEL_SPEC, add_threads_option, begin, emit, environment, load_model, maxrss_mib,
    sample_rows, set_threads,
)
# the previous implementation (the baseline), kept verbatim where the decode engine's tests compare with it
from tests.oracles import baseline_generate_batch

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


def _grid_rows(tok, cur: dict, grid: list, docs: list[dict]):
    """Revision prompts: every document x every (temperature, top_p) of the grid, one seed per row."""
    from cleancurate.engine.prompting import build_prompts

    doc_prompts = build_prompts(tok, cur["prompt"], cur.get("system_prompt"),
                                [d["query"] for d in docs], [d["response"] for d in docs])
    prompts, temps, top_ps, seeds = [], [], [], []
    for p in doc_prompts:
        for t, tp in grid:
            prompts.append(p)
            temps.append(t)
            top_ps.append(tp)
            seeds.append(1000 + len(seeds))
    return prompts, temps, top_ps, seeds


def _alternate(runs: dict, repeats: int, timer: ForwardTimer):
    """Each run ``repeats`` times, alternating; seconds, forward seconds, outputs and stats of every run."""
    results = {name: {"seconds": [], "forward_s": [], "forward_calls": 0, "outputs": [], "stats": []} for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            stats: dict = {}
            t0 = time.perf_counter()
            df = fn(stats)
            r = results[name]
            r["seconds"].append(time.perf_counter() - t0)
            fwd, calls = timer.take()
            r["forward_s"].append(fwd)
            r["forward_calls"] = calls
            r["outputs"].append(df)
            r["stats"].append(stats)
    return results


def _summary(r: dict) -> dict:
    df = r["outputs"][-1]
    sec, fwd = statistics.median(r["seconds"]), statistics.median(r["forward_s"])
    tokens = int(df["gen_tokens"].sum())
    return {"seconds_median": round(sec, 3), "seconds_runs": [round(x, 3) for x in r["seconds"]],
            "tokens": tokens, "tokens_per_s": round(tokens / sec, 2),
            "model_forward_s": round(fwd, 3), "forward_calls": r["forward_calls"],
            "other_s": round(sec - fwd, 3)}


def _same(a, b) -> int:
    return int(sum(x == y for x, y in zip(a["text"], b["text"])))


def _demo_section(model, tok, rows, args, timer) -> dict:
    """The demo settings: the previous code vs the current one, same micro-batches (see the module doc)."""
    from cleancurate.engine import decode as decode_loop
    from cleancurate.engine.generate import generate_batch

    prompts, temps, top_ps, seeds = rows
    common = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    def new(decode, stats, **kw):
        return generate_batch(model, tok, prompts, temps, top_ps, seeds, decode=decode, stats=stats, **common, **kw)

    def concat(stats):
        """The micro-batch path with transformers' own DynamicCache (a torch.cat per layer per step)."""
        grow = decode_loop._grow_cache  # the name the decode loop calls
        decode_loop._grow_cache = lambda *a: False
        try:
            return new("dynamic", stats, refill=False)
        finally:
            decode_loop._grow_cache = grow

    runs = {
        "baseline": lambda stats: baseline_generate_batch(model, tok, prompts, temps, top_ps, seeds, **common),
        "new_dynamic": lambda stats: new("dynamic", stats),
        "new_dynamic_concat": concat,
        "new_static": lambda stats: new("static", stats),
    }
    # warm-up: each code path once, on two rows and two tokens
    p, t, tp, sd = (x[:2] for x in rows)
    baseline_generate_batch(model, tok, p, t, tp, sd, max_new_tokens=2, batch_size=2)
    for decode in ("dynamic", "static"):
        generate_batch(model, tok, p, t, tp, sd, max_new_tokens=2, batch_size=2, decode=decode)
    timer.take()
    results = _alternate(runs, args.repeats, timer)
    base = _summary(results["baseline"])
    out = {"baseline": base}
    ref = results["baseline"]["outputs"][-1]
    for name in ("new_dynamic", "new_dynamic_concat", "new_static"):
        s = _summary(results[name])
        df = results[name]["outputs"][-1]
        s["identical_to_baseline"] = _same(ref, df)
        s["gen_tokens_identical"] = ref["gen_tokens"].tolist() == df["gen_tokens"].tolist()
        s["speedup_tokens_per_s"] = round(s["tokens_per_s"] / base["tokens_per_s"], 3)
        s["refill"] = results[name]["stats"][-1].get("refill")
        out[name] = s
    stats = results["new_dynamic"]["stats"][-1]
    out["sampler"] = {"row_steps": stats.get("rows", 0), "row_steps_needing_wider_head": stats.get("wider", 0)}
    # everything but the model forward gone: the most any sampler/loop change could give, with the
    # baseline's forward passes and with the default's (in-place KV cache)
    out["ceiling_speedup_same_forward"] = round(base["seconds_median"] / base["model_forward_s"], 3)
    out["ceiling_speedup_new_forward"] = round(base["seconds_median"] / out["new_dynamic"]["model_forward_s"], 3)
    out["target_speedup"] = 1.5
    if not args.no_single:
        t0 = time.perf_counter()
        single = generate_batch(model, tok, prompts, temps, top_ps, seeds, decode="dynamic",
                                max_new_tokens=args.max_new_tokens, batch_size=1)
        sec = time.perf_counter() - t0
        timer.take()
        mine = results["new_dynamic"]["outputs"][-1]
        same = [a == b for a, b in zip(mine["text"], single["text"])]
        out["one_at_a_time"] = {
            "seconds": round(sec, 3), "tokens": int(single["gen_tokens"].sum()),
            "tokens_per_s": round(int(single["gen_tokens"].sum()) / sec, 2),
            "identical_to_batched": int(sum(same)),
            "differing_rows": [i for i, ok in enumerate(same) if not ok],
        }
    out["errors"] = [e for r in results.values() for df in r["outputs"] for e in df["error"].tolist() if e]
    return out


def _refill_section(model, tok, rows, args, timer) -> dict:
    """Rows that end at different steps, more rows than a batch: micro-batches vs continuous batching."""
    from cleancurate.engine.generate import generate_batch

    prompts, temps, top_ps, seeds = rows
    common = dict(max_new_tokens=args.refill_max_new_tokens, batch_size=args.batch_size, decode="dynamic")

    def gen(stats, **kw):
        return generate_batch(model, tok, prompts, temps, top_ps, seeds, stats=stats, **common, **kw)

    runs = {
        "fixed": lambda stats: gen(stats, refill=False),
        "refill": lambda stats: gen(stats, refill=True),
    }
    timer.take()
    results = _alternate(runs, args.repeats, timer)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    out = {"inputs": {"prompts": len(prompts), "unique_prompts": len(set(prompts)),
                      "prompt_tokens_min": min(lengths), "prompt_tokens_max": max(lengths),
                      "max_new_tokens": args.refill_max_new_tokens, "batch_size": args.batch_size,
                      "repeats": args.repeats}}
    fixed = results["fixed"]["outputs"][-1]
    fixed_rate = _summary(results["fixed"])["tokens_per_s"]
    for name, r in results.items():
        s = _summary(r)
        st = r["stats"][-1]
        steps, row_steps = st.get("decode_steps", 0), st.get("decoded_row_steps", 0)
        s.update({
            "decode_steps": steps, "decoded_row_steps": row_steps,
            "mean_rows_per_step": round(row_steps / max(steps, 1), 2),
            # slots of a batch_size-row step left empty (by finished rows, or the end of the queue): what
            # a batch that keeps its finished rows (the code before issue 12) decodes as padding rows
            "empty_slot_share": round(1 - row_steps / max(steps * args.batch_size, 1), 3),
            "prefills": st.get("prefills", 0), "merges": st.get("merges", 0), "refill": st.get("refill"),
            "rerun_identical_texts": all(_same(df, r["outputs"][0]) == len(df) for df in r["outputs"]),
            "identical_to_fixed": _same(fixed, r["outputs"][-1]),
            "speedup_tokens_per_s_vs_fixed": round(s["tokens_per_s"] / fixed_rate, 3),
        })
        out[name] = s
    ends = fixed["gen_tokens"].tolist()
    out["inputs"]["gen_tokens_min_max"] = [min(ends), max(ends)]
    out["inputs"]["rows_at_max_new_tokens"] = sum(e >= args.refill_max_new_tokens for e in ends)
    out["errors"] = [e for r in results.values() for df in r["outputs"] for e in df["error"].tolist() if e]
    return out


def _profile_section(model, args) -> dict:
    """One decode step of ``--batch-size`` rows after ``--profile-cached`` cached tokens, profiled.

    Random prompt ids (a step's cost does not depend on them), every other row with 10
    tokens of left padding, greedy steps. The steps run through transformers'
    ``DynamicCache`` (``concat``: a ``torch.cat`` per layer per step) and through the
    grow-in-place cache of :mod:`cleancurate.engine.kvcache` (``grow``), alternating; reports
    each one's median step time, whether their logits are bit-identical, and torch.profiler's
    self CPU time per step by kind of work. ``python_and_framework`` is the profiled wall
    time that no operator accounts for (Python, module calls, dispatch); the profiler adds
    its own overhead to every operator, so the unprofiled medians are the step times.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cleancurate.attention import use_gqa_decode
    from cleancurate.engine import kvcache

    use_gqa_decode(model)
    b, n, steps, warm = args.batch_size, args.profile_cached, 10, 2
    vocab = model.config.vocab_size
    ids = torch.randint(100, vocab - 100, (b, n), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(b, n, dtype=torch.long)
    mask[::2, :10] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    full = torch.ones(b, n + steps, dtype=torch.long)
    full[:, :n] = mask
    kw = kvcache._cache_kw(model)

    def decode(grow: bool, prof=None):
        times, logits = [], []
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            cache, p = getattr(out, kw), pos[:, -1:]
            if grow:
                kvcache._grow_cache(cache, None, n + steps)
            for i in range(steps):
                if prof is not None and i == warm:
                    prof.start()
                nxt, p = out.logits[:, -1].argmax(-1, keepdim=True), p + 1
                t0 = time.perf_counter()
                out = model(input_ids=nxt, attention_mask=full[:, : n + i + 1], position_ids=p, use_cache=True,
                            logits_to_keep=1, **{kw: cache})
                times.append(time.perf_counter() - t0)
                cache = getattr(out, kw)
                logits.append(out.logits[:, -1])
            if prof is not None:
                prof.stop()
        return times[warm:], torch.stack(logits)

    timed: dict[str, list] = {"concat": [], "grow": []}
    logits = {}
    for _ in range(args.repeats + 1):
        for name in timed:
            t, logits[name] = decode(name == "grow")
            timed[name] += t
    out = {"rows": b, "cached_tokens": n, "steps_timed": len(timed["grow"]),
           "logits_bit_identical": bool(torch.equal(logits["concat"], logits["grow"]))}
    for name in timed:
        prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
        decode(name == "grow", prof)
        out[name] = {"step_ms_median": round(statistics.median(timed[name]) * 1e3, 1),
                     "profile_ms_per_step": _by_kind(prof, vocab, steps - warm)}
    out["grow_saves_ms_per_step"] = round(out["concat"]["step_ms_median"] - out["grow"]["step_ms_median"], 1)
    return out


def _by_kind(prof, vocab: int, steps: int) -> dict:
    """Self CPU milliseconds per step by kind of operator, and the profiled wall time nothing accounts for."""
    kinds: dict[str, float] = {}
    for ev in prof.key_averages(group_by_input_shape=True):
        name, shapes = ev.key, str(ev.input_shapes)
        if name in ("aten::mm", "aten::addmm", "aten::bmm"):
            kind = "lm_head" if str(vocab) in shapes else "linear_layers"
        elif "scaled_dot_product" in name or "flash_attention" in name:
            kind = "attention"
        elif name == "aten::cat":
            kind = "kv_cache_cat"
        elif name in ("aten::copy_", "aten::index_select", "aten::slice"):
            kind = "copies_and_views"
        else:
            kind = "other_operators"
        kinds[kind] = kinds.get(kind, 0.0) + ev.self_cpu_time_total / 1e3
    events = prof.events()
    wall = (max(e.time_range.end for e in events) - min(e.time_range.start for e in events)) / 1e3
    kinds["python_and_framework"] = wall - sum(kinds.values())
    kinds["profiled_wall"] = wall
    return {k: round(v / steps, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each implementation (alternating)")
    ap.add_argument("--no-single", action="store_true", help="skip the batch-size-1 comparison")
    ap.add_argument("--refill-docs", type=int, default=16,
                    help="documents of the continuous-batching section (x the 2x2 grid); 0 skips it")
    ap.add_argument("--refill-max-new-tokens", type=int, default=128)
    ap.add_argument("--no-demo", action="store_true", help="skip the demo-settings section")
    ap.add_argument("--profile-cached", type=int, default=240,
                    help="cached tokens of the profiled decode step (section 'decode_step'); 0 skips it")
    add_threads_option(ap)
    args = ap.parse_args(argv)

    start = begin()
    from cleancurate.config import load

    cur = load("demo").to_dict()["curation"]
    grid = list(itertools.product(cur["temperatures"][:2], cur["top_ps"][:2]))

    set_threads(args.threads)
    lm, load_s = load_model()
    model, tok = lm.model, lm.tokenizer
    timer = ForwardTimer(model)
    out = {"benchmark": "generation", "date": __import__("datetime").date.today().isoformat(), "model": MODEL_SPEC,
           "model_load_s": round(load_s, 3)}
    if not args.no_demo:
        docs = sample_rows(args.docs)
        rows = _grid_rows(tok, cur, grid, docs)
        prompt_tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in rows[0]]
        out["inputs"] = {
            "documents": len(docs), "grid": [list(g) for g in grid], "prompts": len(rows[0]),
            "unique_prompts": len(set(rows[0])), "prompt_tokens_min": min(prompt_tokens),
            "prompt_tokens_max": max(prompt_tokens), "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size, "seeds": [rows[3][0], rows[3][-1]], "repeats": args.repeats,
        }
        out.update(_demo_section(model, tok, rows, args, timer))
    if args.refill_docs:
        # the documents after the demo's, so the two sections do not share prompts
        docs = sample_rows(args.docs + args.refill_docs)[args.docs:]
        out["refill"] = _refill_section(model, tok, _grid_rows(tok, cur, grid, docs), args, timer)
    if args.profile_cached:
        out["decode_step"] = _profile_section(model, args)
    out["ru_maxrss_mib_process"] = maxrss_mib()
    out["environment"] = {**environment(), **start}
    emit(out)


if __name__ == "__main__":
    main()
