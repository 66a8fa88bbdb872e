"""The jobs: each one's Spark stages, above the UDFs and the library.

Layers (imports point downwards only; ``tests/test_imports.py`` checks it)::

    cleancurate.jobs      curation/ (stages, validate, report), evaluation/ (mixes, fine-tuning,
                          judges, intervals, report); curate.py, evaluate.py: spark-submit entry points
    cleancurate.udfs      pandas UDFs and the batch functions behind them (generation, scoring, gate)
    cleancurate.schemas   every table's and UDF's schema
    cleancurate           the library both jobs stand on: config, models, batching, prompts,
                          tables, session, gate rules, safety head

``cleancurate.curate``, ``cleancurate.evaluate`` and the ``cleancurate`` command are the
public entry points; they import from here when called.
"""
