"""The guard's verdict and the judge's digits from a served model's next-token log-probabilities.

The in-process guard (:mod:`~cleancurate.engine.guard`) and judge
(:mod:`~cleancurate.engine.judge`) read the full next-token distribution; a server returns
the ``k`` most likely next tokens with their log-probabilities (``/completions`` with
``logprobs: k``, ``max_tokens: 1``, temperature 0). Prompts are rendered here with the
model's own tokenizer exactly as in-process (the same template, the same defused corpus
text, the guard's verdict prefix appended), and token ids are matched to the server's
token strings by decoding them with that tokenizer.

**When the top ``k`` miss a verdict** (:func:`verdict_score`): a token outside the top
``k`` is at most as likely as the least likely one listed, so the missing side's
probability is taken at that bound (each of its tokens at the smallest listed
log-probability). With the unsafe verdict missing the score is then an *upper* bound of
the in-process one (the cautious side: a screen or a gate may then reject a row the true
value would pass, never the other way round); with the safe verdict missing, a lower
bound that is still near 1 (the unsafe verdict outweighs everything listed). With
neither verdict listed the row gets an ``error``: the screen quarantines it
(``screen_failed``), the gate rejects the candidate.

**The judge's digits**: a digit outside the top ``k`` counts 0, so the digit mass is a
lower bound; under ``metrics.judge_min_digit_mass`` the row is ``judge_unparseable`` as
in-process.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import pandas as pd

from cleancurate.engine.judge import JUDGE_COLUMNS, digit_token_ids, rubric_prompts, score_from_digit_probs
from cleancurate.engine.served import RequestError, ServerClient
from cleancurate.schemas.udf import SCREEN_COLUMNS


def next_token_logprobs(client: ServerClient, prompts: Sequence[str], k: int) -> list[dict | str]:
    """The ``k`` most likely next tokens after each prompt, ``{token text: log-probability}``, or an error string."""
    def one(i: int, _pos: int):
        try:
            got = client.complete(prompts[i], max_tokens=1, temperature=0.0, logprobs=int(k), seed=0)
        except RequestError as exc:
            return str(exc)[:300]
        top = (got.get("logprobs") or {}).get("top_logprobs") or []
        if not top or not isinstance(top[0], dict) or not top[0]:
            return ("server_no_logprobs: the server returned no top_logprobs; it must support logprobs on "
                    f"/completions ({json.dumps(got.get('logprobs'))[:120]})")
        return {str(t): float(lp) for t, lp in top[0].items()}

    return client.map(one, list(range(len(prompts))))


def _strings(tokenizer, ids: Sequence[int]) -> set[str]:
    return {tokenizer.decode([int(t)]) for t in ids}


def verdict_score(top: dict, unsafe: set[str], safe: set[str]) -> tuple[float, str | None]:
    """``p(unsafe) / (p(unsafe) + p(safe))`` from top log-probabilities (see the module doc for a missing side)."""
    floor = min(top.values())
    pu = sum(math.exp(lp) for t, lp in top.items() if t in unsafe)
    ps = sum(math.exp(lp) for t, lp in top.items() if t in safe)
    if pu == 0 and ps == 0:
        return float("nan"), (f"guard_unscored: neither verdict ({sorted(unsafe)} / {sorted(safe)}) is among the "
                              f"server's {len(top)} most likely next tokens; raise server.top_logprobs")
    if pu == 0:
        pu = len(unsafe) * math.exp(floor)
    if ps == 0:
        ps = len(safe) * math.exp(floor)
    return pu / (pu + ps), None


def guard_batch_served(client: ServerClient, tokenizer, fmt, queries: Sequence[str], responses: Sequence[str],
                       k: int) -> pd.DataFrame:
    """Harm probability of each (query, response) by a served guard: the highest over the format's policies."""
    from cleancurate.engine.guard import render, verdict_tokens

    n = len(queries)
    out = pd.DataFrame({"harm": [float("nan")] * n, "error": [None] * n}, dtype=object)
    out["harm"] = out["harm"].astype("float64")
    if n == 0:
        return out[SCREEN_COLUMNS]
    v = verdict_tokens(fmt, tokenizer)
    prefix = tokenizer.decode(list(v.prefix)) if v.prefix else ""
    unsafe, safe = _strings(tokenizer, v.unsafe), _strings(tokenizer, v.safe)
    items = [(row, render(fmt, tokenizer, q, r, p) + prefix)
             for row, (q, r) in enumerate(zip(queries, responses)) for p in fmt.policies]
    tops = next_token_logprobs(client, [p for _, p in items], k)
    for (row, _), top in zip(items, tops):
        if out.at[row, "error"] is not None:
            continue
        score, err = (float("nan"), top) if isinstance(top, str) else verdict_score(top, unsafe, safe)
        if err:
            out.at[row, "error"], out.at[row, "harm"] = err, float("nan")
        elif math.isnan(out.at[row, "harm"]) or score > out.at[row, "harm"]:
            out.at[row, "harm"] = score
    return out[SCREEN_COLUMNS]


def judge_batch_served(client: ServerClient, tokenizer, queries: Sequence[str], texts: Sequence[str], *,
                       template: str, rubrics: Sequence[str], min_digit_mass: float, k: int) -> pd.DataFrame:
    """Helpfulness 0-5 per row by a served judge: the mean of the rubric scores, or an error."""
    n = len(texts)
    if n == 0:
        return pd.DataFrame(columns=JUDGE_COLUMNS)
    digits = [tokenizer.decode([t]) for t in digit_token_ids(tokenizer)]
    tops = next_token_logprobs(client, rubric_prompts(tokenizer, template, rubrics, queries, texts), k)
    scores, errors = [], []
    for row in range(n):
        vals, err = [], None
        for j, top in enumerate(tops[row * len(rubrics):(row + 1) * len(rubrics)]):
            if isinstance(top, str):
                err = top
                break
            probs = [math.exp(top[d]) if d in top else 0.0 for d in digits]  # a digit outside the top k: 0
            value, e = score_from_digit_probs(probs, min_digit_mass)
            if e:
                err = f"{rubrics[j]}: {e}"
                break
            vals.append(value)
        scores.append(sum(vals) / len(rubrics) if err is None else float("nan"))
        errors.append(err)
    return pd.DataFrame({"helpfulness": scores, "error": errors})[JUDGE_COLUMNS]
