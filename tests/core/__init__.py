"""Tests of the library modules of ``cleancurate/``: no Spark, small or no models."""
