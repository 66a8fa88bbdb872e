"""Answers of a (fine-tuned) model to held-out prompts, and the perplexity of reference answers.

Both reuse the curation job's batch functions unchanged: generation is
:func:`cleancurate.engine.generate.generate_batch` (per-row settings and seeds,
micro-batches, a failing row gets an error instead of failing the batch) on the
model's own chat template, and perplexity is
:func:`cleancurate.engine.perplexity.score_batch` (the reference answer given the prompt,
prompt tokens masked), so an evaluation measures the model exactly as curation does.
A prompt is user text: it goes into the user turn of the chat template and nowhere else.
"""

from __future__ import annotations

from typing import Sequence


def generate_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int = 0, batch_size: int | None = 16,
                     token_budget: int | None = None) -> list[dict]:
    """One answer per prompt: ``{"answer", "gen_tokens", "error"}`` in input order.

    Temperature 0 decodes greedily; otherwise row ``i`` samples with seed ``seed + i``.
    """
    from cleancurate.prompts import chat_prompt
    from cleancurate.engine.generate import generate_batch

    if not prompts:
        return []
    chats = [chat_prompt(tokenizer, p) for p in prompts]
    n = len(chats)
    df = generate_batch(model, tokenizer, chats, [temperature] * n, [top_p] * n, [seed + i for i in range(n)],
                        max_new_tokens=max_new_tokens, batch_size=batch_size, token_budget=token_budget)
    return [{"answer": t if e is None else None, "gen_tokens": int(g), "error": e}
            for t, g, e in zip(df["text"], df["gen_tokens"], df["error"])]


def reference_perplexity(model, tokenizer, prompts: Sequence[str], references: Sequence[str], *,
                         token_budget: int = 1024, max_context: int | None = None,
                         stride: int = 512) -> list[dict]:
    """Perplexity of each reference answer given its prompt: ``{"ppl", "tokens", "error"}`` in input order."""
    from cleancurate.engine.perplexity import score_batch

    if not prompts:
        return []
    df = score_batch(model, tokenizer, list(prompts), [r or "" for r in references], token_budget=token_budget,
                     max_context=max_context, stride=stride)
    return [{"ppl": float(p), "tokens": int(t), "error": e}
            for p, t, e in zip(df["ppl"], df["scored_tokens"], df["error"])]
