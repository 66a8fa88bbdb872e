"""Reference implementations the tests compare the engine with, kept verbatim.

``baseline_generate_batch`` and ``baseline_sample_next`` are the previous ``generate_batch`` and its
sampler (host-side sampler with a full-vocabulary sort, per-row Python work per step, growing
attention mask). The decode engine must write the same texts and pick the same tokens
(tests/engine/test_generate.py, tests/engine/test_sampling.py); ``bench.generation`` times the
current loop against the same baseline and imports it from here, so both compare with one copy.
They live in tests/ because they are what the engine is checked against: the benchmark only
measures speed against them, and the tests must not depend on the benchmark package.
"""

from __future__ import annotations


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

    from cleancurate.textrules import trim_unfinished

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
    from cleancurate.engine.prompting import stop_token_ids

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
