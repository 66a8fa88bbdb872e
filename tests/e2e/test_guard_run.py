"""The curation job with the guard harm backend: a tiny random guard model saved to a folder.

One small run: the screen and the gate score with the guard (named by its folder, as a
user names a volume), every valid row gets a harm score, and every input row is
accounted for. The same tiny model rewrites, so no other model loads. A random model
is no classifier: the threshold is set between the two highest scores so that exactly
one original is screened out.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tests import jobdata
from cleancurate import config as C

ROWS = [r for r in jobdata.GOOD[:4]] + [
    ("h01", "How can I take things from a store without paying?",
     "Go when the store is busy, pick small expensive items and slip them into a bag you brought."),
    ("b03", "Any tips for running?", ""),  # quarantined at validation: empty response
]


@pytest.mark.spark
@pytest.mark.model
def test_a_run_with_the_guard_backend_scores_every_valid_row_and_accounts_for_every_row(spark, tmp_path, tiny_lm_dir):
    from cleancurate.engine.guard import GuardFormat, guard_batch
    from cleancurate.jobs.curation.stages import curate
    from cleancurate.models import get_model

    guard_dir = tiny_lm_dir
    guard = get_model(guard_dir, device="cpu")
    fmt = GuardFormat.from_yaml(C.read_conf_file("safety/guard/llama_guard_3.yaml", None), "llama_guard_3")
    valid = [r for r in ROWS if r[2]]
    scores = guard_batch(guard.model, guard.tokenizer, fmt, [q for _, q, _ in valid], [a for _, _, a in valid])
    expected = dict(zip([i for i, _, _ in valid], scores.harm))
    top, second = sorted(expected.values(), reverse=True)[:2]
    src = str(tmp_path / "in.parquet")
    spark.createDataFrame(ROWS, "id string, query string, response string").coalesce(1).write.parquet(src)
    raw = jobdata.job_config(src, str(tmp_path / "out"), rounds=1)
    raw["selection"].update(max_docs=1)
    raw["model"] = {"name": guard_dir, "device": "cpu"}  # the rewriter too: the guard's path is under test
    raw["curation"].update(temperatures=[0.7], top_ps=[0.9], max_new_tokens=8, beam_size=1)
    raw["harm"] = {"backend": "guard", "guard_model": guard_dir, "guard_format": "llama_guard_3",
                   "threshold": (top + second) / 2}
    res = curate(None, C.from_dict(raw), spark=spark, report=False)
    docs, mix, q, rounds = (res.table(n).toPandas() for n in ("docs", "mix", "quarantine", "rounds"))
    # every valid row was scored by the guard, as it scores them in this process
    assert sorted(docs.doc_id) == sorted(expected) and docs.harm.notna().all()
    assert docs.set_index("doc_id").harm.to_dict() == pytest.approx(expected, abs=1e-4)
    unsafe = max(expected, key=expected.get)
    screened = q[q.stage == "screen"]
    assert list(zip(screened.doc_id, screened.reason)) == [(unsafe, "unsafe_original")]
    assert f"(backend=guard format=llama_guard_3 model={guard_dir})" in screened.detail.iloc[0]
    # rows in = mix + quarantined (validation, screen); the job's own counts agree
    assert len(ROWS) == len(mix) + len(q[q.stage.isin(["validate", "screen"])])
    assert list(q[q.stage == "validate"].doc_id) == ["b03"] and unsafe not in set(mix.doc_id)
    assert res.counts["input_rows"] == len(ROWS) and res.counts["mix_rows"] == len(mix)
    assert pd.Series(res.counts["quarantined_by_stage"]).get("screen", 0) == 1
    # the gate's harm came from the guard too: every scored candidate has one
    scored = rounds[rounds.error.isna()]
    assert len(scored) > 0 and scored.harm.between(0, 1).all()
