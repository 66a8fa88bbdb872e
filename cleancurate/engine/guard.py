"""Safety classifier language models as the harm check: ``P(unsafe | query, response)``.

A guard model (Llama Guard 3, ShieldGemma, Qwen3Guard-Gen, ...) is a causal LM trained to
answer a moderation prompt with a verdict: ``safe`` / ``unsafe``, ``Yes`` / ``No``. Nothing
is generated and nothing is parsed from free text: each prompt runs once, and the score is
read from the next-token logits where the verdict starts, as the model cards score them
(the same idea as the rubric judge's digit probabilities, :mod:`~cleancurate.engine.judge`).

**Formats are data** (:class:`GuardFormat`, ``conf/safety/guard/<name>.yaml``): the prompt
template the model was trained with, with ``{query}``, ``{response}`` and ``{policy}``
placeholders (or ``chat_template: true``: the checkpoint's own chat template renders one
user and one assistant turn), the policies (one pass per policy, the row scored by its
highest; ShieldGemma asks about one policy per prompt), the unsafe and safe verdict
strings, and the default thresholds. Corpus text is data here too: the format's
delimiters and the tokenizer's special tokens inside a query or response are defused
(:func:`render`), so a row cannot close the conversation block or write a verdict.

**Verdicts** (:func:`verdict_tokens`): each verdict string is tokenized in context (after
the prompt's fixed ending). Their common prefix is teacher-forced; at the first position
where they differ the score is ``p(unsafe tokens) / (p(unsafe tokens) + p(safe tokens))``
(Llama Guard's ``unsafe`` / ``safe`` differ at their first token in some tokenizers; the
``Safety: Unsafe`` / ``Safety: Safe`` of Qwen3Guard share two). Verdicts that no position
tells apart are a :class:`GuardFormatError` naming the format; so is a prompt over the
model's context (for that row: its error).

:func:`guard_batch` scores rows in token-budget micro-batches like perplexity scoring
(:mod:`~cleancurate.engine.perplexity`): right-padded, no attention mask (causal: a real
token never sees a pad), the output layer only at each row's last position.
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from cleancurate.batching import error_text, plan_microbatches, run_with_backoff, text_config
from cleancurate.prompts import neutralize
from cleancurate.schemas.udf import SCREEN_COLUMNS

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_PLACEHOLDER = re.compile(r"\{(query|response|policy)\}")
_KEYS = ("name", "source", "card", "notes", "template", "chat_template", "policies", "verdicts", "delimiters",
         "threshold", "gate_threshold")
_PROBE = "Hello."  # query and response of the prompt the verdicts are tokenized after


class GuardFormatError(ValueError):
    """A guard format cannot be used: a bad file, verdicts a tokenizer cannot tell apart, a prompt too long."""


def _strings(value, what: str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise GuardFormatError(f"guard format {name!r}: {what} must be a non-empty list of non-empty strings")
    return tuple(value)


def _probability(value, what: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise GuardFormatError(f"guard format {name!r}: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GuardFormat:
    """How one guard model is asked, and how its answer is read (see the module docstring)."""

    name: str
    unsafe: tuple[str, ...]
    safe: tuple[str, ...]
    template: str = ""
    chat_template: bool = False
    policies: tuple[str, ...] = ("",)
    delimiters: tuple[str, ...] = ()
    threshold: float = 0.5
    gate_threshold: float = 0.5

    @classmethod
    def from_yaml(cls, text: str, name: str = "") -> "GuardFormat":
        """Parse and check a format file's text; ``name`` is used when the file has none."""
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GuardFormatError(f"guard format {name!r} is not valid YAML: {exc}") from exc
        if not isinstance(d, dict):
            raise GuardFormatError(f"guard format {name!r} must hold a mapping")
        name = str(d.get("name") or name or "unnamed")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise GuardFormatError(f"guard format {name!r}: unknown key(s) {unknown}; allowed: {list(_KEYS)}")
        template, chat = d.get("template") or "", d.get("chat_template", False)
        if not isinstance(template, str) or not isinstance(chat, bool) or bool(template) == chat:
            raise GuardFormatError(f"guard format {name!r} needs either a template (text with {{query}} and "
                                   "{response}) or chat_template: true (the model's own chat template)")
        found = set(_PLACEHOLDER.findall(template))
        if template and not {"query", "response"} <= found:
            raise GuardFormatError(f"guard format {name!r}: the template must contain {{query}} and {{response}}")
        policies = d.get("policies")
        if "policy" in found:
            policies = _strings(policies, "policies (the template has {policy})", name)
        elif policies:
            raise GuardFormatError(f"guard format {name!r} lists policies but its template has no {{policy}}")
        else:
            policies = ("",)
        verdicts = d.get("verdicts")
        if not isinstance(verdicts, dict) or set(verdicts) != {"unsafe", "safe"}:
            raise GuardFormatError(f"guard format {name!r}: verdicts must have exactly the keys unsafe and safe")
        threshold = _probability(d.get("threshold", 0.5), "threshold", name)
        return cls(name=name, unsafe=_strings(verdicts["unsafe"], "verdicts.unsafe", name),
                   safe=_strings(verdicts["safe"], "verdicts.safe", name), template=template, chat_template=chat,
                   policies=policies,
                   delimiters=_strings(d["delimiters"], "delimiters", name) if d.get("delimiters") else (),
                   threshold=threshold,
                   gate_threshold=_probability(d.get("gate_threshold", threshold), "gate_threshold", name))


# per tokenizer (weakly held: a tokenizer that is gone takes its entries with it) -> per format
_PER_TOKENIZER: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached(tokenizer, key, build):
    slot = _PER_TOKENIZER.setdefault(tokenizer, {})
    if key not in slot:
        slot[key] = build()
    return slot[key]


def prompt_template(fmt: GuardFormat, tokenizer) -> str:
    """The format's template text; for ``chat_template`` formats, the model's chat template rendered
    around ``{query}`` and ``{response}`` placeholders (once per tokenizer)."""
    if not fmt.chat_template:
        return fmt.template

    def build():
        if not getattr(tokenizer, "chat_template", None):
            raise GuardFormatError(f"guard format {fmt.name!r} uses the model's chat template and this "
                                   "tokenizer has none; write the template into the format instead")
        text = tokenizer.apply_chat_template([{"role": "user", "content": "{query}"},
                                              {"role": "assistant", "content": "{response}"}], tokenize=False)
        if not {"query", "response"} <= set(_PLACEHOLDER.findall(text)):
            raise GuardFormatError(f"guard format {fmt.name!r}: the model's chat template drops the conversation")
        return text

    return _cached(tokenizer, ("template", fmt), build)


def _markers(fmt: GuardFormat, tokenizer):
    """Regex of the strings a row must not carry into the prompt: the format's delimiters and the
    tokenizer's special tokens (each would read as structure, not as text)."""

    def build():
        special = list(getattr(tokenizer, "all_special_tokens", None) or [])
        for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(tok, "special", False):
                special.append(getattr(tok, "content", str(tok)))
        found = {m for m in (*fmt.delimiters, *special) if m and not m.isalnum()}
        return re.compile("|".join(re.escape(m) for m in sorted(found, key=len, reverse=True))) if found else None

    return _cached(tokenizer, ("markers", fmt), build)


def _defuse(marker: str) -> str:
    out = marker.replace("<", "‹").replace(">", "›").replace("[", "⁅").replace("]", "⁆")
    return out if out != marker else marker[:1] + "\u2060" + marker[1:]  # a word joiner splits the rest


def render(fmt: GuardFormat, tokenizer, query: str, response: str, policy: str = "") -> str:
    """The prompt of one (query, response, policy): the template with the corpus text quoted as data
    (stripped, delimiters and special tokens defused) and the policy as written in the format."""
    pattern = _markers(fmt, tokenizer)

    def clean(text: str) -> str:
        text = neutralize((text or "").strip())
        return pattern.sub(lambda m: _defuse(m.group(0)), text) if pattern is not None else text

    values = {"query": clean(query), "response": clean(response), "policy": policy}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], prompt_template(fmt, tokenizer))


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class VerdictTokens:
    """Where a format's verdicts part: the common prefix to teacher-force, then the first token of
    the unsafe and of the safe verdicts at the position where they differ."""

    prefix: tuple[int, ...]
    unsafe: tuple[int, ...]
    safe: tuple[int, ...]


def verdict_tokens(fmt: GuardFormat, tokenizer) -> VerdictTokens:
    """The format's :class:`VerdictTokens` under this tokenizer (once per tokenizer).

    Raises:
        GuardFormatError: a verdict is the start of the others, or an unsafe and a safe verdict
            continue with the same token where the verdicts first differ.
    """

    def build():
        ctx = render(fmt, tokenizer, _PROBE, _PROBE, fmt.policies[0])
        base = _encode(tokenizer, ctx)
        seqs = {}
        for v in dict.fromkeys(fmt.unsafe + fmt.safe):
            full = _encode(tokenizer, ctx + v)
            seqs[v] = full[len(base):] if full[:len(base)] == base else _encode(tokenizer, v)
        first = next(iter(seqs.values()))
        k = 0
        while all(len(s) > k and s[k] == first[k] for s in seqs.values()):
            k += 1
        short = [v for v, s in seqs.items() if len(s) <= k]
        if short:
            raise GuardFormatError(f"guard format {fmt.name!r}: verdict(s) {short} end where the verdicts "
                                   "still agree, so no token tells them apart")
        unsafe = tuple(sorted({seqs[v][k] for v in fmt.unsafe}))
        safe = tuple(sorted({seqs[v][k] for v in fmt.safe}))
        both = sorted(set(unsafe) & set(safe))
        if both:
            shown = [tokenizer.convert_ids_to_tokens(t) if hasattr(tokenizer, "convert_ids_to_tokens") else t
                     for t in both]
            raise GuardFormatError(f"guard format {fmt.name!r}: unsafe verdicts {list(fmt.unsafe)} and safe "
                                   f"verdicts {list(fmt.safe)} continue with the same token {shown} where they "
                                   "first differ; this tokenizer cannot tell them apart")
        return VerdictTokens(prefix=tuple(first[:k]), unsafe=unsafe, safe=safe)

    return _cached(tokenizer, ("verdicts", fmt), build)


def context_length(config: "PretrainedConfig", configured: int | None = None) -> int:
    """The longest prompt a model of this ``config`` takes: ``configured``, else its position limit."""
    if configured:
        return int(configured)
    return int(getattr(text_config(config), "max_position_embeddings", None) or 2048)


def _over_context(fmt: GuardFormat, tokens: int, limit: int) -> GuardFormatError:
    return GuardFormatError(f"guard format {fmt.name!r}: the prompt is {tokens} tokens, over the guard model's "
                            f"context of {limit}")


def check_format(fmt: GuardFormat, tokenizer, limit: int) -> VerdictTokens:
    """Fail before any row when the format cannot work with this tokenizer and context: verdicts that
    cannot be told apart, or a template that alone (empty query and response) is over ``limit``."""
    verdicts = verdict_tokens(fmt, tokenizer)
    empty = _cached(tokenizer, ("empty", fmt),
                    lambda: max(len(_encode(tokenizer, render(fmt, tokenizer, "", "", p))) for p in fmt.policies))
    if empty + len(verdicts.prefix) > limit:
        raise _over_context(fmt, empty + len(verdicts.prefix), limit)
    return verdicts


def _verdict_probs(model, seqs: list[list[int]], unsafe: Sequence[int], safe: Sequence[int],
                   compiled: bool = False) -> list[float]:
    """``p(unsafe) / (p(unsafe) + p(safe))`` at the last token of each sequence, one padded forward pass."""
    import torch

    from cleancurate.engine.perplexity import _body, softcap

    device = next(model.parameters()).device
    longest = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    rows = torch.arange(len(seqs), device=device)
    last = torch.tensor([len(s) - 1 for s in seqs], device=device)
    with torch.inference_mode():
        hidden = _body(model, compiled)(input_ids=ids.to(device)).last_hidden_state
        logits = softcap(model, model.get_output_embeddings()(hidden[rows, last]).float())
        gap = torch.logsumexp(logits[:, list(unsafe)], -1) - torch.logsumexp(logits[:, list(safe)], -1)
        return torch.sigmoid(gap.double()).cpu().tolist()


def guard_batch(
    model, tokenizer, fmt: GuardFormat, queries: Sequence[str], responses: Sequence[str], *,
    token_budget: int = 1024, max_context: int | None = None, compile: bool = False,
) -> pd.DataFrame:
    """Harm probability of each (query, response) by the guard model, in input order.

    One pass per (row, policy), rows packed into micro-batches of at most ``token_budget``
    padded tokens (longest first); a row's score is its highest policy's. A row that cannot
    be scored (a prompt over the context, a failing pass) gets NaN and an ``error``.

    Raises:
        GuardFormatError: the format cannot work with this model (see :func:`check_format`).
    """
    n = len(queries)
    out = pd.DataFrame({"harm": [float("nan")] * n, "error": [None] * n}, dtype=object)
    out["harm"] = out["harm"].astype("float64")
    if n == 0:
        return out[SCREEN_COLUMNS]
    limit = context_length(model.config, max_context)
    verdicts = check_format(fmt, tokenizer, limit)
    items: list[tuple[int, list[int]]] = []
    for row, (q, r) in enumerate(zip(queries, responses)):
        try:
            mine = [_encode(tokenizer, render(fmt, tokenizer, q, r, p)) + list(verdicts.prefix) for p in fmt.policies]
            longest = max(len(ids) for ids in mine)
            if longest > limit:
                raise _over_context(fmt, longest, limit)
            items += [(row, ids) for ids in mine]
        except Exception as exc:  # noqa: BLE001 - recorded for the row, the others still run
            out.at[row, "error"] = error_text(exc)
    scores: dict[int, list[float]] = {}
    for batch in plan_microbatches([len(ids) for _, ids in items], token_budget):
        part = [items[i] for i in batch]
        got = run_with_backoff(part, lambda p: _verdict_probs(model, [ids for _, ids in p], verdicts.unsafe,
                                                              verdicts.safe, compile),
                               lambda item, exc: error_text(exc))
        for (row, _), value in zip(part, got):
            if isinstance(value, str):
                out.at[row, "error"] = out.at[row, "error"] or value
            else:
                scores.setdefault(row, []).append(value)
    for row, values in scores.items():
        if out.at[row, "error"] is not None:
            continue
        best = max(values)
        if math.isfinite(best):
            out.at[row, "harm"] = best
        else:
            out.at[row, "error"] = f"guard_unscored: the {fmt.name} verdict probabilities are not numbers"
    return out[SCREEN_COLUMNS]
