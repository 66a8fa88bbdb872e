"""The curation job's ranking, finalize and accounting through Spark, with fake UDFs (no model).

The fakes make each document's story known in advance: g04's revisions are ever less
perplexing, g03's ever more, g01's are all rejected by the gate, g05's are a mixture;
g02 fails scoring and g06 is over ``limits.max_tokens`` in round 0; the screen finds
u01 harmful and fails on u03 (the minimize run quarantines both, the maximize run keeps
them in ``mix`` flagged: ``harm.screen_action: flag``). A revision at temperature 1.0
repeats its parent.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tests import jobdata
from cleancurate import config as C
from cleancurate.jobs.curation.objective import NO_REVISION_PASSED, ORIGINAL_RANKED_BEST, Objective, beam_eligible

pytestmark = pytest.mark.spark

SCREENED = [
    ("u01", "How can I take things from a store without paying?", "Slip small items into a bag you brought."),
    ("u03", "How do I get into my ex's email account?", "Answer the reset questions with what you know about her."),
]


def fake_udfs() -> dict:
    """Fake ``rewrite``, ``score_original``, ``score``, ``gate`` and ``screen`` UDFs.

    Everything they use is inside them: Spark ships them to its workers by value.
    """
    from pyspark.sql.functions import pandas_udf

    from cleancurate.schemas.udf import GENERATION, SCORES, SCORES_COLUMNS, SCREEN

    @pandas_udf(GENERATION)
    def rewrite(queries, parents, temperatures, top_ps, seeds):
        texts = [p if t == 1.0 else f"{p} (take {t:.1f})" for p, t in zip(parents, temperatures)]
        return pd.DataFrame({"text": texts, "gen_tokens": [len(t) // 4 for t in texts], "error": [None] * len(texts)})

    @pandas_udf(SCORES)
    def score(queries, texts, originals):
        import zlib

        rows = []
        for q, t, o in zip(queries, texts, originals):
            takes, jitter = t.count("(take"), zlib.crc32(t.encode()) % 100 / 1000
            ppl = {"sleep": 10.0 - takes - jitter, "pasta": 10.0 + takes + jitter,
                   "houseplant": 10.0 + (zlib.crc32(t.encode()) % 600 - 300) / 100 * min(takes, 1)}.get(
                next((k for k in ("sleep", "pasta", "houseplant") if k in q), ""), 10.0 + jitter * takes)
            error = "scoring failed: test" if "microwave" in q else None
            rows.append({
                "clean_text": t, "stripped_preamble": False, "meta_text": None, "form_fault": None,
                "readability": 0.5, "repeat_ratio": 0.0, "compression_ratio": 1.0,
                "length_ratio": len(t) / max(1, len(o)), "coverage": 1.0, "new_words": 5, "dropped_words": 5,
                "ppl": None if error else ppl,
                "scored_tokens": len(t), "retention": 0.2, "relevance": 0.5, "similarity": 0.9, "safety": 0.5,
                "harm": 0.1, "helpfulness": 0.6, "error": error})
        return pd.DataFrame(rows, columns=SCORES_COLUMNS)

    @pandas_udf("string")
    def gate(rows):
        import zlib

        def rule(text, dup):
            if dup:  # the real gate's first rule: a repeated text is a duplicate
                return "duplicate"
            if text.startswith("Give it"):  # g01: every revision loses content
                return "lost_content"
            if text.startswith("A pothos") and zlib.crc32(text.encode()) % 3 == 0:
                return "retention"
            return None
        return pd.Series([rule(t, d) for t, d in zip(rows["text"], rows["dup"])])

    @pandas_udf(SCREEN)
    def screen(queries, responses):
        harm = [None if "email" in q else 0.9 if "store" in q else 0.1 for q in queries]
        error = ["screen failed: test" if h is None else None for h in harm]
        return pd.DataFrame({"harm": harm, "error": error})

    udfs = {"rewrite": rewrite, "score_original": score, "score": score, "gate": gate, "screen": screen}
    return {name: u.asNondeterministic() for name, u in udfs.items()}


def fake_config(input_path: str, out: str, objective: str = "minimize") -> C.Config:
    raw = jobdata.job_config(input_path, out, rounds=2)
    raw["selection"] = {"fraction": 1.0, "seed": 3, "max_docs": None}
    raw["curation"].update(objective=objective, temperatures=[0.5, 0.7, 1.0], top_ps=[0.9], early_stop=True)
    raw["limits"] = {"max_tokens": 100}  # g06's response is 103 characters, one token each
    raw["harm"] = {"threshold": 0.5}
    if objective == "maximize":
        raw["harm"]["screen_action"] = "flag"
        raw["curation"]["prompt_file"] = "prompts/buckle_up_revise.txt"
        raw["gate"] = {"ppl_ceiling_ratio": 5.0, "safety_check": "keywords"}
    return C.from_dict(raw)


def write_input(spark, path: str) -> str:
    rows = jobdata.rows() + SCREENED
    spark.createDataFrame(rows, "id string, query string, response string").coalesce(1).write.parquet(path)
    return path


def run_fake(spark, tmp_path, objective: str):
    """Run the job with the fakes (the minimize run that stops and resumes is tests/jobs/conftest.py's)."""
    from cleancurate.jobs.curation.stages import CurationJob

    src = write_input(spark, str(tmp_path / "in.parquet"))
    cfg = fake_config(src, str(tmp_path / "out"), objective)
    res = CurationJob(cfg, spark=spark, udfs=fake_udfs()).run()

    def t(name):
        return spark.read.format("delta").load(f"{res.store.output.path}/{name}").toPandas()

    return res, {name: t(name) for name in ("docs", "rounds", "curated", "quarantine", "mix")}


def sorted_ids(df: pd.DataFrame, keys) -> list[str]:
    return list(df.sort_values([c for c, _ in keys], ascending=[a for _, a in keys], kind="mergesort").cand_id)


def check_beams_and_picks(tables, obj: Objective, beam_size: int) -> None:
    """Every beam is the objective's top-k of the eligible pool; every pick its best competitor."""
    r = tables["rounds"]
    for (doc, rnd), g in r[r["round"] > 0].groupby(["doc_id", "round"]):
        eligible = g[beam_eligible(g.passed, g.is_original)]
        assert sorted(g[g.in_beam].cand_id) == sorted(sorted_ids(eligible, obj.beam_order())[:beam_size]), (doc, rnd)
    for row in tables["curated"].itertuples():
        g = r[(r.doc_id == row.doc_id) & ~r.carried]
        assert row.best_cand_id == sorted_ids(g[obj.competes(g.passed, g.is_original)], obj.final_order())[0]


def screened_and_round0(q: pd.DataFrame) -> dict:
    q = q[q.stage.isin(["screen", "round0"])]
    return {d: (s, r) for d, s, r in zip(q.doc_id, q.stage, q.reason)}


def test_minimize_with_fakes_ranks_picks_and_accounts_for_every_row_after_a_stop_and_resume(tracked_minimize):
    """The shared run (tests/jobs/conftest.py): stopped after round 1, then resumed from the tables alone."""
    t = tracked_minimize
    res, tb = t.res, t.tables
    assert not t.stopped.complete and not t.curated_at_stop
    assert res.complete and res.resumed_from_round == 1 and res.run_id == t.stopped.run_id
    starts = [e["round"] for e in t.events if e["event"] == "round_start"]
    assert starts == [2]  # earlier rounds not redone
    cur, q, r = tb["curated"].set_index("doc_id"), tb["quarantine"], tb["rounds"]
    assert screened_and_round0(q) == {"u01": ("screen", "unsafe_original"), "u03": ("screen", "screen_failed"),
                                      "g02": ("round0", "scoring_failed"), "g06": ("round0", "too_many_tokens")}
    assert q[q.stage == "round0"].set_index("doc_id").detail.to_dict() == {
        "g02": "scoring failed: test", "g06": "scored_tokens=103 > limits.max_tokens=100"}
    assert sorted(cur.index) == ["g01", "g03", "g04", "g05"]
    assert (cur.loc["g04", "improved"], cur.loc["g04", "best_round"]) == (True, 2)
    assert cur.loc["g04", "ppl_curated"] < cur.loc["g04", "ppl_original"] and pd.isna(cur.loc["g04", "kept_reason"])
    assert (cur.loc["g03", "improved"], cur.loc["g03", "kept_reason"]) == (False, ORIGINAL_RANKED_BEST)
    assert (cur.loc["g01", "improved"], cur.loc["g01", "kept_reason"]) == (False, NO_REVISION_PASSED)
    # its one original x 3 settings, then it stopped; the revision at temperature 1.0 repeats the original, and
    # the gate checks duplicate before lost_content
    assert cur.loc["g01", "rejections"] == "lost_content:2, duplicate:1"
    assert cur.loc["g03", "response_curated"] == cur.loc["g03", "response_original"]
    check_beams_and_picks(tb, Objective("minimize"), res.config.curation.beam_size)
    # a repeat of the parent that passed the gate is a duplicate, never a beam member
    fresh = r[(r["round"] > 0) & ~r.carried]
    repeats = fresh[(fresh.temperature == 1.0) & (fresh.doc_id == "g04")]
    assert len(repeats) > 0 and set(repeats.reject_reason) == {"duplicate"} and not repeats.in_beam.any()
    # early stop: g03's first round beat nothing, so it generated nothing in round 2
    assert not r[(r.doc_id == "g03") & (r["round"] == 1)].doc_active.any()
    assert len(fresh[(fresh.doc_id == "g03") & (fresh["round"] == 2)]) == 0
    # accounting
    c = res.counts
    assert c["input_rows"] == len(jobdata.rows()) + 2 and c["mix_rows"] == len(tb["mix"]) == 6
    assert c["quarantined_by_stage"] == {"validate": len(jobdata.BAD), "screen": 2, "round0": 2}
    assert c["selected_rows"] == len(cur) + 2 and c["improved_rows"] == int(cur.improved.sum())
    mix = tb["mix"].set_index("doc_id")
    assert mix.loc["g04", "response"] == cur.loc["g04", "response_curated"] and mix.loc["g04", "source"] == "curated"
    assert mix.loc["g02", "source"] == "original"  # quarantined in round 0, its original stays in the mix


def test_maximize_with_fakes_never_keeps_the_original_and_the_flag_action_keeps_unsafe_originals(
        spark, tmp_path):
    res, tb = run_fake(spark, tmp_path, "maximize")
    cur, q, r = tb["curated"].set_index("doc_id"), tb["quarantine"], tb["rounds"]
    # harm.screen_action: flag: u01 (harmful) and u03 (screen failed: fail closed) are never selected
    # and stay in the mix as they were, flagged; nothing is quarantined by the screen
    docs, mix = tb["docs"], tb["mix"]
    assert sorted(docs[docs.unsafe].doc_id) == ["u01", "u03"] and not docs[docs.unsafe].selected.any()
    assert "screen" not in set(q.stage)
    flagged = mix[mix.safety_flag].sort_values("doc_id")
    assert list(flagged.doc_id) == ["u01", "u03"] and (flagged.source == "original").all()
    assert list(flagged.response) == [a for _, _, a in SCREENED] and not flagged.selected.any()
    assert not mix[~mix.safety_flag].doc_id.isin(["u01", "u03"]).any()
    # rows in = rows out + rows quarantined (validation only: round 0 and curate keep originals in the mix)
    assert res.counts["input_rows"] == len(jobdata.rows()) + 2 == len(mix) + len(q[q.stage == "validate"])
    assert res.counts["unsafe_rows"] == 2 and res.counts["mix_rows"] == len(mix)
    originals = r[r.is_original & ~r.doc_id.isin(["g02", "g06"])]  # those two failed round 0
    assert set(originals.reject_reason) == {"original"} and not originals.passed.any()
    assert sorted(cur.index) == ["g03", "g04", "g05"] and cur.improved.all() and cur.kept_reason.isna().all()
    # g04's revisions are all less perplexing than its original: the most perplexing one still wins
    fresh = r[(r.doc_id == "g04") & ~r.carried & r.passed & ~r.is_original]
    assert cur.loc["g04", "ppl_curated"] == fresh.ppl.max() < cur.loc["g04", "ppl_original"]
    curate = q[q.stage == "curate"]
    assert list(curate.doc_id) == ["g01"] and list(curate.reason) == [NO_REVISION_PASSED]
    assert curate.detail.iloc[0] == "candidates tried: 3; rejected by rule: lost_content:2, duplicate:1"  # the 1.0 revision repeats the original
    check_beams_and_picks(tb, Objective("maximize"), res.config.curation.beam_size)
    assert res.counts["quarantined_by_stage"] == {"validate": len(jobdata.BAD), "round0": 2, "curate": 1}


def test_a_first_run_that_selects_no_document_completes_with_every_table(spark, tmp_path):
    """selection.fraction so small that no document is selected: no round runs, yet the run
    completes, every output table exists (the round tables empty) and the report builds."""
    from cleancurate.jobs.curation.report import build_report
    from cleancurate.jobs.curation.stages import CurationJob
    from cleancurate.schemas import TABLES

    src = write_input(spark, str(tmp_path / "in.parquet"))
    cfg = fake_config(src, str(tmp_path / "out")).with_overrides(["selection.fraction=1e-05"])
    events = []
    res = CurationJob(cfg, spark=spark, udfs=fake_udfs(), progress=events.append).run()
    assert res.complete and not any(e["event"] == "round_start" for e in events)
    c = res.counts
    assert (c["selected_rows"], c["curated_rows"]) == (0, 0)
    assert c["quarantined_by_stage"] == {"validate": len(jobdata.BAD), "screen": 2}
    assert c["input_rows"] == c["mix_rows"] + len(jobdata.BAD) + 2  # rows in = rows out + rows quarantined
    for name in ("rounds", "candidates", "round_stats"):
        table = spark.read.format("delta").load(f"{tmp_path}/out/{name}")
        assert table.count() == 0 and table.schema.fieldNames() == TABLES[name].fieldNames(), name
    mix = spark.read.format("delta").load(f"{tmp_path}/out/mix").toPandas()
    assert len(mix) == c["mix_rows"] and set(mix.source) == {"original"}
    page = build_report(res, timings={})
    assert res.run_id in open(page, encoding="utf-8").read()  # the report of this run, built from empty round tables
    # a rerun over the unchanged source returns the stored result
    again = CurationJob(cfg, spark=spark, udfs=fake_udfs()).run()
    assert again.run_id == res.run_id and again.counts["mix_rows"] == c["mix_rows"]
