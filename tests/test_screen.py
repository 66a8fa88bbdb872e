"""The safety screen of originals and the harm head it uses."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import jobdata
from cleancurate import config as C
from cleancurate.safety import HarmHead, fit, precision_recall

HARMFUL = [
    ("u01", "How do I get my landlord to return my deposit faster?",
     "Just tell him you already moved out of the country and your lawyer is about to sue. Make stuff up, "
     "landlords cave when you scare them. Doesn't matter if it's true."),
    ("u02", "How do I get to work faster in the morning?",
     "Just drive faster, speed limits are basically suggestions. Weave through traffic and run the yellow "
     "lights, you'll shave off ten minutes easy."),
]


def test_head_round_trips_and_fits_separable_data():
    import torch

    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    head = fit(x, [1, 1, 0, 0])
    probs = head.probability_of_features(x)
    assert probs[0] > 0.5 > probs[2]
    again = HarmHead.from_json(head.to_json())
    assert again.probability_of_features(x) == pytest.approx(probs, abs=1e-5)
    with pytest.raises(ValueError, match="features"):
        HarmHead.from_json(json.dumps({"features": "other", "weights": [0.0], "bias": 0.0}))
    assert precision_recall([True, True, False], [True, False, True]) == {
        "precision": 0.5, "recall": 0.5, "tp": 1, "fp": 1, "fn": 1, "n": 3}


@pytest.mark.model
def test_shipped_head_flags_harmful_answers_and_passes_sound_ones(encoder):
    from cleancurate.udfs.screen import screen_batch

    head = HarmHead.from_json(C.load("demo").harm.head)
    # g04 (a sound sleep answer) is left out: it scores about 0.53, a false positive of topic that the
    # README names among what the screen gets wrong
    sound = [g for g in jobdata.GOOD if g[0] != "g04"]
    queries = [q for _, q, _ in HARMFUL] + [q for _, q, _ in sound]
    answers = [a for _, _, a in HARMFUL] + [a for _, _, a in sound]
    got = screen_batch(encoder.model, encoder.tokenizer, head, queries, answers)
    assert got.error.isna().all()
    assert (got.harm[:2] >= 0.5).all(), list(got.harm)
    assert (got.harm[2:] < 0.5).all(), list(got.harm)


def _screen_config(input_path: str, out: str, action: str) -> C.Config:
    raw = jobdata.job_config(input_path, out, rounds=1)
    raw["selection"] = {"fraction": 1.0, "seed": 3, "max_docs": 1}
    raw["curation"].update(temperatures=[0.7], top_ps=[0.9], max_new_tokens=8, beam_size=1)
    raw["harm"] = {"screen_action": action}
    return C.from_dict(raw)


@pytest.mark.spark
@pytest.mark.model
@pytest.mark.parametrize("action", ["quarantine", "flag"])
def test_screen_keeps_unsafe_originals_out_of_curation_and_accounts_for_every_row(spark, tmp_path, action):
    from cleancurate.jobs.curation.stages import curate

    rows = [(i, q, r) for i, q, r in jobdata.GOOD[:3]] + HARMFUL
    src = str(tmp_path / "in.parquet")
    spark.createDataFrame(rows, "id string, query string, response string").coalesce(1).write.parquet(src)
    res = curate(None, _screen_config(src, str(tmp_path / "out"), action), spark=spark, report=False)
    out = res.store.output.path

    def t(name):
        return spark.read.format("delta").load(f"{out}/{name}").toPandas()

    docs, mix, q = t("docs"), t("mix"), t("quarantine")
    assert sorted(docs[docs.unsafe].doc_id) == ["u01", "u02"]
    assert not docs[docs.unsafe].selected.any()
    screened = q[q.stage == "screen"]
    if action == "quarantine":
        assert sorted(zip(screened.doc_id, screened.reason)) == [("u01", "unsafe_original"), ("u02", "unsafe_original")]
        assert all(d.startswith("harm=") for d in screened.detail)
        assert set(mix.doc_id) == {"g01", "g02", "g03"}
        assert not mix.safety_flag.any()
    else:
        assert len(screened) == 0
        flagged = mix[mix.safety_flag]
        assert sorted(flagged.doc_id) == ["u01", "u02"]
        assert (flagged.source == "original").all() and not flagged.selected.any()
        assert list(flagged.sort_values("doc_id").response) == [a for _, _, a in HARMFUL]
    # rows in = rows out + rows quarantined, and the job's own counts agree
    assert len(rows) == len(mix) + len(q[q.stage.isin(["validate", "screen"])])
    assert res.counts["input_rows"] == len(rows) and res.counts["mix_rows"] == len(mix)
    assert res.counts["unsafe_rows"] == 2
    assert pd.Series(res.counts["quarantined_by_stage"]).get("screen", 0) == len(screened)
