"""cleancurate: curate clean (query, response) training text with Spark (CTRL / Buckle Up).

The lakehouse-step API::

    from cleancurate import curate
    result = curate(df_or_table, "paper", overrides=["output.path=/lake/curated"])
    result.table("curated")

    from cleancurate import evaluate
    evaluation = evaluate("eval-small")  # fine-tune on mixes of a curation run, judge the answers
    evaluation.table("evaluation")

Package layers: ``cleancurate`` (this library: config, models, batching, prompts, tables,
text rules, and the model engine ``cleancurate.engine``), ``cleancurate.schemas``,
``cleancurate.udfs`` (Spark shells around the engine) above them, and the jobs' stages in
``cleancurate.jobs`` (``curation``, ``evaluation``) on top. The functions below import the
jobs when called, so importing the library loads no job code.
"""

__version__ = "0.1.0"

__all__ = ["curate", "evaluate", "load_config", "CurationResult", "EvaluationResult", "__version__"]


def curate(*args, **kwargs):
    """Curate a DataFrame or table; see :func:`cleancurate.jobs.curation.stages.curate`."""
    from cleancurate.jobs.curation.stages import curate as _curate

    return _curate(*args, **kwargs)


def evaluate(*args, **kwargs):
    """Evaluate a curation run by fine-tuning on mixes; see :func:`cleancurate.jobs.evaluation.job.evaluate`."""
    from cleancurate.jobs.evaluation.job import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def load_config(name_or_path: str, overrides=None, evaluation: bool = False):
    """Load and validate a profile: the curation job's configuration, or with ``evaluation`` the evaluation
    job's; see :func:`cleancurate.config.load` and :func:`cleancurate.config.load_evaluation`."""
    from cleancurate.config import load, load_evaluation

    return (load_evaluation if evaluation else load)(name_or_path, overrides)


def __getattr__(name):
    if name == "CurationResult":
        from cleancurate.jobs.curation.stages import CurationResult

        return CurationResult
    if name == "EvaluationResult":
        from cleancurate.jobs.evaluation.job import EvaluationResult

        return EvaluationResult
    raise AttributeError(name)
