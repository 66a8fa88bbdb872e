"""GPU generation and scoring on an 8B-shaped Llama with random weights.

    python -m bench.gpu                       # on a GPU machine: torch + transformers, no Spark, no Java
    python -m bench.gpu --tokenizer DIR       # a tokenizer folder (e.g. Llama 3's) instead of synthetic ids
    python -m bench.gpu --tiny                # small random model on CPU, under a minute (a smoke run)

The model is built from a ``LlamaConfig`` (hidden 4096, 32 layers, 32 heads, 8 KV
heads, intermediate 14336, vocabulary 128256) with random bf16 weights: nothing is
downloaded, and throughput does not depend on weight values. The output layer is
scaled so the logits spread like a trained model's (``--logit-std``, default 8):
with the init's spread (about 1.3) every next-token distribution is nearly flat over
128k tokens, which no real model produces and which would make top-p sampling look
far dearer than it is.

Generation, at each of ``--rows`` (default 64 and 256): prompts of about
``--prompt-tokens`` tokens, ``--samples-per-prompt`` rows per prompt (a document's
sampling grid) with the paper grid's settings, ``--max-new-tokens`` new tokens, no
stop token (every row runs to the end). Compared in the same process on the same
prompts: ``generate_batch`` (one micro-batch) in each decode mode (``compiled``: static
KV cache and a CUDA-graph decode step; ``static``; ``dynamic``), and transformers
``model.generate`` (sampling at temperature 1, top-p 1), with a dynamic and with a
static cache (``cache_implementation="static"``, which compiles its decode step). Each
is run once to warm up (compilation is reported as ``first_call_s``), then timed.

Scoring: ``engine.perplexity.score_batch`` on ``--score-rows`` rows of about 300 tokens
(100 query + 200 response) at the automatic token budget and at 16,384 and 65,536,
against a naive loop: 16 rows per batch in input order, right-padded, full logits at
every position, log-softmax, gather.

Figures: tokens/s; ratios to transformers in the same run; the weight-read roofline
(rows / (weight bytes / HBM bandwidth)); MFU = 2 x params x tokens / seconds / peak
bf16 FLOP/s, with params all weights but the input embedding (a lookup). Peak and
bandwidth come from the device name (H100 SXM 989e12 / 3.35e12, H200 989e12 / 4.8e12;
override with ``--peak-tflops`` / ``--hbm-tbs``). Prints one JSON object.
Guard section: rows/s of the guard harm check at Llama Guard 3 1B and 8B shapes (:mod:`bench.gpu_guard`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

from bench.gpu_guard import add_arguments as add_guard_arguments, bench_guard

# device name fragment -> (peak dense bf16 FLOP/s, HBM bytes/s); first match wins
_DEVICES = [
    ("H200", 989e12, 4.8e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100 NVL", 835e12, 3.9e12),
    ("H100", 989e12, 3.35e12),
    ("A100", 312e12, 2.0e12),
]

FULL = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=1000, max_position_embeddings=1024)
# the paper's 5 x 5 grid, cycled over the rows of each prompt
_GRID = [(t, p) for t in (0.2, 0.4, 0.6, 0.8, 1.0) for p in (0.2, 0.4, 0.6, 0.8, 1.0)]


class SyntheticTokenizer:
    """Token ids written as text ("17 4093 22"): prompts round-trip exactly; no stop tokens."""

    pad_token_id = 0
    eos_token_id = None
    unk_token_id = None
    chat_template = None

    def __call__(self, text, add_special_tokens=False, **_):
        return {"input_ids": [int(t) for t in text.split()]}

    def convert_tokens_to_ids(self, tok):
        return None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def build_model(shape: dict, device: str, dtype, logit_std: float):
    """A Llama of ``shape`` with random weights, initialised on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**shape, tie_word_embeddings=False)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    with torch.no_grad():
        # final norm weights are 1, so hidden rows have unit RMS and logit std ~ |w_j| * sqrt(hidden)
        w = model.get_output_embeddings().weight
        w.mul_(logit_std / (w.float().std().item() * math.sqrt(shape["hidden_size"])))
    return model


def device_figures(device: str, peak_tflops: float | None, hbm_tbs: float | None) -> dict:
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    peak, bw = None, None
    for frag, p, b in _DEVICES:
        if frag in name:
            peak, bw = p, b
            break
    peak = peak_tflops * 1e12 if peak_tflops else peak
    bw = hbm_tbs * 1e12 if hbm_tbs else bw
    return {"name": name, "peak_bf16_flops": peak, "hbm_bytes_per_s": bw}


def _sync(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def make_prompts(rows: int, per_prompt: int, prompt_tokens: int, vocab: int, tokenizer, seed: int = 0):
    """(prompt strings, prompt id lists, temperatures, top_ps, seeds) for ``rows`` rows."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n_prompts = -(-rows // per_prompt)
    texts, id_lists = [], []
    for _ in range(n_prompts):
        n = int(prompt_tokens * (0.75 + 0.5 * torch.rand((), generator=g).item()))
        ids = torch.randint(10, vocab, (n,), generator=g).tolist()
        synthetic = isinstance(tokenizer, SyntheticTokenizer)
        text = tokenizer.decode(ids) if synthetic else tokenizer.decode(ids, skip_special_tokens=True)
        texts.append(text)
        id_lists.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    prompts, ids, temps, tops, seeds = [], [], [], [], []
    for r in range(rows):
        k = r // per_prompt
        t, p = _GRID[(r % per_prompt) % len(_GRID)]
        prompts.append(texts[k])
        ids.append(id_lists[k])
        temps.append(t)
        tops.append(p)
        seeds.append(10_000 + r)
    return prompts, ids, temps, tops, seeds


def hf_generate(model, id_lists, max_new: int, device: str, static: bool):
    """transformers ``generate`` on left-padded prompts; every row makes ``max_new`` tokens."""
    import torch

    longest = max(len(i) for i in id_lists)
    ids = torch.zeros((len(id_lists), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(id_lists):
        ids[r, longest - len(p):] = torch.tensor(p)
        mask[r, longest - len(p):] = 1
    kw = dict(cache_implementation="static") if static else {}
    impl = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"  # transformers as shipped (generate_batch switches the model)
    try:
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new,
                                 min_new_tokens=max_new, pad_token_id=0, **kw)
    finally:
        model.config._attn_implementation = impl
    return int((out.shape[1] - longest) * out.shape[0])


def bench_generation(model, tokenizer, args, dev: dict, params: int, param_bytes: int, on_entry=None) -> dict:
    from cleancurate.batching import generation_sizes
    from cleancurate.engine.generate import generate_batch

    results = {}
    vocab = model.config.vocab_size
    modes = [m for m in args.modes.split(",") if m]
    for rows in [int(r) for r in args.rows.split(",")]:
        prompts, id_lists, temps, tops, seeds = make_prompts(rows, args.samples_per_prompt, args.prompt_tokens,
                                                             vocab, tokenizer)
        entry = {"rows": rows, "unique_prompts": len(set(prompts)),
                 "prompt_tokens_mean": round(sum(len(i) for i in id_lists) / rows, 1),
                 "max_new_tokens": args.max_new_tokens, "runs": {}}
        sizes = generation_sizes(model, max(len(i) for i in id_lists), args.max_new_tokens)
        entry["auto_sizes"] = {"rows": sizes[0], "token_budget": sizes[1]} if sizes else None

        def ours(mode, stats=None):
            return generate_batch(model, tokenizer, prompts, temps, tops, seeds, max_new_tokens=args.max_new_tokens,
                                  batch_size=rows, decode=mode, stats=stats)

        for mode in modes:
            warm, first = _timed(lambda: ours(mode), args.device)
            stats: dict = {}
            df, sec = _timed(lambda: ours(mode, stats), args.device)
            tokens = int(df["gen_tokens"].sum())
            errs = [e for e in df["error"].tolist() if e]
            rerun_same = df["text"].tolist() == warm["text"].tolist()
            entry["runs"][f"generate_batch_{mode}"] = {
                "decode_ran": stats.get("decode"), "first_call_s": round(first, 2), "seconds": round(sec, 3),
                "tokens": tokens, "tokens_per_s": round(tokens / sec, 1), "errors": errs[:3],
                "sampler_row_steps": stats.get("rows"), "sampler_wider": stats.get("wider"),
                "rerun_identical_texts": rerun_same,
            }
        for name, static in (("hf_generate", False), ("hf_generate_static", True)):
            if name == "hf_generate_static" and (args.no_hf_static or str(rows) not in args.hf_static_rows.split(",")):
                continue
            try:
                _, first = _timed(lambda: hf_generate(model, id_lists, args.max_new_tokens, args.device, static),
                                  args.device)
                tokens, sec = _timed(lambda: hf_generate(model, id_lists, args.max_new_tokens, args.device, static),
                                     args.device)
                entry["runs"][name] = {"first_call_s": round(first, 2), "seconds": round(sec, 3), "tokens": tokens,
                                       "tokens_per_s": round(tokens / sec, 1)}
            except Exception as exc:  # noqa: BLE001 - report, keep the other figures
                entry["runs"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        best = max((v for k, v in entry["runs"].items() if k.startswith("generate_batch") and "tokens_per_s" in v),
                   key=lambda v: v["tokens_per_s"], default=None)
        hf = entry["runs"].get("hf_generate", {}).get("tokens_per_s")
        hf_static = entry["runs"].get("hf_generate_static", {}).get("tokens_per_s")
        if best:
            entry["best_generate_batch_tokens_per_s"] = best["tokens_per_s"]
            entry["ratio_to_hf_generate"] = round(best["tokens_per_s"] / hf, 3) if hf else None
            entry["ratio_to_hf_generate_static"] = round(best["tokens_per_s"] / hf_static, 3) if hf_static else None
            if dev["peak_bf16_flops"]:
                entry["mfu"] = round(2 * params * best["tokens_per_s"] / dev["peak_bf16_flops"], 4)
        if dev["hbm_bytes_per_s"]:
            entry["weight_read_roofline_tokens_per_s"] = round(rows / (param_bytes / dev["hbm_bytes_per_s"]), 1)
        results[str(rows)] = entry
        if on_entry:
            on_entry(results)
    return results


def probe_determinism(model, tokenizer, args, rows: int = 64, new: int = 16) -> dict:
    """Which step of generation differs between two identical calls on this device.

    The same 64 prompts twice each: prompt logits (bitwise), the sampler on fixed logits
    with fresh generators, greedy decoding and sampled decoding (``dynamic``)."""
    import torch

    from cleancurate.engine.generate import generate_batch
    from cleancurate.engine.sampling import sample_next

    prompts, id_lists, temps, tops, seeds = make_prompts(rows, args.samples_per_prompt, args.prompt_tokens,
                                                         model.config.vocab_size, tokenizer, seed=7)
    longest = max(len(i) for i in id_lists)
    ids = torch.zeros((rows, longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(id_lists):
        ids[r, longest - len(p):] = torch.tensor(p)
        mask[r, longest - len(p):] = 1
    ids, mask = ids.to(args.device), mask.to(args.device)
    out = {}
    with torch.inference_mode():
        a = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
        b = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
    out["prefill_logits_identical"] = bool(torch.equal(a, b))
    out["prefill_logits_max_abs_diff"] = float((a - b).abs().max())

    def gens():
        return [torch.Generator().manual_seed(s) for s in seeds]

    t1 = sample_next(a, temps, tops, gens())
    t2 = sample_next(a, temps, tops, gens())
    out["sampler_identical_rows"] = int((t1 == t2).sum())
    for name, tt in (("greedy", [0.0] * rows), ("sampled", temps)):
        x = generate_batch(model, tokenizer, prompts, tt, tops, seeds, max_new_tokens=new, batch_size=rows,
                           decode="dynamic")
        y = generate_batch(model, tokenizer, prompts, tt, tops, seeds, max_new_tokens=new, batch_size=rows,
                           decode="dynamic")
        same = [p == q for p, q in zip(x["text"], y["text"])]
        out[f"{name}_identical_rows"] = sum(same)
        diverge = [next((i for i, (u, v) in enumerate(zip(p.split(), q.split())) if u != v), None)
                   for p, q, s in zip(x["text"], y["text"], same) if not s]
        out[f"{name}_first_differing_token"] = sorted(d for d in diverge if d is not None)[:10]
    out["rows"] = rows
    return out


def free_generation_memory(model) -> None:
    """Drop the KV caches generation keeps for reuse (ours and transformers'), before scoring."""
    import gc

    import torch

    from cleancurate.engine.kvcache import release_decode_cache

    release_decode_cache()
    if hasattr(model, "_cache"):
        del model._cache
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def naive_scores(model, id_pairs, device: str, batch: int = 16):
    """Perplexity with fixed batches of ``batch`` rows, right-padded, full logits everywhere."""
    import torch

    out = []
    with torch.inference_mode():
        for s in range(0, len(id_pairs), batch):
            part = id_pairs[s:s + batch]
            longest = max(len(ids) for ids, _ in part)
            ids = torch.zeros((len(part), longest), dtype=torch.long)
            mask = torch.zeros_like(ids)
            score = torch.zeros((len(part), longest), dtype=torch.bool)
            for r, (seq, start) in enumerate(part):
                ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
                score[r, start: len(seq)] = True
            ids, mask, score = ids.to(device), mask.to(device), score.to(device)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(2, ids[:, 1:, None]).squeeze(2)
            m = score[:, 1:]
            out += torch.exp((nll * m).sum(1) / m.sum(1)).tolist()
    return out


def bench_scoring(model, tokenizer, args, dev: dict, params: int) -> dict:
    import torch

    from cleancurate.batching import scoring_token_budget
    from cleancurate.engine.perplexity import encode_pairs, score_batch

    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    q_len, r_len = args.score_tokens // 3, args.score_tokens - args.score_tokens // 3
    queries, responses = [], []
    for _ in range(args.score_rows):
        f = 0.8 + 0.4 * torch.rand((), generator=g).item()
        queries.append(tokenizer.decode(torch.randint(10, vocab, (int(q_len * f),), generator=g).tolist()))
        responses.append(tokenizer.decode(torch.randint(10, vocab, (int(r_len * f),), generator=g).tolist()))
    pairs = encode_pairs(tokenizer, queries, responses)
    tokens = sum(len(ids) for ids, _ in pairs)
    auto = scoring_token_budget(model)
    budgets = sorted({b for b in (auto, *[int(x) for x in args.budgets.split(",") if x]) if b})
    res = {"rows": args.score_rows, "tokens": tokens, "auto_token_budget": auto, "runs": {}}
    ref = None
    for budget in budgets:
        score_batch(model, tokenizer, queries[:32], responses[:32], token_budget=budget)  # warm-up
        try:
            df, sec = _timed(lambda: score_batch(model, tokenizer, queries, responses, token_budget=budget),
                             args.device)
        except Exception as exc:  # noqa: BLE001
            res["runs"][str(budget)] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        run = {"seconds": round(sec, 3), "tokens_per_s": round(tokens / sec, 1),
               "row_errors": int(df["error"].notna().sum())}
        if dev["peak_bf16_flops"]:
            run["mfu"] = round(2 * params * tokens / sec / dev["peak_bf16_flops"], 4)
        res["runs"][str(budget)] = run
        ref = df["ppl"].tolist()
    if args.score_compile:
        budget = auto or budgets[-1]
        try:
            _, first = _timed(lambda: score_batch(model, tokenizer, queries[:64], responses[:64], token_budget=budget,
                                                  compile=True), args.device)
            df, sec = _timed(lambda: score_batch(model, tokenizer, queries, responses, token_budget=budget,
                                                 compile=True), args.device)
            run = {"first_call_s": round(first, 2), "seconds": round(sec, 3), "tokens_per_s": round(tokens / sec, 1),
                   "row_errors": int(df["error"].notna().sum()), "errors": df["error"].dropna().unique().tolist()[:2]}
            if dev["peak_bf16_flops"]:
                run["mfu"] = round(2 * params * tokens / sec / dev["peak_bf16_flops"], 4)
            if ref:
                run["ppl_max_rel_diff_vs_eager"] = round(max(abs(a - b) / b for a, b in zip(df["ppl"], ref)), 5)
        except Exception as exc:  # noqa: BLE001
            run = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        res["runs"][f"{budget}_compiled"] = run
    naive_scores(model, pairs[:16], args.device)  # warm-up
    naive, sec = _timed(lambda: naive_scores(model, pairs, args.device), args.device)
    res["naive_loop"] = {"seconds": round(sec, 3), "tokens_per_s": round(tokens / sec, 1)}
    if dev["peak_bf16_flops"]:
        res["naive_loop"]["mfu"] = round(2 * params * tokens / sec / dev["peak_bf16_flops"], 4)
    if ref:
        rel = [abs(a - b) / b for a, b in zip(ref, naive) if b and math.isfinite(a) and math.isfinite(b)]
        res["ppl_max_rel_diff_vs_naive"] = round(max(rel), 5) if rel else None
    ok = [v for v in res["runs"].values() if "seconds" in v]
    if ok:
        best = min(ok, key=lambda v: v["seconds"])
        res["best_speedup_vs_naive"] = round(sec / best["seconds"], 3)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small random model on CPU (smoke run)")
    ap.add_argument("--tokenizer", help="a tokenizer folder (git-ignored, local) instead of synthetic ids")
    ap.add_argument("--device", default=None, help="default cuda:0 (cpu with --tiny)")
    ap.add_argument("--rows", default=None, help="generation rows, comma-separated (default 64,256)")
    ap.add_argument("--modes", default=None, help="decode modes of generate_batch (default compiled,static,dynamic)")
    ap.add_argument("--samples-per-prompt", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default 300 (32 with --tiny)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (8 with --tiny)")
    ap.add_argument("--score-rows", type=int, default=None, help="default 512 (32 with --tiny)")
    ap.add_argument("--score-tokens", type=int, default=None, help="default 300 (48 with --tiny)")
    ap.add_argument("--budgets", default=None, help="scoring token budgets besides the automatic one")
    ap.add_argument("--logit-std", type=float, default=8.0)
    ap.add_argument("--no-hf-static", action="store_true", help="skip generate(cache_implementation='static')")
    ap.add_argument("--hf-static-rows", default="64,256", help="row counts at which generate(static) runs too")
    ap.add_argument("--scoring-first", action="store_true", help="measure scoring before generation")
    ap.add_argument("--out", help="also write the JSON here, after every finished section (partial runs keep figures)")
    ap.add_argument("--skip-scoring", action="store_true")
    ap.add_argument("--no-score-compile", dest="score_compile", action="store_false",
                    help="skip scoring with the body compiled (dynamic shapes; ~100 s first call on an H100)")
    ap.add_argument("--probe", action="store_true", help="first check run-to-run determinism on the device")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (--tiny); see bench/README.md")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--hbm-tbs", type=float, default=None)
    add_guard_arguments(ap)
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.device = args.device or ("cpu" if tiny else "cuda:0")
    args.rows = args.rows or ("8,16" if tiny else "64,256")
    args.modes = args.modes or ("static,dynamic" if tiny else "compiled,static,dynamic")
    args.prompt_tokens = args.prompt_tokens or (32 if tiny else 300)
    args.max_new_tokens = args.max_new_tokens or (8 if tiny else 64)
    args.score_rows = args.score_rows or (32 if tiny else 512)
    args.score_tokens = args.score_tokens or (48 if tiny else 300)
    args.budgets = args.budgets if args.budgets is not None else ("512" if tiny else "16384,65536")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import transformers

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device visible: run on a GPU machine, or use --tiny for the CPU smoke run")
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)  # two threads collapse on a shared 2-core machine
    if tiny:
        torch.manual_seed(0)
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = SyntheticTokenizer()
    shape = dict(TINY if tiny else FULL)
    if args.tokenizer and len(tokenizer) > shape["vocab_size"]:
        sys.exit(f"the tokenizer has {len(tokenizer)} tokens, more than the model's {shape['vocab_size']}")
    t0 = time.perf_counter()
    model = build_model(shape, args.device, dtype, args.logit_std)
    build_s = time.perf_counter() - t0
    params_all = sum(p.numel() for p in model.parameters())
    params = params_all - model.get_input_embeddings().weight.numel()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    dev = device_figures(args.device, args.peak_tflops, args.hbm_tbs)
    out = {
        "benchmark": "gpu", "date": __import__("datetime").date.today().isoformat(), "tiny": tiny,
        "device": dev, "dtype": str(dtype).replace("torch.", ""), "model_shape": shape,
        "params": params_all, "params_for_flops": params, "param_bytes": param_bytes,
        "model_build_s": round(build_s, 2), "tokenizer": args.tokenizer or "synthetic ids",
        "logit_std": args.logit_std,
    }
    out["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "cuda": torch.version.cuda}

    def save(section=None, value=None):
        if section:
            out[section] = value
        if args.out:
            with open(args.out, "w") as f:
                json.dump(out, f, indent=2)

    def scoring():
        if not args.skip_scoring:
            save("scoring", bench_scoring(model, tokenizer, args, dev, params))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    if args.probe:
        save("determinism", probe_determinism(model, tokenizer, args))
    if args.scoring_first:
        scoring()
    save("generation", bench_generation(model, tokenizer, args, dev, params, param_bytes,
                                        on_entry=lambda r: save("generation", r)))
    free_generation_memory(model)
    if not args.scoring_first:
        scoring()
    if not args.skip_guard:
        save("guard", bench_guard(args, dev, build_model=build_model, timed=_timed))
    out["environment"]["pyspark_loaded"] = "pyspark" in sys.modules
    save()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
