"""Token-budget, length-sorted perplexity scoring vs textbook fixed-size padded batches.

    .venv/bin/python -m bench.batching [--rows 96] [--repeats 1] [--batch-rows 16] [--token-budget 1024] [--threads N]

*Budget*: ``score_batch(..., token_budget=1024)`` from ``cleancurate.engine.perplexity``:
rows length-sorted into micro-batches of at most 1024 padded tokens, the LM head
applied only at scored (response) positions.

*Naive*: written here. Same token ids (``encode_pairs``), fixed batches of 16 rows
in input order, right-padded, ``model(input_ids, attention_mask).logits`` over every
position, ``log_softmax`` over the whole vocabulary, ``gather`` of the targets and
a mask keeping response tokens only.

Both run on the same rows in the same process, alternating (budget, naive,
budget, naive, ...) so background CPU load hits both alike. Wall and process CPU
seconds are both reported. One repeat of 96 rows takes about 1.5-3 minutes on 2
CPU cores. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import math

from bench._common import (
    MODEL_SPEC, add_threads_option, begin, emit, environment, load_model, max_rel_diff, maxrss_mib,
    rss_peak_of_self, sample_rows, set_threads, summary, timed_cpu,
)


def naive_score(model, tokenizer, queries, responses, batch_rows: int = 16) -> list[float]:
    """Textbook perplexity: fixed padded batches in input order, full logits, log_softmax, gather."""
    import torch

    from cleancurate.engine.perplexity import encode_pairs

    encoded = encode_pairs(tokenizer, queries, responses)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    with torch.inference_mode():
        for b0 in range(0, len(encoded), batch_rows):
            chunk = encoded[b0:b0 + batch_rows]
            longest = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            score = torch.zeros((len(chunk), longest - 1), dtype=torch.bool)
            for i, (seq, start) in enumerate(chunk):
                ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[i, : len(seq)] = 1
                # target position p (p >= start) is predicted at position p - 1
                score[i, max(start, 1) - 1: len(seq) - 1] = True
            logits = model(input_ids=ids, attention_mask=mask).logits  # [B, T, V]
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok_lp = logp[:, :-1, :].gather(2, ids[:, 1:, None]).squeeze(-1)  # [B, T-1]
            nll = -(tok_lp.double() * score).sum(1)
            counts = score.sum(1)
            for s, c in zip(nll.tolist(), counts.tolist()):
                out.append(math.exp(s / c) if c else float("nan"))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--token-budget", type=int, default=1024)
    add_threads_option(ap)
    args = ap.parse_args(argv)

    start = begin()
    from cleancurate.engine.perplexity import encode_pairs, score_batch

    rows = sample_rows(args.rows)
    queries = [r["query"] for r in rows]
    responses = [r["response"] for r in rows]
    set_threads(args.threads)
    lm, load_s = load_model()
    model, tok = lm.model, lm.tokenizer

    enc = encode_pairs(tok, queries, responses)
    lengths = [len(ids) for ids, _ in enc]
    scored = sum(len(ids) - max(s, 1) for ids, s in enc)
    max_pos = getattr(model.config, "max_position_embeddings", 2048)
    assert max(lengths) <= max_pos, "a row exceeds the context; the naive baseline has no sliding window"
    naive_padded = sum(
        len(lengths[i:i + args.batch_rows]) * max(lengths[i:i + args.batch_rows])
        for i in range(0, len(lengths), args.batch_rows)
    )
    from cleancurate.batching import plan_microbatches

    plan = plan_microbatches(lengths, args.token_budget)
    budget_padded = sum(len(b) * max(lengths[i] for i in b) for b in plan)

    def run_budget():
        return score_batch(model, tok, queries, responses, token_budget=args.token_budget)["ppl"].tolist()

    def run_naive():
        return naive_score(model, tok, queries, responses, args.batch_rows)

    # warm-up: first kernels, allocator, tokenizer caches
    score_batch(model, tok, queries[:8], responses[:8], token_budget=args.token_budget)
    naive_score(model, tok, queries[:8], responses[:8], args.batch_rows)

    t_budget, t_naive, c_budget, c_naive = [], [], [], []
    peak_budget, peak_naive = 0.0, 0.0
    ppl_budget = ppl_naive = None
    for _ in range(args.repeats):
        with rss_peak_of_self() as m:
            ppl_budget, s, c = timed_cpu(run_budget)
        t_budget.append(s)
        c_budget.append(c)
        peak_budget = max(peak_budget, m["peak_rss_mib"] or 0.0)
        with rss_peak_of_self() as m:
            ppl_naive, s, c = timed_cpu(run_naive)
        t_naive.append(s)
        c_naive.append(c)
        peak_naive = max(peak_naive, m["peak_rss_mib"] or 0.0)

    sb, sn = summary(t_budget), summary(t_naive)
    sb["cpu_s"] = [round(c, 3) for c in c_budget]
    sn["cpu_s"] = [round(c, 3) for c in c_naive]
    diff = max_rel_diff(ppl_budget, ppl_naive)
    emit({
        "benchmark": "batching",
        "date": __import__("datetime").date.today().isoformat(),
        "model": MODEL_SPEC,
        "inputs": {
            "rows": len(rows), "total_tokens": sum(lengths), "scored_tokens": scored,
            "min_len": min(lengths), "max_len": max(lengths),
            "token_budget": args.token_budget, "naive_batch_rows": args.batch_rows, "repeats": args.repeats,
            "budget_microbatches": len(plan), "budget_padded_tokens": budget_padded,
            "naive_batches": math.ceil(len(rows) / args.batch_rows), "naive_padded_tokens": naive_padded,
        },
        "model_load_s": round(load_s, 3),
        "budget": sb,
        "naive": sn,
        "ratio_naive_over_budget_median": round(sn["median_s"] / sb["median_s"], 3),
        "ratio_naive_over_budget_min": round(sn["min_s"] / sb["min_s"], 3),
        "ratio_naive_over_budget_cpu": round(sum(c_naive) / sum(c_budget), 3),
        "target_ratio": 2.0,
        "max_rel_diff_ppl": diff,
        "ppl_match_lt_1e-4": diff < 1e-4,
        "memory": {
            "sampled_peak_rss_mib_during_budget": peak_budget,
            "sampled_peak_rss_mib_during_naive": peak_naive,
            "ru_maxrss_mib_process": maxrss_mib(),
            "note": "sampled every 20 ms from /proc/self/status VmRSS; ru_maxrss is the whole process's peak",
        },
        "environment": {**environment(), **start},
    })


if __name__ == "__main__":
    main()
