"""The jobs: each one's Spark stages, above the UDFs and the library.

Layers (imports point downwards only; ``tests/project/test_imports.py`` checks it)::

    cleancurate.jobs      curation/ (stages, validate, report), evaluation/ (mixes, fine-tuning,
                          judges, intervals, report); curate.py, evaluate.py: spark-submit entry points
    cleancurate.udfs      pandas UDFs: a factory that gets the worker's models and a Spark wrapper
                          around an engine batch function (rewrite, perplexity, score, screen, gate)
    cleancurate.schemas   every table's and UDF's schema
    cleancurate           the library both jobs stand on: config, models, batching, prompts,
                          tables, session, text rules, gate rules, safety head, and the model
                          engine (cleancurate.engine: generation, perplexity, judge, embeddings,
                          harm check, candidate scorer), which the evaluation job calls directly

``cleancurate.curate``, ``cleancurate.evaluate`` and the ``cleancurate`` command are the
public entry points; they import from here when called.
"""
