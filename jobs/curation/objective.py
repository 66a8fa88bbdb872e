"""The curation objective, minimize (CTRL) or maximize (Buckle Up), in one place.

Under ``minimize`` the job keeps the lowest-perplexity revision and the original
competes: round 0 scores it, it passes, and it stays the answer unless a revision that
passed the gate is less perplexing. Under ``maximize`` the job keeps the
highest-perplexity revision that passed the (stricter) gate and the original never
competes: round 0 marks it ``reject_reason = 'original'``, it stays in the first beam
only as the parent the first revisions come from, ranked after every revision that
passed, and it is never the pick.

The rules are written with operators only (``&``, ``|``, ``~``, comparisons), so one
rule works on pandas Series (the tests) and on Spark Columns (the stages). Orderings are
data, ``(column, ascending)`` keys, which the stages turn into a Spark window
(:func:`~cleancurate.jobs.curation.columns.order_by`) and a test into ``sort_values``.
No pyspark import here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: round 0's ``reject_reason`` of an original that does not compete (maximize)
ORIGINAL = "original"
#: ``curated.kept_reason``: no revision of the document passed the gate
NO_REVISION_PASSED = "no_revision_passed_gate"
#: ``curated.kept_reason``: no revision passed; the ones that came closest only copied the original with a
#: word or two changed (the gate's ``near_copy`` rule), which is no revision at all
ONLY_NEAR_COPIES = "only_near_copies"
#: ``curated.kept_reason``: revisions passed, but the original ranked best (minimize only)
ORIGINAL_RANKED_BEST = "original_ranked_best"

SortKey = tuple[str, bool]  # (column, ascending)


def beam_eligible(passed, is_original):
    """A pool member that may hold a beam place: it passed the gate, or it is the original.

    Under both objectives the original keeps its place: under minimize as a competitor,
    under maximize only as the parent of the first revisions (it ranks last, see
    :meth:`Objective.beam_order`).
    """
    return passed | is_original


@dataclass(frozen=True)
class Objective:
    """What "best" means for one run: ``minimize`` or ``maximize`` perplexity."""

    name: str

    def __post_init__(self):
        if self.name not in ("minimize", "maximize"):
            raise ValueError(f"objective must be 'minimize' or 'maximize', got {self.name!r}")

    @property
    def maximize(self) -> bool:
        return self.name == "maximize"

    @property
    def original_competes(self) -> bool:
        """Whether the original can be kept as the best answer (round 0 then passes it)."""
        return not self.maximize

    @property
    def best(self) -> str:
        """The aggregate that picks the best perplexity: ``"max"`` or ``"min"``."""
        return "max" if self.maximize else "min"

    def beam_order(self) -> tuple[SortKey, ...]:
        """The ranking of a round's eligible pool members (:func:`beam_eligible`), best first."""
        keys = (("is_original", True), ("ppl", False)) if self.maximize else (("ppl", True),)
        return (*keys, ("cand_id", True))

    def final_order(self) -> tuple[SortKey, ...]:
        """The ranking of a document's competing candidates (:meth:`competes`) for ``curated``, best first.

        Under minimize the original wins a tie in perplexity; then the earliest round.
        """
        keys = (("ppl", False),) if self.maximize else (("ppl", True), ("is_original", False))
        return (*keys, ("round", True), ("cand_id", True))

    def competes(self, passed, is_original):
        """A candidate that counts as a result: for the stopping rule and the final pick."""
        return passed & ~is_original if self.maximize else passed

    def beats(self, new, prev, tolerance: float):
        """Whether perplexity ``new`` beats ``prev`` by more than ``tolerance`` (a fraction)."""
        return new > prev * (1 + tolerance) if self.maximize else new < prev * (1 - tolerance)

    def improved(self, is_original, ppl, ppl_original):
        """``curated.improved``: a revision replaced the original.

        Minimize: the pick is a revision (it passed the gate) and is less perplexing than
        the original. Maximize: the pick is a revision; the gate, safety implication
        included, already decided it (the original never competes).
        """
        if self.maximize:
            return ~is_original
        return ~is_original & (ppl < ppl_original)


def kept_reason_rules(improved, n_passed, n_near_copies=0):
    """``curated.kept_reason``, why the original was kept, as rules: the first true condition wins.

    Args:
        improved: :meth:`Objective.improved` of the document's pick.
        n_passed: how many of the document's revisions passed the gate (0 where none did).
        n_near_copies: how many were rejected as near-copies of the original.

    Returns:
        ``(((condition, reason), ...), default)``: null when a revision replaced the
        original; when none passed, :data:`ONLY_NEAR_COPIES` if some were near-copies,
        else :data:`NO_REVISION_PASSED`; otherwise :data:`ORIGINAL_RANKED_BEST`.
    """
    none_passed = n_passed == 0
    return (((improved, None), (none_passed & (n_near_copies > 0), ONLY_NEAR_COPIES),
             (none_passed, NO_REVISION_PASSED)), ORIGINAL_RANKED_BEST)
