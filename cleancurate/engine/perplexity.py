"""Perplexity of a response conditioned on its query, and how much of an original a candidate carries.

One concern: the causal LM's negative log-likelihood of response tokens.
:func:`score_batch` masks query tokens out of the loss, length-sorts rows into
token-budget micro-batches, applies the output layer only at scored positions, scores
texts longer than the context with a sliding window, and restores input order.
:func:`retention_batch` compares two such perplexities.
"""

import math
from typing import Sequence

import pandas as pd

from cleancurate.batching import error_text, plan_microbatches, run_with_backoff
from cleancurate.prompts import background_query, scoring_context
#: the columns of :func:`score_batch`'s frame (the scorer takes ``ppl`` and ``scored_tokens``)
PERPLEXITY_COLUMNS = ["ppl", "scored_tokens", "error"]


def encode_pairs(tokenizer, queries: Sequence[str], responses: Sequence[str]) -> list[tuple[list[int], int]]:
    """Token ids of context + response, and the index of the first response token."""
    out = []
    for q, r in zip(queries, responses):
        ctx = tokenizer(scoring_context(tokenizer, q), add_special_tokens=False)["input_ids"]
        resp = tokenizer(r, add_special_tokens=False)["input_ids"]
        out.append((list(ctx) + list(resp), len(ctx)))
    return out


def window_chunks(ids: list[int], start: int, max_context: int, stride: int) -> list[tuple[list[int], int]]:
    """Split one long sequence into windows of at most ``max_context`` tokens.

    Each window scores only tokens not scored by an earlier one, and sees up to
    ``max_context - stride`` tokens of left context (the HF "strided perplexity"
    scheme). Returns (window ids, index of its first scored token) pairs; a sequence
    that fits is one window.
    """
    n = len(ids)
    if n <= max_context:
        return [(ids, start)]
    stride = max(1, min(stride, max_context - 1))
    chunks = []
    scored_upto = max(start, 1)
    while scored_upto < n:
        end = min(n, scored_upto + stride)
        begin = max(0, end - max_context)
        chunks.append((ids[begin:end], scored_upto - begin))
        scored_upto = end
    return chunks


_COMPILED_BASE: dict = {}  # id(model) -> its transformer body compiled with dynamic shapes (compile=True)
_NLL_CHUNK = 4096  # scored positions per output-layer call: bounds the float32 logits (rows x vocabulary)


def _body(model, compiled: bool):
    """The model's transformer body, or (``compiled``) its ``torch.compile`` form with dynamic
    shapes, built once per worker."""
    base = getattr(model, model.base_model_prefix)
    if not compiled:
        return base
    fn = _COMPILED_BASE.get(id(model))
    if fn is None:
        import torch

        fn = _COMPILED_BASE[id(model)] = torch.compile(base, dynamic=True)
    return fn


def softcap(model, logits):
    """The model's final-logit soft-capping (Gemma 2), where its config sets one; else the logits as they are."""
    import torch

    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _forward_nll(model, chunks: list[tuple[list[int], int]], compiled: bool = False) -> list[tuple[float, int]]:
    """Summed NLL and count of scored tokens for each chunk, in one padded forward pass.

    Rows are right-padded and attention is causal, so no real token ever attends to a
    pad: the forward pass needs no attention mask, which lets the attention kernel take
    its causal fast path (flash attention on GPU) instead of a materialised mask. The
    output layer runs only at scored positions, ``_NLL_CHUNK`` positions at a time, so
    the logits never grow with the token budget.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    pad = 0
    longest = max(len(c[0]) for c in chunks)
    ids = torch.full((len(chunks), longest), pad, dtype=torch.long)
    rows, pos, targets = [], [], []
    for i, (seq, s) in enumerate(chunks):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        first = max(s, 1)
        rows.extend([i] * (len(seq) - first))
        pos.extend(range(first - 1, len(seq) - 1))
        targets.extend(seq[first:])
    if not rows:
        return [(0.0, 0) for _ in chunks]
    base = _body(model, compiled)
    head = model.get_output_embeddings()
    rows_t = torch.tensor(rows, device=device)
    pos_t = torch.tensor(pos, device=device)
    targets_t = torch.tensor(targets, device=device)
    with torch.inference_mode():
        hidden = base(input_ids=ids.to(device)).last_hidden_state
        nll = torch.empty(len(rows), dtype=torch.float32, device=device)
        for a in range(0, len(rows), _NLL_CHUNK):
            b = min(a + _NLL_CHUNK, len(rows))
            logits = softcap(model, head(hidden[rows_t[a:b], pos_t[a:b]]).float())
            nll[a:b] = F.cross_entropy(logits, targets_t[a:b], reduction="none")
        sums = torch.zeros(len(chunks), dtype=torch.float64, device=device)
        sums.index_add_(0, rows_t, nll.double())
        sums = sums.tolist()
    counts = torch.bincount(torch.tensor(rows), minlength=len(chunks)).tolist()
    return [(sums[i], counts[i]) for i in range(len(chunks))]


def score_batch(
    model,
    tokenizer,
    queries: Sequence[str],
    responses: Sequence[str],
    *,
    token_budget: int = 1024,
    max_context: int | None = None,
    stride: int = 512,
    compile: bool = False,
) -> pd.DataFrame:
    """Perplexity of each response given its query.

    Args:
        model: a causal LM (transformers ``PreTrainedModel``).
        tokenizer: its tokenizer.
        queries: query per row.
        responses: response per row.
        token_budget: padded tokens per forward pass (rows x longest row).
        max_context: window length; defaults to the model's context length.
        stride: new tokens scored per window when a row exceeds ``max_context``.
        compile: run the transformer body through ``torch.compile`` (dynamic shapes; GPU).

    Returns:
        DataFrame with ``ppl`` (exp of mean NLL over response tokens), ``scored_tokens``
        and ``error`` (None when the row was scored), in input order.
    """
    n = len(queries)
    result = pd.DataFrame({"ppl": [float("nan")] * n, "scored_tokens": [0] * n, "error": [None] * n})
    if n == 0:
        return result[PERPLEXITY_COLUMNS]
    max_ctx = max_context or getattr(model.config, "max_position_embeddings", 2048)
    encoded = encode_pairs(tokenizer, queries, responses)
    chunks: list[tuple[int, list[int], int]] = []  # (row, ids, score_from)
    for row, (ids, start) in enumerate(encoded):
        if len(ids) - start <= 0:
            result.at[row, "error"] = "empty response: nothing to score"
            continue
        for cids, s in window_chunks(ids, start, max_ctx, stride):
            chunks.append((row, cids, s))
    totals = [[0.0, 0] for _ in range(n)]
    failed: dict[int, str] = {}

    for batch in plan_microbatches([len(c[1]) for c in chunks], token_budget):
        items = [chunks[i] for i in batch]
        outs = run_with_backoff(
            items,
            lambda part: _forward_nll(model, [(c[1], c[2]) for c in part], compile),
            lambda item, exc: error_text(exc),
        )
        for (row, _, _), out in zip(items, outs):
            if isinstance(out, str):
                failed[row] = out
            else:
                totals[row][0] += out[0]
                totals[row][1] += out[1]
    for row in range(n):
        if result.at[row, "error"] is not None:
            continue
        if row in failed:
            result.at[row, "error"] = failed[row]
            continue
        s, c = totals[row]
        result.at[row, "ppl"] = math.exp(s / c) if c else float("nan")
        result.at[row, "scored_tokens"] = c
    result["scored_tokens"] = result["scored_tokens"].astype("int32")
    return result[PERPLEXITY_COLUMNS]


def retention_batch(
    model, tokenizer, queries: Sequence[str], candidates: Sequence[str], originals: Sequence[str], **score_kw,
) -> pd.DataFrame:
    """How much of the original a candidate carries, measured by the scoring model.

    ``retention = ppl(original | query, candidate) / ppl(original | query)``: the
    candidate is given to the model as background in the user's turn, before the query
    (:func:`cleancurate.prompts.background_query`). Well below 1 when reading the
    candidate makes the original less surprising, i.e. the candidate says what the
    original says; near 1 when it adds nothing that explains the original (lost content,
    a wrong fact, an answer turned into a question). On SmolLM2-135M: a faithful
    paraphrase 0.34, a question 0.72, a wrong fact 0.89, an off-topic text 0.94, a
    verbatim copy 0.19, so this rule does not stand alone.

    Returns:
        DataFrame with ``retention`` and ``error`` in input order.
    """
    n = len(queries)
    if n == 0:
        return pd.DataFrame({"retention": [], "error": []})
    pairs = list(dict.fromkeys(zip(queries, originals)))
    base = score_batch(model, tokenizer, [q for q, _ in pairs], [o for _, o in pairs], **score_kw)
    base_ppl = {pair: (p, e) for pair, p, e in zip(pairs, base["ppl"], base["error"])}
    cond = score_batch(model, tokenizer, [background_query(c, q) for c, q in zip(candidates, queries)], originals,
                       **score_kw)
    ratio, errors = [], []
    for q, o, p, e in zip(queries, originals, cond["ppl"], cond["error"]):
        bp, be = base_ppl[(q, o)]
        err = e or be
        errors.append(err)
        ratio.append(float("nan") if err or not bp or math.isnan(bp) else float(p) / float(bp))
    return pd.DataFrame({"retention": ratio, "error": errors})
