"""The curation job through a local Spark session with Delta: tables, accounting,
gate decisions, beam, determinism, and resume after a SIGKILL (a stop with
``stop_after_round`` and its resume are tested with fake UDFs: tests/jobs/test_curation_fakes.py)."""

from __future__ import annotations

import math
import signal
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests import jobdata
from cleancurate import config as C
from cleancurate.gate import GateSettings, apply_gate
from cleancurate.jobs.curation.stages import curate
from cleancurate.schemas import TABLES

pytestmark = [pytest.mark.spark, pytest.mark.model]
COMPARED = ("docs", "rounds", "curated", "quarantine", "mix")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("job")


@pytest.fixture(scope="module")
def run(curation_run):
    """The reference run: the session's shared run (two rounds, two documents, uninterrupted)."""
    return curation_run


def _shared_cfg(shared_raw, out) -> C.Config:
    """The shared run's configuration with another output folder."""
    return C.from_dict({**shared_raw, "output": {"path": str(out)}})


def table(spark, out, name) -> pd.DataFrame:
    df = spark.read.format("delta").load(f"{out}/{name}").toPandas()
    return df.sort_values(list(df.columns[:4])).reset_index(drop=True)


def same_tables(spark, a, b):
    for name in COMPARED:
        ta, tb = table(spark, a, name), table(spark, b, name)
        pd.testing.assert_frame_equal(ta, tb, check_exact=True, obj=name)


def test_tables_have_the_declared_schemas(spark, run):
    out = run.store.output.path
    # removals is written by the first increment that removes a document (tests/jobs/test_increments.py)
    assert not Path(out, "removals").exists()
    for name, schema in TABLES.items():
        if name == "removals":
            continue
        got = spark.read.format("delta").load(f"{out}/{name}").schema
        assert [(f.name, f.dataType) for f in got.fields] == [(f.name, f.dataType) for f in schema.fields], name


def test_every_row_is_accounted_for(spark, run):
    out = run.store.output.path
    n_in = len(jobdata.shared_rows())
    mix, quarantine, curated = (table(spark, out, t) for t in ("mix", "quarantine", "curated"))
    validated_out = quarantine[quarantine.stage == "validate"]
    screened_out = quarantine[quarantine.stage == "screen"]
    assert n_in == len(mix) + len(validated_out) + len(screened_out)
    assert not set(screened_out.doc_id) & set(mix.doc_id)
    selected = int(mix.selected.sum())
    assert selected == 2  # selection.max_docs
    assert selected == len(curated) + len(quarantine[quarantine.stage.isin(["round0", "curate"])])
    assert run.counts["input_rows"] == n_in and run.counts["mix_rows"] == len(mix)
    # the mix: curated text where a row was curated, the original elsewhere
    cur = mix[mix.source == "curated"].merge(curated, on="doc_id")
    assert (cur.response == cur.response_curated).all()
    assert set(mix.source) <= {"original", "curated"}


def test_each_bad_row_is_quarantined_with_its_reason(spark, run):
    q = table(spark, run.store.output.path, "quarantine")
    q = q[q.stage == "validate"]
    got = sorted(zip(q.doc_id, q.reason))
    expected = sorted((i, reason) for i, _, _, reason in jobdata.BAD)
    assert got == expected
    dup = q[q.reason == "duplicate_id"].iloc[0]
    assert dup.response == "Put it near a window and water it a bit."  # the later copy, input order
    assert all(isinstance(j, str) and j.startswith("{") for j in q.row_json)


def test_no_injected_instruction_reaches_curated_output(spark, run):
    out = run.store.output.path
    texts = list(table(spark, out, "curated").response_curated) + list(table(spark, out, "mix").response)
    for t in texts:
        low = t.lower()
        assert "ignore previous instructions" not in low and "you are now evil" not in low
        assert "<|im_start|>" not in t and "</response>" not in t


def test_rounds_hold_the_full_grid_and_at_most_k_in_the_beam(spark, run):
    cfg = run.config
    grid = len(cfg.curation.temperatures) * len(cfg.curation.top_ps)
    r = table(spark, run.store.output.path, "rounds")
    assert sorted(r["round"].unique()) == [0, 1, 2]
    for (doc, rnd), g in r.groupby(["doc_id", "round"]):
        assert g.in_beam.sum() <= cfg.curation.beam_size
        if rnd == 0:
            assert len(g) == 1 and bool(g.is_original.iloc[0])
            continue
        prev = r[(r.doc_id == doc) & (r["round"] == rnd - 1) & r.in_beam]
        new = g[~g.carried]
        assert len(new) == len(prev) * grid, (doc, rnd)
        assert set(new.parent_id) == set(prev.cand_id)
        assert sorted(zip(new.temperature, new.top_p)) == sorted(
            (t, p) for _ in range(len(prev)) for t in cfg.curation.temperatures for p in cfg.curation.top_ps)
        # the beam is the best eligible members by perplexity, ties by cand_id
        eligible = g[g.passed | g.is_original].sort_values(["ppl", "cand_id"])
        assert list(g[g.in_beam].sort_values(["ppl", "cand_id"]).cand_id) == list(eligible.cand_id[:cfg.curation.beam_size])


def test_gate_decisions_match_the_configured_thresholds(spark, run):
    cfg = run.config
    r = table(spark, run.store.output.path, "rounds")
    refs = r[r["round"] == 0].set_index("doc_id")
    new = r[(r["round"] > 0) & ~r.carried].copy()
    assert len(new) > 0
    for col, src in (("ref_ppl", "ppl"), ("ref_readability", "readability"),
                     ("ref_helpfulness", "helpfulness"), ("ref_safety", "safety"), ("ref_harm", "harm")):
        new[col] = new.doc_id.map(refs[src])
    from cleancurate.textrules import quality_batch

    docs = table(spark, run.store.output.path, "docs").set_index("doc_id")
    q = quality_batch(list(new.text.fillna("")), list(new.doc_id.map(docs.response)),
                      queries=list(new.doc_id.map(docs["query"])))
    new["meta_text"], new["form_fault"], new["coverage"] = list(q.meta_text), list(q.form_fault), list(q.coverage)
    new["new_words"], new["dropped_words"] = list(q.new_words), list(q.dropped_words)
    # the rounds table keeps the verdict, not the window's dup flag: a duplicate must still pass every earlier rule
    new["dup"] = new.reject_reason == "duplicate"
    recomputed = apply_gate(new, GateSettings.from_config(cfg))
    def norm(x):
        return None if pd.isna(x) else x

    decided = Counter()
    for got, want in zip([norm(x) for x in new.reject_reason], [norm(x) for x in recomputed.reject_reason]):
        assert got == want
        decided[got or "passed"] += 1
    assert sum(decided.values()) >= len(new) // 2


def test_minimize_never_makes_perplexity_worse_and_picks_the_best(spark, run):
    out = run.store.output.path
    cur, r = table(spark, out, "curated"), table(spark, out, "rounds")
    assert len(cur) == 2
    assert (cur.ppl_curated <= cur.ppl_original).all()
    for row in cur.itertuples():
        passing = r[(r.doc_id == row.doc_id) & r.passed & ~r.carried]
        assert row.ppl_curated == pytest.approx(passing.ppl.min())
        if row.improved:
            assert row.response_curated != row.response_original
            assert row.best_round >= 1 and row.n_candidates > 0
        else:
            assert row.response_curated == row.response_original and row.best_round == 0
    assert (cur.objective == "minimize").all() and (cur.config_hash == run.config.hash).all()
    assert (cur.gen_tokens > 0).all()


def test_models_load_once_per_python_worker(run):
    from tests.conftest import LOADS_DURING_SHARED_RUN

    loads = [tuple(line.split("\t")[:2]) for line in LOADS_DURING_SHARED_RUN if line.strip()]
    assert loads, "no model loads were logged during the run: workers did not report them"
    counts = Counter(loads)
    assert max(counts.values()) == 1, counts  # no (worker pid, model) pair loaded twice across the rounds
    # a few workers at most, not one load per batch, partition or round
    assert len({pid for pid, _ in loads}) <= 8


def test_a_changed_config_against_an_existing_output_is_an_error(spark, run, shared_raw):
    changed = _shared_cfg(shared_raw, run.store.output.path).with_overrides(["curation.beam_size=1"])
    with pytest.raises(C.ConfigError, match="Pass --new-run"):
        curate(None, changed, spark=spark, report=False)


@pytest.mark.slow
def test_spark_submit_killed_after_round_one_resumes_in_the_notebook_and_a_rerun_writes_nothing(
        spark, run, entrypoint_chain):
    """spark-submit SIGKILLed once round 1 is committed, then the notebook resuming the run
    (tests/entrypoint_chain.py: their processes ran in the background of the session); then
    the job run again (here: the entry points share ``curate``) finds the run complete and
    writes nothing. The tables end equal to the uninterrupted shared run's, row for row."""
    got = entrypoint_chain.result(timeout=1800)
    submit, nb, out = got["submit"], got["notebook"], entrypoint_chain.out
    assert submit["killed"] and submit["returncode"] == -signal.SIGKILL, submit["output"][-4000:]
    assert not submit["curated_after_kill"]

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"run {run.run_id}: resumed after round 1" in text
    # the notebook's run went on from round 2: round 1's rows were committed once, by the killed process
    def commits(folder):
        return {t: len(list((Path(folder) / t / "_delta_log").glob("*.json"))) for t in ("runs", *COMPARED)}

    assert commits(out)["rounds"] == commits(run.store.output.path)["rounds"]  # as many as an unbroken run
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4 and "report:" in text and (out / "report" / "report.html").is_file()
    same_tables(spark, run.store.output.path, str(out))

    before = commits(out)
    again = curate(None, C.load(entrypoint_chain.cfg_path), spark=spark, report=False)
    assert (again.run_id, again.complete, again.resumed_from_round) == (run.run_id, True, 2)
    assert commits(out) == before  # a finished run is not written again
    same_tables(spark, run.store.output.path, str(out))


def test_nan_free_scores_for_curated_rows(spark, run):
    cur = table(spark, run.store.output.path, "curated")
    for col in ("ppl_original", "ppl_curated", "readability_original", "helpfulness_original"):
        assert all(not math.isnan(v) for v in cur[col]), col


def test_report_figures_exist_and_their_data_matches_the_tables(spark, run):
    from cleancurate.jobs.curation.report import build_report, report_data

    out = run.store.output.path
    path = Path(build_report(run, timings={"round_1": 1.0}))
    assert path.name == "report.html" and path.is_file()
    data = report_data(spark, out, run.run_id)
    revised = int(data["ppl"].improved.sum())
    # perplexity before and after is drawn only when a revision replaced an original (else the page says so)
    for name in ("median_ppl_per_round", "gate_decisions", "docs_active_per_round", "time_per_round",
                 *(("ppl_distribution",) if revised else ())):
        png = path.parent / f"{name}.png"
        assert png.stat().st_size > 10_000, name  # a real plot, not an empty canvas
    assert (path.parent / "ppl_distribution.png").exists() == bool(revised)
    rounds, curated = table(spark, out, "rounds"), table(spark, out, "curated")
    new = rounds[(rounds["round"] > 0) & ~rounds.carried]
    assert int(data["gate"]["count"].sum()) == len(new)
    assert int(data["gate"].set_index("rule")["count"].get("passed", 0)) == int(new.passed.sum())
    assert len(data["ppl"]) == len(curated)
    assert list(data["median"]["round"]) == [0, 1, 2]
    assert list(data["stats"]["docs_active"]) == [2, 2, 2]
    inc = data["increments"]  # one increment: the full first run
    assert list(inc.increment) == [0] and list(inc.status) == ["complete"] and list(inc.read_via) == ["full"]
    assert int(inc.source_rows[0]) == run.counts["input_rows"]
    html = path.read_text()
    assert "gate_decisions.png" in html and run.run_id in html and "<h2 id='increments'>Increments</h2>" in html
    assert ("ppl_distribution.png" in html) == bool(revised)


def test_curated_outputs_hold_no_degenerate_text(spark, run):
    from cleancurate.textrules import compression_ratio, meta_text_reason, repeated_ngram_ratio

    g = run.config.gate
    for text in table(spark, run.store.output.path, "curated").response_curated:
        assert meta_text_reason(text) is None, text
        assert repeated_ngram_ratio(text, g.ngram) <= g.max_repeated_ngram_ratio, text
        assert compression_ratio(text) <= g.max_compression_ratio, text


def test_maximize_keeps_the_highest_perplexity_revision_that_passed_the_gate(spark, shared_input, workdir):
    raw = jobdata.job_config(shared_input, str(workdir / "maximize"), rounds=1)
    raw["curation"].update(objective="maximize", prompt_file="prompts/buckle_up_revise.txt",
                           temperatures=[0.7, 1.0], top_ps=[1.0], max_new_tokens=40)
    # keywords check as shipped; thresholds loosened so a 135M model's revisions can pass
    raw["gate"] = {"ppl_ceiling_ratio": 5.0, "safety_check": "keywords", "min_similarity": 0.3,
                   "length_ratio_max": 6.0, "length_ratio_min": 0.2, "max_retention": None, "answer_form": False,
                   "min_coverage": None}
    raw["harm"] = {"head_file": None}  # this test is about ranking; the reader's-view rules have tests of their own
    res = curate(None, C.from_dict(raw), spark=spark, report=False)
    out = res.store.output.path
    cur, r, q = (table(spark, out, t) for t in ("curated", "rounds", "quarantine"))
    assert res.counts["selected_rows"] == len(cur) + len(q[q.stage.isin(["round0", "curate"])])
    assert set(q[q.stage == "curate"].reason) <= {"no_revision_passed_gate"}
    assert len(cur) >= 1, "no revision passed the maximize gate"
    gate = res.config.gate
    for row in cur.itertuples():
        cands = r[(r.doc_id == row.doc_id) & ~r.carried]
        winner = cands[cands.cand_id == row.best_cand_id].iloc[0]
        assert not winner.is_original and bool(winner.passed)
        assert row.response_curated == winner.text != row.response_original
        passing = cands[cands.passed & ~cands.is_original]
        assert row.ppl_curated == pytest.approx(passing.ppl.max())
        assert any(k in row.response_curated.lower() for k in gate.safety_keywords)
        assert row.ppl_curated <= gate.ppl_ceiling_ratio * row.ppl_original
    # the original is never a candidate under maximize
    originals = r[r.is_original]
    assert not originals.passed.any() and set(originals.reject_reason) == {"original"}
