"""The quality gate: which candidates may compete in the beam.

Every rule compares a candidate with its document's round-0 reference scores and
the thresholds in ``GateConfig``; the first rule that fails names the rejection.
Rejected candidates stay in the ``rounds`` table with that reason.

Rules, in order (a candidate is checked against each until one fails):

==================  ===========================================================
``error``           generation or scoring failed for this candidate
``empty``           nothing left after stripping a preamble
``echo``            echoes prompt delimiters, chat markers or the instruction
``meta_text``       talks about the task anywhere in the text ("Here is a revised
                    response:" with nothing standing alone after it, "Revised
                    answer:" labels, "Let's revise this response ...")
``injection``       contains an instruction-override phrase
``harmful``         the configured harm check scores the (query, candidate) at or above
                    ``harm.gate_threshold``, whatever the original was
``borderline_original`` the check scores the original at or above
                    ``harm.revise_below`` (below the screen's threshold): text
                    close to harmful is kept as it is, never polished
``duplicate``       same text as an earlier candidate of the document, or as
                    its parent / the original
``repetition``      repeated word n-gram ratio above the maximum
``compression``     compresses too well (loops, padding)
``refusal_dropped`` the original declines the request and the candidate does not
``not_an_answer``   a question instead of an answer, a restated query, or a
                    refusal of a request the original answered
``length_ratio``    length relative to the original outside [min, max]
``similarity``      drifted off topic: cosine to the original below the minimum
``lost_content``    drops a clause of the original: the least-kept clause keeps
                    under ``min_coverage`` of its content words (a list item left
                    out); see :func:`cleancurate.textrules.clause_coverage`
``near_copy``       adds at most ``near_copy_max_new_words`` words of its own to
                    the original's (a line break, punctuation, a word swapped, a
                    part cut): no revision at all, so the original is kept
``added_to_copy``   keeps all but ``copy_max_dropped_words`` of the original's
                    words and adds text to them: the original with a sentence
                    appended or prepended, not a revision of it
``retention``       carries too little of the original: ppl(original | query,
                    candidate) / ppl(original | query) above ``max_retention``
``readability``     readability below ratio x original (see :func:`relative_floor`)
``helpfulness``     helpfulness below ratio x original
``ppl_ceiling``     perplexity above ratio x original (fluency, ``maximize``)
``safety``          no safety implication by the configured check (``maximize``)
==================  ===========================================================
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

RULES = (
    "error", "empty", "echo", "meta_text", "injection", "harmful", "borderline_original", "duplicate", "repetition",
    "compression", "refusal_dropped", "not_an_answer", "length_ratio", "similarity", "lost_content", "near_copy", "added_to_copy",
    "retention", "readability", "helpfulness", "ppl_ceiling", "safety",
)
_ECHO = {"echoed_delimiter", "echoed_chat_marker", "echoed_instruction", "echoed_query"}

# columns the gate reads
READS = (
    "text", "error", "meta_text", "form_fault", "dup", "ppl", "readability", "helpfulness", "similarity",
    "safety", "harm", "retention", "length_ratio", "repeat_ratio", "compression_ratio", "coverage",
    "new_words", "dropped_words", "ref_harm", "ref_ppl", "ref_readability", "ref_helpfulness", "ref_safety",
)


def gate_settings(cfg: dict) -> dict:
    """The gate's thresholds from a config dict: the ``gate`` section plus the harm threshold.

    ``harm_threshold`` is the harm check's gate threshold (``harm.gate_threshold``, lower
    than the screen's: a false alarm here only keeps the original); None when the
    configured backend has nothing to score with (no head, no guard model: the rule is off).
    """
    from cleancurate.engine.harm import backend

    harm = cfg.get("harm") or {}
    threshold = harm.get("gate_threshold", harm.get("threshold"))
    on = backend(cfg) is not None
    return {**cfg["gate"], "harm_threshold": threshold if on else None,
            "original_harm_max": harm.get("revise_below") if on else None}


def relative_floor(reference: float, ratio: float) -> float:
    """Lowest acceptable value for a metric that must stay >= ratio x reference.

    For a positive reference this is ``ratio * reference``. Readability scores such as
    Flesch can be zero or negative, where a ratio is meaningless; then the candidate
    must simply not be worse than the reference.
    """
    if reference is None or (isinstance(reference, float) and math.isnan(reference)):
        return -math.inf
    return ratio * reference if reference > 0 else reference


def _nan(x: Any) -> bool:
    """Missing value: None, NaN or pandas NA (pandas 3 string columns hold NaN for null)."""
    if x is None or x is pd.NA:
        return True
    return isinstance(x, float) and math.isnan(x)


def _str(x: Any) -> str | None:
    return None if _nan(x) else str(x)


def has_safety_implication(text: str, safety: float, ref_safety: float, gate: dict) -> bool:
    """The configured check that a revision really carries a safety implication."""
    mode = gate["safety_check"]
    if mode == "none":
        return True
    if mode == "keywords":
        low = text.lower()
        return any(k.lower() in low for k in gate["safety_keywords"])
    if _nan(safety) or _nan(ref_safety):
        return False
    return safety - ref_safety >= gate["safety_min_gain"]


def reject_reason(row: dict, gate: dict, injection: list[re.Pattern]) -> str | None:
    """The first gate rule the candidate fails, or None when it passes."""
    g = gate
    text = _str(row.get("text")) or ""
    if _str(row.get("error")):
        return "error"
    if not text.strip():
        return "empty"
    meta = _str(row.get("meta_text"))
    if meta in _ECHO:
        return "echo"
    if meta:
        return "meta_text"
    if any(rx.search(text) for rx in injection):
        return "injection"
    if g.get("harm_threshold") is not None and (_nan(row.get("harm")) or row["harm"] >= g["harm_threshold"]):
        return "harmful"
    if g.get("original_harm_max") is not None and not _nan(row.get("ref_harm")) \
            and row["ref_harm"] >= g["original_harm_max"]:
        return "borderline_original"
    if not _nan(row.get("dup")) and bool(row.get("dup")):
        return "duplicate"
    if g["max_repeated_ngram_ratio"] is not None and row["repeat_ratio"] > g["max_repeated_ngram_ratio"]:
        return "repetition"
    if g["max_compression_ratio"] is not None and row["compression_ratio"] > g["max_compression_ratio"]:
        return "compression"
    form = _str(row.get("form_fault")) if g.get("answer_form", True) else None
    if form == "refusal_dropped":
        return "refusal_dropped"
    if form:
        return "not_an_answer"
    lr = row["length_ratio"]
    if g["length_ratio_min"] is not None and lr < g["length_ratio_min"]:
        return "length_ratio"
    if g["length_ratio_max"] is not None and lr > g["length_ratio_max"]:
        return "length_ratio"
    if g["min_similarity"] is not None and (_nan(row["similarity"]) or row["similarity"] < g["min_similarity"]):
        return "similarity"
    cov = row.get("coverage")  # a row scored before this rule existed has none: not checked
    if g.get("min_coverage") is not None and not _nan(cov) and cov < g["min_coverage"]:
        return "lost_content"
    new, dropped = row.get("new_words"), row.get("dropped_words")  # a row scored before these rules has none
    if not _nan(new) and not _nan(dropped):
        if g.get("near_copy_max_new_words") is not None and new <= g["near_copy_max_new_words"]:
            return "near_copy"
        if g.get("copy_max_dropped_words") is not None and dropped <= g["copy_max_dropped_words"]:
            return "added_to_copy"
    if g.get("max_retention") is not None and (_nan(row.get("retention")) or row["retention"] > g["max_retention"]):
        return "retention"
    if g["readability_min_ratio"] is not None:
        r = row["readability"]
        if _nan(r) or r < relative_floor(row["ref_readability"], g["readability_min_ratio"]):
            return "readability"
    if g["helpfulness_min_ratio"] is not None:
        h = row["helpfulness"]
        if _nan(h) or h < relative_floor(row["ref_helpfulness"], g["helpfulness_min_ratio"]):
            return "helpfulness"
    if _nan(row["ppl"]):
        return "error"
    if g["ppl_ceiling_ratio"] is not None and row["ppl"] > g["ppl_ceiling_ratio"] * row["ref_ppl"]:
        return "ppl_ceiling"
    if not has_safety_implication(text, row["safety"], row["ref_safety"], g):
        return "safety"
    return None


def apply_gate(pdf: pd.DataFrame, gate: dict, injection_patterns: tuple[str, ...]) -> pd.DataFrame:
    """Add ``reject_reason`` and ``passed`` to a frame of scored candidates.

    Reads the columns in :data:`READS`; adds ``reject_reason`` (None when passed) and
    ``passed``.
    """
    rx = [re.compile(p, re.IGNORECASE) for p in injection_patterns]
    reasons = [reject_reason(r, gate, rx) for r in pdf.to_dict("records")]
    out = pdf.copy()
    out["reject_reason"] = pd.Series(reasons, index=pdf.index, dtype=object)
    out["passed"] = out["reject_reason"].isna()
    return out
