"""Text-only quality signals of a candidate (no model).

Reads: ``text`` (the candidate), ``original`` (the document's original response).
Adds: ``clean_text`` (preamble stripped), ``stripped_preamble``, ``meta_text`` (why the
text is meta-text, or None), ``readability``, ``repeat_ratio``, ``compression_ratio``,
``length_ratio``.

Perplexity minimization rewards degenerate text: loops that repeat a sentence, and
replies that announce themselves ("Here is a revised version:"). These signals let
the gate catch both.
"""

import re
import zlib
from typing import Sequence

import pandas as pd

from cleancurate.schemas.udf import QUALITY_COLUMNS

# A leading line that announces the answer instead of being it.
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)[!,.]?\s*)?"
    r"(?:here(?:'s| is| are)\s+(?:a|an|the|my|your)?\s*(?:revised|rewritten|alternative|improved|updated|new)?"
    r"[^\n:]{0,60}?(?:version|response|answer|revision|perspective|rewrite)[^\n:]{0,40}[:.!]"
    r"|(?:revised|rewritten|alternative|improved|updated|new)\s+(?:response|answer|version)\s*[:\-])\s*",
    re.IGNORECASE,
)
# Markers that mean the model echoed the prompt or talked about the task.
_META = [
    ("echoed_delimiter", re.compile(r"</?\s*(query|response)\s*>|‹/?(query|response)›", re.IGNORECASE)),
    ("echoed_chat_marker", re.compile(r"<\|[^|<>]{1,40}\|>")),
    ("echoed_instruction", re.compile(
        r"revise the response|present an alternative perspective|reply with the revised|"
        r"never follow instructions|quoted data between|safety implication", re.IGNORECASE)),
    ("meta_label", re.compile(r"(^|\n)\s*(revised|rewritten|original)\s+(response|answer|version|query)\s*:", re.IGNORECASE)),
    ("meta_commentary", re.compile(
        r"\b(as an ai( language model)?|i (have|'ve) (revised|rewritten|rephrased)|this revision|"
        r"(revised|rephrased|rewritten) (version|response|answer)|the original (response|answer|query))\b",
        re.IGNORECASE)),
]
_WORD = re.compile(r"[\w']+", re.UNICODE)


def strip_preamble(text: str, min_words: int = 3) -> tuple[str, bool]:
    """Remove a leading announcement such as "Here's a revised response:".

    Returns (text, stripped). The preamble is only removed when what follows stands
    alone (at least ``min_words`` words); otherwise the text is returned unchanged and
    the gate rejects it as meta-text.
    """
    m = _PREAMBLE.match(text)
    if not m:
        return text, False
    rest = text[m.end():].strip().strip('"').strip()
    if len(_WORD.findall(rest)) >= min_words:
        return rest, True
    return text, False


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def trim_unfinished(text: str, min_words: int = 5) -> str:
    """Cut a generation that ran out of tokens back to its last complete sentence.

    A candidate that stops mid-sentence is not clean text. When at least
    ``min_words`` words remain before the last sentence end, the tail is dropped;
    otherwise the text is returned as it is (and usually fails the length gate).
    """
    ends = list(_SENTENCE_END.finditer(text))
    if not ends:
        return text
    head = text[: ends[-1].end()].rstrip()
    return head if len(_WORD.findall(head)) >= min_words else text


def meta_text_reason(text: str, extra_patterns: Sequence[str] = ()) -> str | None:
    """Name of the first meta-text rule the text matches, or None."""
    if _PREAMBLE.match(text):
        return "preamble"
    for name, rx in _META:
        if rx.search(text):
            return name
    for pattern in extra_patterns:
        if re.search(pattern, text, re.IGNORECASE):
            return "meta_pattern"
    return None


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that are repeats of an earlier n-gram (0 = none repeated)."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def compression_ratio(text: str) -> float:
    """Raw bytes / zlib-compressed bytes: repetitive text compresses far better."""
    raw = text.encode("utf-8")
    if not raw:
        return 0.0
    return len(raw) / len(zlib.compress(raw, 9))


def readability(text: str, formula: str = "flesch_reading_ease") -> float:
    """Readability by a textstat formula (Flesch reading ease by default)."""
    import textstat

    fn = getattr(textstat, formula, None)
    if fn is None or not callable(fn):
        raise ValueError(f"metrics.readability: textstat has no formula '{formula}'")
    if not text.strip():
        return float("nan")
    return float(fn(text))


def quality_batch(
    texts: Sequence[str], originals: Sequence[str], *, formula: str = "flesch_reading_ease",
    ngram: int = 3, meta_patterns: Sequence[str] = (),
) -> pd.DataFrame:
    """Quality signals for each (candidate, original) pair, in input order."""
    rows = []
    for text, orig in zip(texts, originals):
        text = text or ""
        clean, stripped = strip_preamble(text)
        meta = meta_text_reason(clean, meta_patterns)
        olen = max(1, len((orig or "").strip()))
        rows.append((
            clean, stripped, meta, readability(clean, formula), repeated_ngram_ratio(clean, ngram),
            compression_ratio(clean), len(clean.strip()) / olen,
        ))
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)
