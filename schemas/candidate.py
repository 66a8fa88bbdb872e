"""The candidate contract: every score of a candidate, declared once.

One :class:`Score` per signal the candidate scorer computes
(:func:`cleancurate.engine.scorer.score_candidates`) says its name, its Spark type, what
it means, which stage computes it, the column it is stored under in the ``candidates``
and ``rounds`` tables, and whether the quality gate reads it. Everything else derives
from this list:

- :data:`SCORES_DDL`, the scorer UDF's return type, and :data:`SCORE_NAMES`, the column
  order of the scorer's pandas frame;
- :data:`GATE_INPUTS`, the struct the gate UDF reads (:mod:`cleancurate.gate` declares
  each rule's inputs from these names), with the copy flag ``dup`` and the document's
  round-0 references ``ref_*``;
- the score columns of the ``candidates`` and ``rounds`` tables
  (:func:`cleancurate.schemas.tables`).

Adding a score is one entry here plus the code that computes it (and a gate rule that
reads it, if any). Kept free of imports, so the model engine orders its frames by it on
GPU workers without Spark.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    """One signal of a candidate.

    Attributes:
        name: the scorer's output column.
        type: Spark SQL type name (``string``, ``double``, ``int``, ``boolean``).
        stage: what computes it: ``text`` (:mod:`cleancurate.textrules`), ``lm`` (the
            causal LM, :mod:`cleancurate.engine.perplexity`), ``embedding`` (the encoder),
            ``harm`` (the configured harm check), ``helpfulness`` (relevance or the LLM
            judge), ``any`` (the first error of any stage).
        meaning: what the value says, for the docs and the tables' readers.
        column: the column it is stored under in ``candidates`` and ``rounds``.
        gate: the quality gate reads it (under ``column``).
        on_demand: measured only where the gate still needs it (:func:`cleancurate.gate.needs`);
            null where an earlier rule already rejected the candidate.
    """

    name: str
    type: str
    stage: str
    meaning: str
    column: str = ""
    gate: bool = True
    on_demand: bool = False

    def __post_init__(self):
        if not self.column:
            object.__setattr__(self, "column", self.name)


SCORES: tuple[Score, ...] = (
    Score("clean_text", "string", "text", "the candidate with a leading announcement stripped", column="text"),
    Score("stripped_preamble", "boolean", "text", "a leading announcement was stripped", gate=False),
    Score("meta_text", "string", "text", "why the text talks about the task or echoes the prompt; null if it does not"),
    Score("form_fault", "string", "text", "why the text is not an answer to the query; null if it is one"),
    Score("readability", "double", "text", "readability (metrics.readability, Flesch reading ease by default)"),
    Score("repeat_ratio", "double", "text", "share of word n-grams (gate.ngram) that repeat an earlier one"),
    Score("compression_ratio", "double", "text", "raw bytes / zlib bytes: loops and padding compress well"),
    Score("length_ratio", "double", "text", "characters relative to the original"),
    Score("coverage", "double", "text", "share of content words kept from the original's least-kept clause"),
    Score("new_words", "int", "text", "words of the candidate that are not the original's (in order)"),
    Score("dropped_words", "int", "text", "words of the original the candidate leaves out (in order)"),
    Score("ppl", "double", "lm", "perplexity of the text given the query"),
    Score("scored_tokens", "int", "lm", "tokens scored for the perplexity", gate=False),
    Score("retention", "double", "lm", "ppl(original | query, candidate) / ppl(original | query)", on_demand=True),
    Score("relevance", "double", "embedding", "cosine of the text to the query", gate=False),
    Score("similarity", "double", "embedding", "cosine of the text to the original"),
    Score("safety", "double", "embedding", "cosine of the text to gate.safety_anchor"),
    Score("harm", "double", "harm", "probability the text is a harmful answer to the query (harm.backend)"),
    Score("helpfulness", "double", "helpfulness", "relevance + style (embedding) or the rubric judge's mean score"),
    Score("error", "string", "any", "the first error of any stage; null when every score was computed"),
)

#: the scorer's output columns, in order
SCORE_NAMES: tuple[str, ...] = tuple(s.name for s in SCORES)
#: the scorer UDF's return type
SCORES_DDL: str = ", ".join(f"{s.name} {s.type}" for s in SCORES)
#: the text rules' share of the scores (:func:`cleancurate.textrules.quality_batch`), and ``error``
TEXT_SCORES: tuple[str, ...] = tuple(s.name for s in SCORES if s.stage in ("text", "any"))
#: the round-0 scores each candidate is compared with, read by the gate as ``ref_<name>``
REFERENCES: tuple[str, ...] = ("ppl", "readability", "helpfulness", "safety", "harm")
#: the gate's input struct: scores it reads (by column), the copy flag, the references
GATE_INPUTS: tuple[str, ...] = (tuple(s.column for s in SCORES if s.gate) + ("dup",)
                                + tuple(f"ref_{r}" for r in REFERENCES))
#: scores measured only where the gate still needs them
ON_DEMAND: tuple[str, ...] = tuple(s.column for s in SCORES if s.on_demand)


def by_column(column: str) -> Score:
    """The score stored under ``column``; KeyError names the known columns."""
    for s in SCORES:
        if s.column == column:
            return s
    raise KeyError(f"no candidate score is stored as {column!r}; known: {[s.column for s in SCORES]}")
