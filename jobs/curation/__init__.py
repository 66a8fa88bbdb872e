"""The curation job: validate, screen, rounds of rewrite -> score -> gate -> rank, curated table.

:mod:`~cleancurate.jobs.curation.stages` runs the stages (one committed Delta slice per
step), :mod:`~cleancurate.jobs.curation.validate` checks the input and quarantines bad
rows, :mod:`~cleancurate.jobs.curation.report` writes the run's report.
"""

from cleancurate.jobs.curation.stages import AccountingError, CurationJob, CurationResult, curate

__all__ = ["curate", "CurationJob", "CurationResult", "AccountingError"]
