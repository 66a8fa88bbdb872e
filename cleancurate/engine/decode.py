"""The decode loop of one micro-batch: prefill, then one token per row per step.

One concern: running a fixed set of rows to their stop token or ``max_new_tokens``.
Prompts are left-padded; identical prompts (one parent's sampling grid) are prefilled
once and share their KV cache; only the last position's logits are computed per step.
The loop runs on the model's device: sampling (:mod:`~cleancurate.engine.sampling`)
works on the logits where they are, the done mask and the output tokens are tensors,
the attention mask is allocated once per micro-batch, and a step moves one small tensor
to the host (which rows finished, which rows need a wider look at the vocabulary).
In ``dynamic`` mode a row that finishes leaves the batch (and its KV rows); no waiting
row takes its place (that is :mod:`~cleancurate.engine.refill`).

A generation that runs out of tokens is cut back to its last complete sentence.
"""

from cleancurate.batching import is_oom
from cleancurate.engine.kvcache import (
    _FastPathFailed, _cache_kw, _grow_cache, _padded_rows, _prefill, _static_cache, _step_fn,
)
from cleancurate.engine.sampling import _Sampler
from cleancurate.textrules import trim_unfinished

#: decode modes of :func:`~cleancurate.engine.generate.generate_batch`
DECODE_MODES = ("auto", "dynamic", "static", "compiled")


def _draw(sampler: _Sampler, logits, stop_ids, ending):
    """Each row's next token, settled with one small host transfer.

    ``ending`` (a bool per row, on the device): rows that end with this token whatever it
    is. Returns (tokens, which are stop tokens, which rows ended: a host bool tensor).
    """
    import torch

    tok, exact, probs = sampler.first(logits)
    stop = torch.isin(tok, stop_ids)
    # the step's one transfer: rows the first head could not settle, rows now done
    flags = torch.cat([~exact, ending | stop]).cpu()
    n = len(tok)
    wider = flags[:n].nonzero().squeeze(1)
    if not wider.numel():
        return tok, stop, flags[n:]
    tok = sampler.rest(probs, tok, wider.to(logits.device))
    stop = torch.isin(tok, stop_ids)
    return tok, stop, (ending | stop).cpu()


def _texts(tokenizer, tokens: list[list[int]], counts: list[int], stopped: list[bool]) -> list[tuple[str, int]]:
    """(text, token count) per row; a row that hit max_new_tokens stopped mid-sentence and keeps
    only its complete sentences."""
    texts = [tokenizer.decode(r[:n], skip_special_tokens=True).strip() for r, n in zip(tokens, counts)]
    return [(t if stopped[i] else trim_unfinished(t), counts[i]) for i, t in enumerate(texts)]


def _add_stats(stats: dict | None, counts: dict) -> None:
    if stats is not None:
        for k, val in counts.items():
            stats[k] = stats.get(k, 0) + val


def _generate_group(model, tokenizer, prompt_ids: list[list[int]], temps, top_ps, seeds, max_new_tokens: int,
                    stops: set[int], decode: str = "dynamic", stats: dict | None = None, row_cap: int = 0,
                    drop_finished: bool = True):
    """Decode one micro-batch. Identical prompts (the sampling grid of one parent)
    are prefilled once and their KV cache is shared by index, so a 5x5 grid costs one
    prompt forward pass, not 25. In ``compiled`` mode the batch is padded with idle rows
    (copies of the first prompt that are done from the start) to a shape already recorded."""
    import torch

    device = next(model.parameters()).device
    real = len(prompt_ids)
    static = decode in ("static", "compiled")
    b = _padded_rows(real, row_cap) if decode == "compiled" else real
    if b > real:
        k = b - real
        prompt_ids = list(prompt_ids) + [prompt_ids[0]] * k
        temps, top_ps, seeds = list(temps) + [0.0] * k, list(top_ps) + [1.0] * k, list(seeds) + [0] * k
    uniq: dict[tuple, int] = {}
    owner = [uniq.setdefault(tuple(p), len(uniq)) for p in prompt_ids]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cache_kw = _cache_kw(model)
    sel = torch.tensor(owner, dtype=torch.long)
    sel_dev = sel.to(device)
    sampler = _Sampler(temps, top_ps, seeds, max_new_tokens, device)
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    out = torch.zeros((b, max_new_tokens), dtype=torch.long, device=device)
    n_out = torch.zeros(b, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    done[real:] = True
    counts = {"prefills": 1, "decode_steps": 0, "decoded_row_steps": 0, "idle_row_steps": 0}
    step_fn = _step_fn(model, decode == "compiled")
    # a compiled step with CUDA graphs mutates the static cache in place: not under inference_mode
    grad_ctx = torch.no_grad() if static else torch.inference_mode()
    with grad_ctx:
        past, logits, mask, position = _prefill(model, [list(p) for p in uniq], pad_id, cache_kw)
        longest = mask.shape[1]
        shared = len(uniq) != b or owner != list(range(b))
        if shared:
            logits = logits[sel_dev]
        width = longest + max_new_tokens
        if static:
            # a static cache may be longer than this batch needs: the causal mask hides its tail
            try:
                past, width = _static_cache(model, past, b, width, sel_dev)
            except Exception as exc:  # noqa: BLE001 - e.g. a transformers without this cache API
                if is_oom(exc):
                    raise
                raise _FastPathFailed(str(exc)) from exc
        elif not _grow_cache(past, sel_dev if shared else None, width) and shared:
            past.reorder_cache(sel_dev)
        # the whole attention mask at once: prompt padding, then one column per new token
        full_mask = torch.ones((b, width), dtype=torch.long)
        full_mask[:, :longest] = mask[sel]
        full_mask = full_mask.to(device)
        pos = position[sel][:, -1:].to(device)
        # rows still decoding (indices into the micro-batch); the dynamic cache drops finished rows
        # so no step is spent on them (a static cache and a CUDA graph keep fixed shapes instead)
        live = torch.arange(b, device=device)
        compact = drop_finished and not static
        for step in range(max_new_tokens):
            was_done = done[live]
            tok, stop, ended = _draw(sampler, logits, stop_ids, was_done)
            out[live, step] = tok
            n_out[live] += (~(was_done | stop)).long()
            done[live] = was_done | stop
            sampler.advance()
            if bool(ended.all()) or step == max_new_tokens - 1:
                break
            if compact and bool(ended.any()):
                keep = (~ended).nonzero().squeeze(1).to(device)
                live, tok, pos, full_mask = live[keep], tok[keep], pos[keep], full_mask[keep]
                past.reorder_cache(keep)
                sampler.keep(keep)
            elif not compact:
                counts["idle_row_steps"] += int(ended.sum())
            feed = torch.where(done[live], pad_id, tok)[:, None]
            pos = pos + 1
            step_mask = full_mask if static else full_mask[:, : longest + step + 1]
            res = step_fn(input_ids=feed, attention_mask=step_mask, position_ids=pos,
                          use_cache=True, logits_to_keep=1, **{cache_kw: past})
            counts["decode_steps"] += 1
            counts["decoded_row_steps"] += len(feed)
            if not static:
                past = getattr(res, cache_kw)
            logits = res.logits[:, -1, :]
    _add_stats(stats, {**sampler.stats, **counts})
    return _texts(tokenizer, out.tolist()[:real], n_out.tolist()[:real], done.tolist()[:real])


def _resolve_decode(decode: str, model, refill: bool) -> str:
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode != "auto":
        return decode
    device = next(model.parameters()).device
    # measured on CPU: the dynamic cache is fastest there; on GPU see bench/README.md.
    # Continuous batching runs on the dynamic cache only.
    return "compiled" if device.type == "cuda" and not refill else "dynamic"
