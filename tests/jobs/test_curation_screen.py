"""The safety screen of originals and the harm head it uses."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests import jobdata
from cleancurate import config as C
from cleancurate.safety import HarmHead, fit, precision_recall

HARMFUL, SAFE = jobdata.HARMFUL, jobdata.SAFE


def test_held_out_examples_are_not_in_the_training_data():
    import gzip
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "data"
    corpus = "".join(p.read_text(encoding="utf-8") for p in root.rglob("*.jsonl"))
    corpus += "".join(gzip.open(p, "rt", encoding="utf-8").read() for p in (root / "real").rglob("*.jsonl.gz"))
    for _, q, a in HARMFUL + SAFE:
        assert a[:40] not in corpus and q not in corpus, q


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
def test_shipped_head_on_held_out_examples(encoder):
    from cleancurate.engine.harm import screen_batch

    cfg = C.load("demo")
    head = HarmHead.from_json(cfg.harm.head)
    assert cfg.harm.threshold == head.threshold  # harm.threshold: null takes the head's own
    assert head.features == "t,q*t,q" and 0.3 < head.threshold < 0.9
    rows = HARMFUL + SAFE
    got = screen_batch(encoder.model, encoder.tokenizer, head, [q for _, q, _ in rows], [a for _, _, a in rows])
    assert got.error.isna().all()
    harm = dict(zip([i for i, _, _ in rows], got.harm))
    # plain compliance with an unsafe request is flagged; its refusal and plain help are not
    assert harm["u01"] >= head.threshold and harm["u02"] >= head.threshold, harm
    assert harm["v01"] < head.threshold and harm["v02"] < head.threshold and harm["v03"] < head.threshold, harm
    # the same request: the compliant answer above the refusal
    assert harm["u01"] > harm["v01"] + 0.1
    # as a ranking, harmful above safe in most pairs (what the out-of-fold AUC measures); the head misses
    # u03 and u04 at its threshold and flags v04 (a sleep question: topic, not stance), see the README
    pairs = [(h, s) for h, _, _ in HARMFUL for s, _, _ in SAFE]
    assert sum(harm[h] > harm[s] for h, s in pairs) / len(pairs) >= 0.75


def _accounting(res, rows, mix, q, screened) -> None:
    """rows in = rows out + rows quarantined, and the job's own counts agree."""
    assert len(rows) == len(mix) + len(q[q.stage.isin(["validate", "screen"])])
    assert res.counts["input_rows"] == len(rows) and res.counts["mix_rows"] == len(mix)
    assert res.counts["unsafe_rows"] == 2
    assert pd.Series(res.counts["quarantined_by_stage"]).get("screen", 0) == len(screened)


@pytest.mark.spark
@pytest.mark.model
def test_screen_quarantines_unsafe_originals_and_accounts_for_every_row(spark, curation_run):
    """The shared run's corpus holds u01 and u02 beside ordinary rows; the default action quarantines them."""
    res = curation_run
    docs, mix, q = (res.table(n).toPandas() for n in ("docs", "mix", "quarantine"))
    assert sorted(docs[docs.unsafe].doc_id) == ["u01", "u02"]
    assert not docs[docs.unsafe].selected.any()
    screened = q[q.stage == "screen"]
    assert sorted(zip(screened.doc_id, screened.reason)) == [("u01", "unsafe_original"), ("u02", "unsafe_original")]
    assert all(d.startswith("harm=") for d in screened.detail)
    valid = {i for i, _, _ in jobdata.GOOD} | set(jobdata.HELPFUL_SAMPLE_IDS)  # the bad rows fail validation
    assert set(mix.doc_id) == valid
    assert not mix.safety_flag.any()
    _accounting(res, jobdata.shared_rows(), mix, q, screened)


def test_head_carries_its_threshold_and_scores_refusals_zero():
    import torch

    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    head = fit(x, [1, 0], features="t")
    head.threshold, head.gate_threshold, head.refusals_safe = 0.7, 0.4, True
    again = HarmHead.from_json(head.to_json())
    assert (again.threshold, again.gate_threshold, again.refusals_safe, again.features) == (0.7, 0.4, True, "t")
    raw = again.probability_of_features(x)
    assert raw[0] > 0.5
    texts = ["I can't help with that request.", "Sure, here is how."]
    assert again.apply_refusals(raw, texts) == [0.0, raw[1]]
    again.refusals_safe = False
    assert again.apply_refusals(raw, texts) == raw
    # a head file without the newer keys keeps the old behaviour
    old = HarmHead.from_json(json.dumps({"features": "t,q*t", "weights": [0.0] * 4, "bias": 0.0}))
    assert (old.threshold, old.gate_threshold, old.refusals_safe) == (0.5, 0.5, False)
    with pytest.raises(ValueError, match="unknown part"):
        HarmHead.from_json(json.dumps({"features": "t,x", "weights": [0.0], "bias": 0.0}))


def test_harm_threshold_null_takes_the_heads_own_and_an_override_wins():
    from cleancurate.gate import GateSettings

    cfg = C.load("demo")
    head = HarmHead.from_json(cfg.harm.head)
    assert cfg.harm.threshold == head.threshold
    # the gate's bar is lower than the screen's, and it is the one the gate's harmful rule uses
    assert cfg.harm.gate_threshold == head.gate_threshold < head.threshold
    assert GateSettings.from_config(cfg).gate_threshold == head.gate_threshold
    assert cfg.with_overrides(["harm.threshold=0.3"]).harm.threshold == 0.3
    assert cfg.with_overrides(["harm.gate_threshold=0.2"]).harm.gate_threshold == 0.2
    assert C.load("demo", ["harm.head_file=null"]).harm.threshold == 0.5
    assert GateSettings.from_config(C.load("demo", ["harm.head_file=null"])).gate_threshold is None
    with pytest.raises(C.ConfigError, match="harm.threshold"):
        C.load("demo", ["harm.threshold=1.5"])
