"""The curation job's decisions as pure functions, without Spark: the objective (what
ranks first, what counts as improved, why an original was kept), the row accounting,
the run record's resume choice, the round size check and a round's statistics."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cleancurate import config as C
from cleancurate.jobs.curation.accounting import accounting_problems
from cleancurate.jobs.curation.objective import (NO_REVISION_PASSED, ONLY_NEAR_COPIES, ORIGINAL_RANKED_BEST, Objective,
                                                 beam_eligible, kept_reason_rules)
from cleancurate.jobs.curation.prepare import check_round_size
from cleancurate.jobs.curation.rounds import stats_row
from cleancurate.jobs.curation.runrecord import pick_run, run_id_for

MIN, MAX = Objective("minimize"), Objective("maximize")


def pool(*rows) -> pd.DataFrame:
    """Candidates of one document: (cand_id, ppl, passed, is_original[, round])."""
    df = pd.DataFrame([r if len(r) == 5 else (*r, 1) for r in rows],
                      columns=["cand_id", "ppl", "passed", "is_original", "round"])
    df["carried"] = False
    return df


def ordered(df: pd.DataFrame, keys) -> list[str]:
    """cand_ids sorted by ``(column, ascending)`` keys, as the stages' windows sort them."""
    return list(df.sort_values([c for c, _ in keys], ascending=[a for _, a in keys], kind="mergesort").cand_id)


def beam(df: pd.DataFrame, obj: Objective, k: int) -> list[str]:
    """The round's beam as the rank stage builds it: eligible members first, by the objective's order."""
    eligible = df[beam_eligible(df.passed, df.is_original)]
    return ordered(eligible, obj.beam_order())[:k]


def pick(df: pd.DataFrame, obj: Objective) -> str | None:
    """The document's curated pick as the finalize stage makes it."""
    got = ordered(df[obj.competes(df.passed, df.is_original) & ~df.carried], obj.final_order())
    return got[0] if got else None


def first_match(rules, default) -> list:
    """The pandas reading of a ``CASE WHEN``: per row, the value of the first true condition."""
    n = len(rules[0][0])
    return [next((value for cond, value in rules if cond.iloc[i]), default) for i in range(n)]


# --- the objective ---------------------------------------------------------------------------------

def test_minimize_keeps_the_lowest_perplexity_and_the_original_competes():
    p = pool(("orig", 20.0, True, True, 0), ("a", 30.0, True, False), ("b", 10.0, True, False),
             ("bad", 5.0, False, False))
    assert beam(p, MIN, 2) == ["b", "orig"]  # the failed candidate never enters, however fluent
    assert pick(p, MIN) == "b"
    assert pick(p[p.cand_id != "b"], MIN) == "orig"  # no revision less perplexing: the original stays


def test_maximize_keeps_the_highest_perplexity_revision_and_the_original_never_competes():
    p = pool(("orig", 90.0, False, True, 0), ("a", 30.0, True, False), ("b", 40.0, True, False),
             ("bad", 99.0, False, False))
    # the original keeps a beam place only behind every passing revision, as the parent
    assert beam(p, MAX, 2) == ["b", "a"]
    assert beam(p, MAX, 3) == ["b", "a", "orig"]
    assert pick(p, MAX) == "b"
    assert pick(p[p.cand_id.isin(["orig", "bad"])], MAX) is None  # nothing to keep: quarantined at curation
    assert MAX.original_competes is False and MIN.original_competes is True


def test_ties_go_to_the_original_then_the_earliest_round_then_cand_id():
    p = pool(("z-orig", 20.0, True, True, 0), ("a", 20.0, True, False, 2), ("b", 20.0, True, False, 1))
    assert pick(p, MIN) == "z-orig"
    assert pick(p[~p.is_original], MIN) == "b"
    assert beam(p, MIN, 3) == ["a", "b", "z-orig"]  # the beam breaks ties by cand_id alone
    q = pool(("c", 50.0, True, False, 1), ("a", 50.0, True, False, 1))
    assert pick(q, MAX) == "a" and beam(q, MAX, 1) == ["a"]


def test_the_stopping_rule_needs_a_gain_beyond_the_tolerance():
    new, prev = pd.Series([9.0, 9.5, 11.0]), pd.Series([10.0, 10.0, 10.0])
    assert list(MIN.beats(new, prev, 0.05)) == [True, False, False]
    assert list(MAX.beats(new, prev, 0.05)) == [False, False, True]
    assert (MIN.best, MAX.best) == ("min", "max")
    passed, original = pd.Series([True, True, False]), pd.Series([True, False, False])
    assert list(MIN.competes(passed, original)) == [True, True, False]
    assert list(MAX.competes(passed, original)) == [False, True, False]


def test_improved_and_kept_reason():
    is_original = pd.Series([False, False, True, True])
    ppl = pd.Series([8.0, 12.0, 10.0, 10.0])
    ppl_original = pd.Series([10.0, 10.0, 10.0, 10.0])
    n_passed = pd.Series([3, 1, 0, 2])
    improved = MIN.improved(is_original, ppl, ppl_original)
    assert list(improved) == [True, False, False, False]
    assert first_match(*kept_reason_rules(improved, n_passed)) == [
        None, ORIGINAL_RANKED_BEST, NO_REVISION_PASSED, ORIGINAL_RANKED_BEST]
    # none passed, but some were near-copies of the original: the reason says so
    near = pd.Series([0, 0, 2, 0])
    assert first_match(*kept_reason_rules(improved, n_passed, near)) == [
        None, ORIGINAL_RANKED_BEST, ONLY_NEAR_COPIES, ORIGINAL_RANKED_BEST]
    # maximize: a revision that passed replaced the original, whatever its perplexity
    assert list(MAX.improved(is_original, ppl, ppl_original)) == [True, True, False, False]


def test_an_unknown_objective_is_an_error():
    with pytest.raises(ValueError, match="minimize"):
        Objective("lowest")


# --- accounting ------------------------------------------------------------------------------------

COUNTS = {"input_rows": 20, "valid_rows": 15, "selected_rows": 4}


def test_accounting_adds_up():
    assert accounting_problems(COUNTS, {"validate": 5, "screen": 2, "curate": 1}, 13, 3) == []
    assert accounting_problems(COUNTS, {"validate": 5, "screen": 2, "round0": 1, "curate": 1}, 13, 2) == []


def test_accounting_names_each_mismatch():
    got = accounting_problems(COUNTS, {"validate": 5, "curate": 1}, 14, 2)
    assert got == [
        "input rows 20 != mix 14 + quarantined at validation 5 + screened out 0",
        "valid rows 15 != mix rows 14 + screened out 0",
        "selected rows 4 != curated 2 + quarantined 1",
    ]


# --- the run record --------------------------------------------------------------------------------

def test_a_run_resumes_its_own_row_and_refuses_another_without_new_run():
    mine = run_id_for("abcdef0123456789")
    other = {"run_id": "run-other", "config_hash": "ffff", "last_complete_round": 3}
    assert mine == "run-abcdef012345"
    assert pick_run([], mine, "abcdef0123456789", False, "/out") == (-1, None)
    row = {"run_id": mine, "config_hash": "abcdef0123456789", "last_complete_round": 1}
    assert pick_run([other, row], mine, "abcdef0123456789", False, "/out") == (1, row)
    with pytest.raises(C.ConfigError, match=r"output /out holds run 'run-other' \(config hash ffff\).*Pass --new-run"):
        pick_run([other], mine, "abcdef0123456789", False, "/out")
    assert pick_run([other], mine, "abcdef0123456789", True, "/out") == (-1, None)


# --- preparation and round statistics ---------------------------------------------------------------

def test_a_round_over_the_candidate_cap_stops_the_job():
    cfg = C.from_dict({"curation": {"beam_size": 2, "temperatures": [0.7, 1.0], "top_ps": [0.9],
                                    "max_candidates_per_round": 40}})
    check_round_size(cfg, 10)  # 10 x 2 x 2 = 40
    with pytest.raises(C.ConfigError, match=r"up to 44 candidates \(11 documents x beam 2 x grid 2\)"):
        check_round_size(cfg, 11)


def test_round_stats_row_fills_empty_sums_and_sorts_rejections():
    agg = {"docs_active": 2, "candidates": None, "passed": None, "in_beam": 2, "gen_tokens": None,
           "scored_tokens": 40, "median_beam_ppl": None, "converged": None}
    row = stats_row("run-x", 0, agg, {"retention": 3, "echo": 1}, 1.5)
    assert row == {"run_id": "run-x", "round": 0, "docs_active": 2, "candidates": 0, "passed": 0, "in_beam": 2,
                   "docs_converged": 0, "gen_tokens": 0, "scored_tokens": 40, "median_beam_ppl": None,
                   "reject_counts_json": '{"echo": 1, "retention": 3}', "seconds": 1.5}
    assert json.loads(stats_row("r", 1, {**agg, "median_beam_ppl": 12}, {}, 0)["reject_counts_json"]) == {}
