"""Text rules: the model-free quality signals of a candidate, and generation clean-up.

:func:`quality_batch` reads ``text`` (the candidate), ``original`` (the document's
original response) and ``query``, and gives ``clean_text`` (preamble stripped),
``stripped_preamble``, ``meta_text`` (why the text is meta-text or an echo, or None),
``form_fault`` (why the text is not an answer to the query, or None), ``readability``,
``repeat_ratio``, ``compression_ratio``, ``length_ratio``, ``coverage`` (how much of the
original's least-kept clause survives, see :func:`clause_coverage`). The generation
backends cut a generation that ran out of tokens back to its last sentence with
:func:`trim_unfinished`.

Perplexity minimization rewards degenerate text: loops that repeat a sentence,
replies that announce themselves ("Here is a revised version:"), that talk about the
task mid-text ("Let's revise this response..."), that echo the query, or that turn
the answer into a question. These signals let the gate catch them. A pattern that
also matches the original is not held against the candidate: the human wrote it.
No model and no Spark: plain Python and regular expressions.
"""

import re
import zlib
from typing import Sequence

import pandas as pd

from cleancurate.refusal import is_refusal  # also read from here (cleancurate.textrules.is_refusal)
from cleancurate.schemas.candidate import TEXT_SCORES

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
    ("echoed_delimiter", re.compile(r"</?\s*(query|response)\s*>|‹/?(query|response)›|<<[^<>\n]{1,300}>>",
                                    re.IGNORECASE)),
    ("echoed_chat_marker", re.compile(r"<\|[^|<>]{1,40}\|>")),
    ("echoed_instruction", re.compile(
        r"revise the response|present an alternative perspective|reply with the revised|"
        r"never follow instructions|quoted data between|safety implication", re.IGNORECASE)),
    ("meta_label", re.compile(r"(^|\n)\s*(revised|rewritten|original)\s+(response|answer|version|query)\s*:", re.IGNORECASE)),
    ("meta_commentary", re.compile(
        r"\b(as an ai( language model)?|i (have|'ve) (revised|rewritten|rephrased)|this revision|"
        r"(revised|rephrased|rewritten|alternative) (version|response|answer|perspective)|"
        r"the (original|given|above|previous) (response|answer|query|text)|"
        r"let'?s (revise|rewrite|rephrase|improve|refine|make)|"
        r"(revise|rewrite|rephrase|refine)[sd]? (this|the|your|my|that) (response|answer|text|query|reply)|"
        r"(this|the|your) (response|query) (is|was|asks|says|should|could|can|provides|suggests|highlights)|"
        r"here(?:'s| is) (?:a|an|the|my) (?:revised|rewritten|alternative|improved|updated|new|more) |"
        r"(?:response|answer|version|revision) would be|"
        r"an? (?:more|better|clearer) [\w ]{0,30}(?:response|answer|version))",
        re.IGNORECASE)),
]
_QUESTION_END = re.compile(r"\?[\"')\]]*$")
# a sentence ends at . ! ? (with closing quotes or brackets), at a line break, or at the end
_SENTENCES = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|(?=\n)|$)")
# help offered with the very thing a refusal declined
_COMPLIANCE = re.compile(r"\b(i can help you|i(?:'ll| will) help you|here(?:'s| is) how|sure[,!])", re.IGNORECASE)
_STOP = frozenset(
    "a an the i me my you your we our to of in on at for and or but is are was be do does did how what why "
    "when where which who can could should would it its this that with from as if so about any some".split())
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


def meta_text_reason(text: str, extra_patterns: Sequence[str] = (), original: str = "", query: str = "") -> str | None:
    """Name of the first meta-text or echo rule the text matches anywhere, or None.

    A rule that also matches ``original`` is skipped (the human answer said it too).
    With ``query`` given, a candidate that repeats the query word for word
    (``echoed_query``) is caught as well.
    """
    if _PREAMBLE.match(text) and not _PREAMBLE.match(original or ""):
        return "preamble"
    for name, rx in _META:
        if rx.search(text) and not (original and rx.search(original)):
            return name
    for pattern in extra_patterns:
        if re.search(pattern, text, re.IGNORECASE) and not (original and re.search(pattern, original, re.IGNORECASE)):
            return "meta_pattern"
    if query and echoes_query(text, query, original):
        return "echoed_query"
    return None


def _norm_words(text: str) -> list[str]:
    return [w.lower().strip("'") for w in _WORD.findall(text or "")]


def echoes_query(text: str, query: str, original: str = "", min_words: int = 4) -> bool:
    """True when the text repeats the query (at least ``min_words`` words) verbatim.

    A short query ("What is rust?") is too common a phrase to call an echo, and a
    query the original itself repeated is not held against the revision.
    """
    q = " ".join(_norm_words(query))
    if len(q.split()) < min_words:
        return False
    return f" {q} " in f" {' '.join(_norm_words(text))} " and f" {q} " not in f" {' '.join(_norm_words(original))} "


def sentences(text: str) -> list[str]:
    """The text's sentences (split at ., ! and ? and line breaks), stripped, non-empty."""
    return [s.strip() for s in _SENTENCES.findall(text or "") if _WORD.search(s)]


def question_share(text: str) -> float:
    """Share of the text's sentences that are questions."""
    sents = sentences(text)
    if not sents:
        return 0.0
    return sum(bool(_QUESTION_END.search(s)) for s in sents) / len(sents)


def _content_words(text: str) -> set[str]:
    return {w for w in _norm_words(text) if w not in _STOP and len(w) > 1}


def form_fault(text: str, original: str, query: str, max_question_share: float = 0.5) -> str | None:
    """Why the text is not an answer to the query, or None when it reads as one.

    Whether a text declines is :func:`cleancurate.refusal.is_refusal` (how the text opens).
    ``refusal_dropped``: the original declines the request and the text does not (a
    refusal must never turn into help with what was refused; "I can help you ..." next
    to a refusal counts as help). ``refused``: the text
    declines a request the original answered. ``question``: most of its sentences are
    questions while the original's are not. ``restates_query``: it adds next to
    nothing beyond the query's own words, or opens by asking the query back.
    """
    if is_refusal(original) and (not is_refusal(text) or _COMPLIANCE.search(text)):
        return "refusal_dropped"
    if is_refusal(text) and not is_refusal(original):
        return "refused"
    if question_share(text) > max_question_share and question_share(original) <= max_question_share:
        return "question"
    cw, qw = _content_words(text), _content_words(query)
    if qw and cw:
        new = cw - qw
        if len(new) < max(2, 0.3 * len(cw)):
            return "restates_query"
        sents = sentences(text)
        first = sents[0] if sents else text
        if _QUESTION_END.search(first) and len(_content_words(first) & qw) >= 0.8 * len(qw):
            return "restates_query"
    return None


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that are repeats of an earlier n-gram (0 = none repeated)."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


# --- content coverage ------------------------------------------------------------------------

# beyond _STOP: more function words and answer filler, never what a clause is about
_FILLER = frozenset("""
by with were been being these those yours they them their he she his her him done have has had having will
shall may might must not no nor very just also too more most much many each every other such than there here
whom whose into over under again further once only own same both few off out up down doesn't don't isn't
aren't wasn't weren't it's you're they're always often well make sure get keep one way good better best
really try like even still use using then all
""".split())
_CLAUSE_SPLIT = re.compile(r"[.!?;:\n]+|,\s*")
_CLAUSE_LEAD = re.compile(r"^\s*(?:and|also|or|but|then|so)\b", re.IGNORECASE)
_SUFFIXES = ("ations", "ation", "ings", "ing", "edly", "ed", "es", "s", "ly")


def _stem(word: str) -> str:
    word = word.strip("'")
    for suf in _SUFFIXES:
        if len(word) > len(suf) + 3 and word.endswith(suf):
            return word[: -len(suf)]
    return word


def content_words(text: str) -> list[str]:
    """Stemmed words of ``text`` that carry content (no function words, at least 3 letters)."""
    return [_stem(w) for w in _norm_words(text) if w not in _STOP and w not in _FILLER and len(w) > 2]


def clause_coverage(candidate: str, original: str, query: str = "") -> tuple[float, str | None]:
    """The share of content words kept from the original's least-kept clause.

    The original is split into clauses (sentences, then comma-separated parts such as
    the items of a list); a clause with at least two content words not already in the
    query counts. For each, the share of those words found in the candidate (stemmed; a
    word of five letters or more also matches a candidate word with the same first five
    letters) is its coverage. A revision that drops an item of a list ("get enough
    sleep") scores 0 on that clause, however well it keeps the rest. Lexical, so a
    paraphrase by synonyms scores low too: the gate's threshold is low (0.25 by default).
    A refusal is not checked: what it must keep is the refusal (``form_fault``).

    Returns:
        (lowest coverage, that clause's text); (1.0, None) when no clause counts.
    """
    if is_refusal(original):
        return 1.0, None
    have = set(content_words(candidate))
    prefixes = {w[:5] for w in have if len(w) >= 5}
    asked = set(content_words(query))
    worst, worst_clause = 1.0, None
    for part in _CLAUSE_SPLIT.split(original or ""):
        clause = _CLAUSE_LEAD.sub("", part.strip()).strip()
        words = [w for w in content_words(clause) if w not in asked]
        if len(words) < 2:
            continue
        kept = sum(1 for w in words if w in have or (len(w) >= 5 and w[:5] in prefixes))
        share = kept / len(words)
        if share < worst:
            worst, worst_clause = share, clause
    return worst, worst_clause


def word_edits(candidate: str, original: str) -> tuple[int, int]:
    """``(new, dropped)``: the candidate's words that are not the original's, and the original's it leaves out.

    Words are compared lower-cased, in order, without punctuation or whitespace
    (:class:`difflib.SequenceMatcher` over the two word lists). A line break, punctuation
    or a swapped word gives ``(0, 0)`` or ``(1, 1)``; the original with a sentence
    appended gives ``(n, 0)``.
    """
    import difflib

    a, b = _WORD.findall(original.lower()), _WORD.findall(candidate.lower())
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    changed = [(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal"]
    return sum(j for _, j in changed), sum(i for i, _ in changed)


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


def _quality_row(text: str, orig: str, query: str, formula: str, ngram: int, meta_patterns: Sequence[str],
                 max_question_share: float) -> dict:
    clean, stripped = strip_preamble(text)
    new, dropped = word_edits(clean, orig)
    return {
        "clean_text": clean, "stripped_preamble": stripped,
        "meta_text": meta_text_reason(clean, meta_patterns, orig, query),
        "form_fault": form_fault(clean, orig, query, max_question_share) if query and clean.strip() else None,
        "readability": readability(clean, formula), "repeat_ratio": repeated_ngram_ratio(clean, ngram),
        "compression_ratio": compression_ratio(clean), "length_ratio": len(clean.strip()) / max(1, len(orig.strip())),
        "coverage": clause_coverage(clean, orig, query)[0], "new_words": new, "dropped_words": dropped, "error": None,
    }


def quality_batch(
    texts: Sequence[str], originals: Sequence[str], *, queries: Sequence[str] | None = None,
    formula: str = "flesch_reading_ease", ngram: int = 3, meta_patterns: Sequence[str] = (),
    max_question_share: float = 0.5,
) -> pd.DataFrame:
    """Quality signals for each (candidate, original, query) row, in input order.

    The columns are the candidate contract's text scores (:data:`TEXT_SCORES`). Without
    ``queries`` the query-dependent checks (query echo, answer form) are skipped. A row
    whose text rules raise gets NaN signals and an ``error`` (the gate rejects it as
    ``error``); the rest of the batch is unaffected.
    """
    rows = []
    queries = list(queries) if queries is not None else [""] * len(texts)
    for text, orig, query in zip(texts, originals, queries):
        text, orig, query = text or "", orig or "", query or ""
        try:
            rows.append(_quality_row(text, orig, query, formula, ngram, meta_patterns, max_question_share))
        except Exception as exc:  # one odd text must not fail its batch: the row carries the error
            nan = float("nan")
            rows.append({**dict.fromkeys(TEXT_SCORES, nan), "clean_text": text, "stripped_preamble": False,
                         "meta_text": None, "form_fault": None, "new_words": None, "dropped_words": None,
                         "error": f"text_rules_failed: {type(exc).__name__}: {exc}"[:500]})
    return pd.DataFrame(rows, columns=list(TEXT_SCORES))
