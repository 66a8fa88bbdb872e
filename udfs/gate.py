"""Spark wrapper of the quality gate (the rules live in :mod:`cleancurate.gate`).

Reads a struct of the columns in :data:`cleancurate.gate.READS`; adds ``reject_reason``
(null when the candidate passed). No model: the rules are plain pandas, so this UDF
needs no factory.
"""

import pandas as pd

from cleancurate.gate import apply_gate


def gate_udf(gate_cfg: dict, injection_patterns: tuple):
    """Scalar pandas UDF: struct of gate inputs -> reject reason (null when passed)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def gate(rows: pd.DataFrame) -> pd.Series:
        return apply_gate(rows, gate_cfg, injection_patterns)["reject_reason"]

    return gate
