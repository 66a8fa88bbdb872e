"""The curation job: validate, screen, rounds of rewrite -> score -> gate -> rank, curated table.

:mod:`~cleancurate.jobs.curation.stages` runs the stages in order (one committed Delta
slice per step); each stage is a module of its own that says which tables it reads and
writes: :mod:`~cleancurate.jobs.curation.prepare` (with
:mod:`~cleancurate.jobs.curation.validate` and :mod:`~cleancurate.jobs.curation.screen`),
:mod:`~cleancurate.jobs.curation.rounds`, :mod:`~cleancurate.jobs.curation.finalize`,
:mod:`~cleancurate.jobs.curation.accounting` and :mod:`~cleancurate.jobs.curation.runrecord`.
:mod:`~cleancurate.jobs.curation.objective` holds the minimize / maximize difference,
:mod:`~cleancurate.jobs.curation.quarantine` the quarantine rows, and
:mod:`~cleancurate.jobs.curation.report` writes the run's report.
"""

from cleancurate.jobs.curation.accounting import AccountingError
from cleancurate.jobs.curation.stages import CurationJob, CurationResult, curate

__all__ = ["curate", "CurationJob", "CurationResult", "AccountingError"]
