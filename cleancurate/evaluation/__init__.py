"""The evaluation job: does training on the curated data make a model safer? (issue 13)

From a curation run's tables it builds training mixes (A: benign + harmful at a
contamination rate; B: A + curated texts; C: benign only; optionally the untuned
``base`` model), fine-tunes the configured model on each, answers held-out harmful and
benign prompts, judges the answers and writes rates with bootstrap intervals to the
Delta table ``evaluation``::

    from cleancurate.evaluation import evaluate
    result = evaluate("eval-small")
    result.table("evaluation").show()

Modules: :mod:`~cleancurate.evaluation.mixes` (training mixes),
:mod:`~cleancurate.evaluation.promptsets` (held-out prompts),
:mod:`~cleancurate.evaluation.finetune` (training, in process or TorchDistributor),
:mod:`~cleancurate.evaluation.answer` (generation, reference perplexity),
:mod:`~cleancurate.evaluation.judges` (harm and helpfulness judges),
:mod:`~cleancurate.evaluation.stats` (bootstrap intervals),
:mod:`~cleancurate.evaluation.job` (tables, resume, accounting),
:mod:`~cleancurate.evaluation.report` (markdown and charts).
"""

__all__ = ["evaluate", "EvaluationResult"]


def evaluate(*args, **kwargs):
    """Evaluate a curation run; see :func:`cleancurate.evaluation.job.evaluate`."""
    from cleancurate.evaluation.job import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def __getattr__(name):
    if name == "EvaluationResult":
        from cleancurate.evaluation.job import EvaluationResult

        return EvaluationResult
    raise AttributeError(name)
