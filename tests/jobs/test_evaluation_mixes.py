"""The evaluation job's training mixes: their sizes from the contamination rate, the stage mixes'
phases, where the curated texts come from, and the mix-rows table of an older version
(``cleancurate.jobs.evaluation.mixes``)."""

from __future__ import annotations

import pandas as pd
import pytest

from cleancurate.jobs.evaluation.mixes import plan_sizes


def test_mix_sizes_follow_the_contamination_rate():
    s = plan_sizes(160, 14, 12, 0.05, 1.0)
    assert (s.benign, s.harmful, s.curated) == (160, 8, 8)
    s = plan_sizes(1000, 14, 12, 0.05, 1.0)  # too few harmful rows: benign is cut to keep 5%
    assert (s.benign, s.harmful, s.curated) == (266, 14, 12)
    assert s.harmful / (s.benign + s.harmful) == pytest.approx(0.05, abs=1e-3)
    s = plan_sizes(6, 5, 1, 0.25, 2.0, max_benign=None)
    assert (s.benign, s.harmful, s.curated) == (6, 2, 1)
    assert plan_sizes(40, 0, 3, 0.05, 1.0).harmful == 0


def _frame(ids, **extra):
    return pd.DataFrame({"doc_id": ids, "query": [f"q {i}" for i in ids], "response": [f"r {i}" for i in ids],
                         **extra})


def test_stage_mixes_are_phases_of_the_same_rows_in_order():
    from cleancurate.jobs.evaluation.finetune import training_phases
    from cleancurate.jobs.evaluation.mixes import TrainingMixes

    m = TrainingMixes(benign=_frame(["b1", "b2"]), harmful=_frame(["h1"]),
                      curated=_frame(["c1", "c2"], replaced=[True, False]))
    assert [p["kinds"] for p in m.phases("before")] == [["curated"], ["benign", "harmful"]]
    assert [p["kinds"] for p in m.phases("after")] == [["benign", "harmful"], ["curated"]]
    assert m.phases("after")[1]["pairs"] == [("q c1", "r c1"), ("q c2", "r c2")]
    assert m.phases("base") == [] and m.pairs("B") == m.phases("B")[0]["pairs"]
    assert sorted(m.pairs("before")) == sorted(m.pairs("after")) == sorted(m.pairs("B"))  # the same texts
    assert m.sizes("before") == m.sizes("B") == {"benign_rows": 2, "harmful_rows": 1, "curated_rows": 2,
                                                 "train_rows": 5}
    rows = m.rows(["before", "C"])
    assert rows.values.tolist() == [["before", "curated", "c1", 1], ["before", "kept_original", "c2", 1],
                                    ["before", "benign", "b1", 2], ["before", "benign", "b2", 2],
                                    ["before", "harmful", "h1", 2], ["C", "benign", "b1", 1], ["C", "benign", "b2", 1]]
    assert m.kept_originals() == 1
    # a payload of one list of pairs (older callers) is one phase
    assert training_phases({"pairs": [("q", "r")]}) == [{"phase": 1, "kinds": [], "pairs": [("q", "r")]}]


@pytest.mark.parametrize("value, path, prefix", [
    ("out/commonsense", "out/commonsense", None), ("s3://lake/cs", "s3://lake/cs", None),
    ("dbfs:/mnt/cs", "dbfs:/mnt/cs", None), ("commonsense", "commonsense", None),
    ("main.lake.commonsense_", None, "main.lake.commonsense_"),
])
def test_curated_output_names_a_folder_or_a_table_prefix(value, path, prefix):
    from cleancurate.jobs.evaluation.mixes import output_location

    out = output_location(value)
    assert out.table_prefix == prefix and (path is None or out.path == path)


@pytest.mark.spark
def test_an_eval_table_from_before_the_stage_columns_gains_them(spark, tmp_path):
    from cleancurate.config import OutputConfig
    from cleancurate.schemas.evaluation import EVAL_MIX_ROWS
    from cleancurate.tables import TableStore

    store = TableStore(spark, OutputConfig(path=str(tmp_path)))
    old = spark.createDataFrame([("e1", "A", "benign", "d1")], "eval_run_id string, mix string, kind string, "
                                "doc_id string")
    store.write_slice(old, "eval_mix_rows", "eval_run_id = 'e1'")
    new = spark.createDataFrame([("e2", "after", "curated", "d2", 2)], EVAL_MIX_ROWS)
    store.write_slice(new, "eval_mix_rows", "eval_run_id = 'e2'", merge_schema=True)
    got = sorted(store.read("eval_mix_rows").collect(), key=lambda r: r.eval_run_id)
    assert [tuple(r) for r in got] == [("e1", "A", "benign", "d1", None), ("e2", "after", "curated", "d2", 2)]
