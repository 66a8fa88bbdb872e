"""The job's UDFs: one Spark shell (:func:`batch_udf`) over a factory per model.

As in pyspark's ``predict_batch_udf``, each module here holds only a *factory*: a
function that, in the Python worker, loads (or reuses) the worker's cached models once
and returns a batch function over pandas Series; the module's ``RETURN_TYPE`` is the
Spark type the batch function returns. :func:`batch_udf` wraps a factory as an iterator
pandas UDF. The factories take the frozen configuration (:class:`cleancurate.config.Config`
or its typed pieces), never dicts.

==================  ===============================  ==============================
module              factory                          batch function reads -> adds
==================  ===============================  ==============================
``rewrite``         :func:`~.rewrite.make_rewrite_fn`  query, parent_text, temperature,
                                                     top_p, seed -> text, gen_tokens, error
``score``           :func:`~.score.make_scorer`       query, text, original -> the
                                                     candidate contract's scores
``gate``            :func:`~.gate.make_gate_fn`       struct of gate inputs -> reject reason
``screen``          :func:`~.screen.make_screen_fn`   query, response -> harm, error
==================  ===============================  ==============================

Build each UDF once per job, never inside a loop over rounds: the model cache is keyed
by the model spec, so a rebuilt UDF does not reload a model, but it does make Spark
plan a new Python function.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Union

import pandas as pd

Factory = Callable[..., Callable[..., Union[pd.Series, pd.DataFrame]]]


def batch_udf(factory: Factory, return_type: str, *args: Any, **kwargs: Any):
    """An iterator pandas UDF that calls ``factory(*args, **kwargs)`` once per task and its batch function per batch.

    Args:
        factory: builds the batch function in the worker (model loads happen here, cached per worker).
        return_type: Spark DDL of what the batch function returns (a struct's fields, or a scalar type).
        *args, **kwargs: the factory's arguments (pickled with the UDF: the frozen config).

    The UDF is marked nondeterministic, so Spark never evaluates it twice for one row (a
    candidate's text is generated once, and its scores are those of that text).
    """
    from pyspark.sql.functions import pandas_udf

    def run(batches: Iterator[Union[pd.Series, pd.DataFrame]]) -> Iterator[pd.DataFrame]:
        fn = factory(*args, **kwargs)
        for cols in batches:
            yield fn(*cols) if isinstance(cols, tuple) else fn(cols)

    run.__name__ = getattr(factory, "__name__", "batch").removeprefix("make_")
    return pandas_udf(run, return_type).asNondeterministic()
