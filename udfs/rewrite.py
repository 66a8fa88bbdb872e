"""Rewrite generation: sample revisions of a response for a grid of settings.

Reads: ``query``, ``parent_text``, ``temperature``, ``top_p``, ``seed``.
Adds: ``text``, ``gen_tokens``, ``error``.

A generation that runs out of tokens is cut back to its last complete sentence.

Generation is batched across documents *and* across sampling settings: the
decoding loop below applies each row's own temperature and top-p and draws each
row's tokens from its own seeded generator. A candidate's text therefore depends
only on its prompt, settings and seed, not on which rows share its batch, and no
grouping by setting is needed. Prompts are left-padded; only the last position's
logits are computed at each step.
"""

import inspect
from typing import Callable, Iterator, Sequence, Tuple

import pandas as pd

from cleancurate.batching import error_text, plan_microbatches, run_with_backoff
from cleancurate.prompts import chat_prompt, user_message
from cleancurate.schemas.udf import GENERATION, GENERATION_COLUMNS
from cleancurate.udfs.quality import trim_unfinished


def build_prompts(tokenizer, instruction: str, system: str | None, queries: Sequence[str], texts: Sequence[str]) -> list[str]:
    """Chat-formatted revision prompts with the corpus text inside delimiters."""
    return [chat_prompt(tokenizer, user_message(instruction, q, t), system) for q, t in zip(queries, texts)]


def stop_token_ids(tokenizer) -> set[int]:
    """End-of-sequence ids, including the chat template's end-of-turn marker."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


def sample_next(logits, temperatures, top_ps, generators):
    """One token per row from its own (temperature, top-p) and generator.

    Temperature 0 is greedy. Otherwise the row's distribution is tempered, cut to the
    smallest prefix (by probability) whose mass reaches top-p, and sampled by inverse
    CDF with one uniform number drawn from the row's own generator, so a row's draw
    never depends on the other rows of the batch. Sorting is batched and stable.
    """
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


def _generate_group(model, tokenizer, prompt_ids: list[list[int]], temps, top_ps, seeds, max_new_tokens: int, stops: set[int]):
    """Decode one micro-batch. Identical prompts (the sampling grid of one parent)
    are prefilled once and their KV cache is shared by index, so a 5x5 grid costs one
    prompt forward pass, not 25."""
    import torch

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
    # transformers 5 renamed past_key_values to cache; support both
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
            nxt = sample_next(logits, temps, top_ps, gens)
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
    # a row that hit max_new_tokens stopped mid-sentence: keep its complete sentences only
    return [(t if done[i] else trim_unfinished(t), len(out_tokens[i])) for i, t in enumerate(texts)]


def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    temperatures: Sequence[float],
    top_ps: Sequence[float],
    seeds: Sequence[int],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    token_budget: int | None = None,
) -> pd.DataFrame:
    """Generate one continuation per prompt with per-row settings and seeds.

    Rows are length-sorted into micro-batches (at most ``batch_size`` rows and, if
    given, ``token_budget`` padded prompt+generation tokens); a failing micro-batch is
    halved and retried, and a row that fails alone gets an ``error``.

    Returns:
        DataFrame with ``text``, ``gen_tokens`` and ``error`` in input order.
    """
    n = len(prompts)
    texts: list[str | None] = [None] * n
    counts = [0] * n
    errors: list[str | None] = [None] * n
    if n == 0:
        return pd.DataFrame({"text": texts, "gen_tokens": counts, "error": errors})[GENERATION_COLUMNS]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    stops = stop_token_ids(tokenizer)
    budget = token_budget or 10**12
    lengths = [len(e) + max_new_tokens for e in encoded]
    for batch in plan_microbatches(lengths, budget, max_rows=batch_size, keys=list(prompts)):
        outs = run_with_backoff(
            batch,
            lambda part: _generate_group(
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


def make_rewrite_fn(model_cfg: dict, runtime_cfg: dict, curation_cfg: dict) -> Callable[..., pd.DataFrame]:
    """Factory: the worker's cached model and a batch function over pandas Series."""
    from cleancurate.models import get_model

    backend = model_cfg.get("backend", "transformers")
    if backend == "vllm":
        from cleancurate.udfs.vllm_backend import make_vllm_rewrite_fn

        return make_vllm_rewrite_fn(model_cfg, runtime_cfg, curation_cfg)
    lm = get_model(
        model_cfg["name"], "causal-lm", model_cfg["device"], model_cfg["dtype"],
        model_cfg["allow_network"], runtime_cfg.get("num_threads"),
    )

    def fn(queries: pd.Series, parents: pd.Series, temps: pd.Series, top_ps: pd.Series, seeds: pd.Series) -> pd.DataFrame:
        prompts = build_prompts(
            lm.tokenizer, curation_cfg["prompt"], curation_cfg.get("system_prompt"),
            queries.fillna("").tolist(), parents.fillna("").tolist(),
        )
        return generate_batch(
            lm.model, lm.tokenizer, prompts, temps.tolist(), top_ps.tolist(), seeds.tolist(),
            max_new_tokens=curation_cfg["max_new_tokens"], batch_size=runtime_cfg["gen_batch_size"],
        )

    return fn


def rewrite_udf(model_cfg: dict, runtime_cfg: dict, curation_cfg: dict):
    """Spark iterator pandas UDF ``(query, parent_text, temperature, top_p, seed) -> struct<text, gen_tokens, error>``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(GENERATION)
    def rewrite(
        batches: Iterator[Tuple[pd.Series, pd.Series, pd.Series, pd.Series, pd.Series]],
    ) -> Iterator[pd.DataFrame]:
        fn = make_rewrite_fn(model_cfg, runtime_cfg, curation_cfg)
        for queries, parents, temps, top_ps, seeds in batches:
            yield fn(queries, parents, temps, top_ps, seeds)

    return rewrite.asNondeterministic()
