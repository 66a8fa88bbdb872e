"""cleancurate: curate clean (query, response) training text with Spark (CTRL / Buckle Up).

The lakehouse-step API::

    from cleancurate import curate
    result = curate(df_or_table, "paper", overrides=["output.path=/lake/curated"])
    result.table("curated")
"""

__version__ = "0.1.0"

__all__ = ["curate", "load_config", "CurationResult", "__version__"]


def curate(*args, **kwargs):
    """Curate a DataFrame or table; see :func:`cleancurate.pipeline.curate`."""
    from cleancurate.pipeline import curate as _curate

    return _curate(*args, **kwargs)


def load_config(name_or_path: str, overrides=None):
    """Load and validate a profile; see :func:`cleancurate.config.load`."""
    from cleancurate.config import load

    return load(name_or_path, overrides)


def __getattr__(name):
    if name == "CurationResult":
        from cleancurate.pipeline import CurationResult

        return CurationResult
    raise AttributeError(name)
