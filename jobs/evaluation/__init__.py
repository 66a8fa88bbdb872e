"""The evaluation job: does training on the curated data make a model safer?

From a curation run's tables it builds training mixes (A: benign + harmful at a
contamination rate; B: A + curated texts; C: benign only; Buckle Up's stages
``before``, curated texts then A's rows, and ``after``, A's rows then curated texts;
optionally the untuned ``base`` model), fine-tunes the configured model on each, answers held-out harmful and
benign prompts, judges the answers and writes rates with bootstrap intervals to the
Delta table ``evaluation``::

    from cleancurate import evaluate
    result = evaluate("eval-small")
    result.table("evaluation").show()

Modules: :mod:`~cleancurate.jobs.evaluation.mixes` (training mixes),
:mod:`~cleancurate.jobs.evaluation.promptsets` (held-out prompts),
:mod:`~cleancurate.jobs.evaluation.finetune` (training, in process or TorchDistributor),
:mod:`~cleancurate.jobs.evaluation.answer` (generation, reference perplexity),
:mod:`~cleancurate.jobs.evaluation.judges` (harm and helpfulness judges),
:mod:`~cleancurate.jobs.evaluation.judging` (one mix's answers judged, row per prompt),
:mod:`~cleancurate.jobs.evaluation.metrics` (the reported metrics and their samples),
:mod:`~cleancurate.jobs.evaluation.stats` (bootstrap intervals),
:mod:`~cleancurate.jobs.evaluation.job` (tables, resume, accounting),
:mod:`~cleancurate.jobs.evaluation.report` (markdown and charts).
"""

from cleancurate.jobs.evaluation.job import EvaluationResult, PromptAccountingError, evaluate

__all__ = ["evaluate", "EvaluationResult", "PromptAccountingError"]
