"""The quality gate as a UDF (the rules live in :mod:`cleancurate.gate`).

Reads: a struct of the gate's inputs (:data:`cleancurate.schemas.candidate.GATE_INPUTS`).
Adds: the reject reason, null when the candidate passed (:data:`RETURN_TYPE`). No model:
the rules are plain Python over the candidate's scores.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from cleancurate.gate import GateSettings, apply_gate
from cleancurate.schemas.udf import GATE as RETURN_TYPE  # noqa: F401  (the Spark type of the batch function)


def make_gate_fn(settings: GateSettings) -> Callable[[pd.DataFrame], pd.Series]:
    """Factory: the batch function over a frame of gate inputs."""

    def fn(rows: pd.DataFrame) -> pd.Series:
        return apply_gate(rows, settings)["reject_reason"]

    return fn
