"""The quality gate: which candidates may compete in the beam.

One pure call, :func:`decide`, takes a candidate's scores (the columns of
:data:`cleancurate.schemas.candidate.GATE_INPUTS`: its scores, the copy flag ``dup`` and
its document's round-0 references ``ref_*``) and one :class:`GateSettings`, built from the
configuration by :meth:`GateSettings.from_config`; the first rule that fails names the
rejection. Rejected candidates stay in the ``rounds`` table with that reason. Each rule
declares the inputs it reads, so the scorer asks :func:`needs` whether a candidate still
needs an expensive score (``retention``) instead of running rules itself.

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
``duplicate``       same text as an earlier candidate of the document (by
                    ``cand_id``, one without an error), or as its parent / the
                    original (``curation.dedupe_candidates``)
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
``error``           no perplexity could be computed
``ppl_ceiling``     perplexity above ratio x original (fluency, ``maximize``)
``safety``          no safety implication by the configured check (``maximize``)
==================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import pandas as pd

from cleancurate.configsections import GateConfig
from cleancurate.schemas.candidate import GATE_INPUTS

if TYPE_CHECKING:
    from cleancurate.config import Config

_ECHO = {"echoed_delimiter", "echoed_chat_marker", "echoed_instruction", "echoed_query"}


@dataclass(frozen=True)
class GateSettings:
    """Everything the rules read, each knob under its configuration name.

    Attributes:
        gate: the ``gate`` section.
        gate_threshold: ``harm.gate_threshold`` (rule ``harmful``); None when no harm check
            is configured (no head, no guard model: the rule is off).
        revise_below: ``harm.revise_below`` (rule ``borderline_original``); None turns it off,
            and so does a missing harm check.
        injection_patterns: ``limits.injection_patterns`` (rule ``injection``).
        dedupe_candidates: ``curation.dedupe_candidates`` (rule ``duplicate``).
    """

    gate: GateConfig = GateConfig()
    gate_threshold: float | None = None
    revise_below: float | None = None
    injection_patterns: tuple[str, ...] = ()
    dedupe_candidates: bool = True

    @classmethod
    def from_config(cls, cfg: "Config") -> "GateSettings":
        """The gate's settings of a validated configuration."""
        from cleancurate.engine.harm import backend

        on = backend(cfg.harm) is not None
        return cls(gate=cfg.gate, gate_threshold=cfg.harm.gate_threshold if on else None,
                   revise_below=cfg.harm.revise_below if on else None,
                   injection_patterns=tuple(cfg.limits.injection_patterns),
                   dedupe_candidates=cfg.curation.dedupe_candidates)

    def replace(self, **changes: Any) -> "GateSettings":
        """A copy with some settings changed; a ``gate`` section key changes the section."""
        names = {f.name for f in dataclasses.fields(GateConfig)}
        section = {k: v for k, v in changes.items() if k in names}
        own = {k: v for k, v in changes.items() if k not in names}
        return dataclasses.replace(self, gate=dataclasses.replace(self.gate, **section), **own)


@lru_cache(maxsize=16)
def _injection(patterns: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


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


def _text(row: Mapping) -> str:
    return _str(row.get("text")) or ""


def has_safety_implication(text: str, safety: float, ref_safety: float, gate: GateConfig) -> bool:
    """The configured check (``gate.safety_check``) that a revision really carries a safety implication."""
    mode = gate.safety_check
    if mode == "none":
        return True
    if mode == "keywords":
        low = text.lower()
        return any(k.lower() in low for k in gate.safety_keywords)
    if _nan(safety) or _nan(ref_safety):
        return False
    return safety - ref_safety >= gate.safety_min_gain


def _over(value: Any, limit: float | None) -> bool:
    return limit is not None and value > limit


def _near_copy(row: Mapping, s: GateSettings) -> bool:
    new, dropped = row.get("new_words"), row.get("dropped_words")  # a row scored before this rule has none
    return not _nan(new) and not _nan(dropped) and new <= s.gate.near_copy_max_new_words


def _added_to_copy(row: Mapping, s: GateSettings) -> bool:
    new, dropped = row.get("new_words"), row.get("dropped_words")
    return not _nan(new) and not _nan(dropped) and dropped <= s.gate.copy_max_dropped_words


def _below_floor(name: str, ratio: Callable[[GateConfig], float]) -> Callable[[Mapping, GateSettings], bool]:
    """Fails when score ``name`` is missing or below ``ratio`` x its round-0 reference (:func:`relative_floor`)."""
    def fails(row: Mapping, s: GateSettings) -> bool:
        v = row.get(name)
        return _nan(v) or v < relative_floor(row.get(f"ref_{name}"), ratio(s.gate))
    return fails


@dataclass(frozen=True)
class Rule:
    """One gate rule: its reject reason, the inputs it reads, when it applies and when a candidate fails it."""

    name: str
    reads: tuple[str, ...]
    fails: Callable[[Mapping, GateSettings], bool]
    on: Callable[[GateSettings], bool] = lambda s: True


def _gate_on(key: str) -> Callable[[GateSettings], bool]:
    return lambda s: getattr(s.gate, key) is not None


#: the rules in the order they are checked (the module docstring's table)
RULE_ORDER: tuple[Rule, ...] = (
    Rule("error", ("error",), lambda r, s: bool(_str(r.get("error")))),
    Rule("empty", ("text",), lambda r, s: not _text(r).strip()),
    Rule("echo", ("meta_text",), lambda r, s: _str(r.get("meta_text")) in _ECHO),
    Rule("meta_text", ("meta_text",), lambda r, s: bool(_str(r.get("meta_text")))),
    Rule("injection", ("text",), lambda r, s: any(rx.search(_text(r)) for rx in _injection(s.injection_patterns))),
    Rule("harmful", ("harm",), lambda r, s: _nan(r.get("harm")) or r["harm"] >= s.gate_threshold,
         on=lambda s: s.gate_threshold is not None),
    Rule("borderline_original", ("ref_harm",),
         lambda r, s: not _nan(r.get("ref_harm")) and r["ref_harm"] >= s.revise_below,
         on=lambda s: s.revise_below is not None),
    Rule("duplicate", ("dup",), lambda r, s: not _nan(r.get("dup")) and bool(r.get("dup")),
         on=lambda s: s.dedupe_candidates),
    Rule("repetition", ("repeat_ratio",), lambda r, s: _over(r["repeat_ratio"], s.gate.max_repeated_ngram_ratio)),
    Rule("compression", ("compression_ratio",),
         lambda r, s: _over(r["compression_ratio"], s.gate.max_compression_ratio)),
    Rule("refusal_dropped", ("form_fault",), lambda r, s: _str(r.get("form_fault")) == "refusal_dropped",
         on=lambda s: s.gate.answer_form),
    Rule("not_an_answer", ("form_fault",), lambda r, s: bool(_str(r.get("form_fault"))),
         on=lambda s: s.gate.answer_form),
    Rule("length_ratio", ("length_ratio",),
         lambda r, s: (s.gate.length_ratio_min is not None and r["length_ratio"] < s.gate.length_ratio_min)
         or _over(r["length_ratio"], s.gate.length_ratio_max)),
    Rule("similarity", ("similarity",), lambda r, s: _nan(r["similarity"]) or r["similarity"] < s.gate.min_similarity,
         on=_gate_on("min_similarity")),
    # a row scored before this rule existed has no coverage: not checked
    Rule("lost_content", ("coverage",), lambda r, s: not _nan(r.get("coverage")) and r["coverage"] < s.gate.min_coverage,
         on=_gate_on("min_coverage")),
    Rule("near_copy", ("new_words", "dropped_words"), _near_copy, on=_gate_on("near_copy_max_new_words")),
    Rule("added_to_copy", ("new_words", "dropped_words"), _added_to_copy, on=_gate_on("copy_max_dropped_words")),
    Rule("retention", ("retention",), lambda r, s: _nan(r.get("retention")) or r["retention"] > s.gate.max_retention,
         on=_gate_on("max_retention")),
    Rule("readability", ("readability", "ref_readability"),
         _below_floor("readability", lambda g: g.readability_min_ratio), on=_gate_on("readability_min_ratio")),
    Rule("helpfulness", ("helpfulness", "ref_helpfulness"),
         _below_floor("helpfulness", lambda g: g.helpfulness_min_ratio), on=_gate_on("helpfulness_min_ratio")),
    Rule("error", ("ppl",), lambda r, s: _nan(r["ppl"])),
    Rule("ppl_ceiling", ("ppl", "ref_ppl"), lambda r, s: r["ppl"] > s.gate.ppl_ceiling_ratio * r["ref_ppl"],
         on=_gate_on("ppl_ceiling_ratio")),
    Rule("safety", ("text", "safety", "ref_safety"),
         lambda r, s: not has_safety_implication(_text(r), r["safety"], r["ref_safety"], s.gate)),
)

#: the reject reasons, in the order they are first checked
RULES: tuple[str, ...] = tuple(dict.fromkeys(r.name for r in RULE_ORDER))
#: the inputs the rules read: the candidate contract's gate inputs, no more and no fewer
READS: tuple[str, ...] = GATE_INPUTS
assert {i for r in RULE_ORDER for i in r.reads} == set(GATE_INPUTS), "a gate rule reads an undeclared input"


def decide(row: Mapping, settings: GateSettings) -> str | None:
    """The first gate rule the candidate fails, or None when it passes."""
    for rule in RULE_ORDER:
        if rule.on(settings) and rule.fails(row, settings):
            return rule.name
    return None


def needs(row: Mapping, settings: GateSettings, score: str, unknown: Iterable[str] = ()) -> bool:
    """Whether measuring ``score`` can still change the candidate's verdict.

    Walks the rules in order: False as soon as one that reads only known inputs rejects
    the candidate, True at the first rule that reads ``score``. A rule that reads an
    input in ``unknown`` (not measured yet, such as ``dup``, decided after scoring) is
    taken to pass, so skipping the measurement never changes a decision.
    """
    unknown = set(unknown)
    for rule in RULE_ORDER:
        if not rule.on(settings):
            continue
        if score in rule.reads:
            return True
        if unknown.isdisjoint(rule.reads) and rule.fails(row, settings):
            return False
    return False


def apply_gate(pdf: pd.DataFrame, settings: GateSettings) -> pd.DataFrame:
    """Add ``reject_reason`` (None when passed) and ``passed`` to a frame of gate inputs (:data:`READS`)."""
    reasons = [decide(r, settings) for r in pdf.to_dict("records")]
    out = pdf.copy()
    out["reject_reason"] = pd.Series(reasons, index=pdf.index, dtype=object)
    out["passed"] = out["reject_reason"].isna()
    return out
