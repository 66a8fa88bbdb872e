"""LLM rubric judge read from next-token digit probabilities.

For each rubric (e.g. relevance, clarity, comprehensiveness, usefulness) the judge sees
the rubric prompt and the score is the expected value of the digit 0-5 under the
model's next-token distribution, renormalised over the six digits. Nothing is parsed
from free text. When the digits hold less than ``min_digit_mass`` of the probability
the judge did not answer with a score; that row gets an error instead of a number.

A capable instruction model is needed (see README); the embedded 135M model is not a
usable judge, which is why the CPU default helpfulness signal is embedding relevance.
The curation job runs it through the candidate scorer (:mod:`cleancurate.engine.scorer`),
the evaluation job as its helpfulness and harm judge.
"""

from typing import Sequence

import pandas as pd

from cleancurate.batching import error_text, plan_microbatches, run_with_backoff
from cleancurate.engine.kvcache import left_padded
from cleancurate.prompts import chat_prompt, neutralize
#: the columns of :func:`judge_batch`'s frame
JUDGE_COLUMNS = ["helpfulness", "error"]

DIGITS = "012345"


def digit_token_ids(tokenizer) -> list[int]:
    """Token id of each digit 0-5 as the first token of an answer."""
    ids = []
    for d in DIGITS:
        toks = tokenizer(d, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"judge tokenizer splits the digit {d!r} into {len(toks)} tokens; pick another judge model")
        ids.append(toks[0])
    return ids


def score_from_digit_probs(probs: Sequence[float], min_mass: float) -> tuple[float, str | None]:
    """Expected digit under renormalised digit probabilities, or an error.

    Args:
        probs: probability of each digit 0..5 under the full next-token distribution.
        min_mass: the least total digit probability that counts as an answer.
    """
    mass = float(sum(probs))
    if mass < min_mass:
        return float("nan"), f"judge_unparseable: digits hold {mass:.2f} of the next-token probability"
    return sum(i * p for i, p in enumerate(probs)) / mass, None


def rubric_prompts(tokenizer, template: str, rubrics: Sequence[str], queries: Sequence[str], texts: Sequence[str]) -> list[str]:
    """One chat prompt per (row, rubric), row-major."""
    out = []
    for q, t in zip(queries, texts):
        for rubric in rubrics:
            user = template.format(query=neutralize(q), response=neutralize(t), rubric=rubric)
            out.append(chat_prompt(tokenizer, user))
    return out


def _digit_probs(model, tokenizer, prompt_ids: list[list[int]], digit_ids: list[int]) -> list[list[float]]:
    import torch

    device = next(model.parameters()).device
    ids, mask, pos = left_padded(prompt_ids, tokenizer.pad_token_id or 0)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                       logits_to_keep=1).logits[:, -1, :].float()
        probs = torch.softmax(logits, dim=-1)[:, digit_ids].cpu()
    return probs.tolist()


def judge_batch(
    model, tokenizer, queries: Sequence[str], texts: Sequence[str], *, template: str,
    rubrics: Sequence[str], min_digit_mass: float = 0.5, token_budget: int = 4096,
) -> pd.DataFrame:
    """Helpfulness 0-5 per row: the mean of the rubric scores, or an error."""
    n = len(texts)
    if n == 0:
        return pd.DataFrame(columns=JUDGE_COLUMNS)
    digit_ids = digit_token_ids(tokenizer)
    prompts = rubric_prompts(tokenizer, template, rubrics, queries, texts)
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    probs: list = [None] * len(enc)
    for batch in plan_microbatches([len(e) for e in enc], token_budget):
        outs = run_with_backoff(batch, lambda part: _digit_probs(model, tokenizer, [enc[i] for i in part], digit_ids),
                                lambda i, exc: error_text(exc))
        for i, out in zip(batch, outs):
            probs[i] = out
    k = len(rubrics)
    scores, errors = [], []
    for row in range(n):
        vals, err = [], None
        for j in range(k):
            p = probs[row * k + j]
            if isinstance(p, str):
                err = p
                break
            v, e = score_from_digit_probs(p, min_digit_mass)
            if e:
                err = f"{rubrics[j]}: {e}"
                break
            vals.append(v)
        scores.append(sum(vals) / k if err is None else float("nan"))
        errors.append(err)
    return pd.DataFrame({"helpfulness": scores, "error": errors})[JUDGE_COLUMNS]
