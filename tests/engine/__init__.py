"""Tests of the model engine, ``cleancurate/engine/``: fake, tiny random and embedded models."""
