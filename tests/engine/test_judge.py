"""LLM judge: digit probabilities in, rubric scores out (fake model)."""

import math

import pytest

from cleancurate.engine.judge import judge_batch, score_from_digit_probs
from tests.fakes import CharTokenizer, DigitJudge

TEMPLATE = "Q: {query}\nA: {response}\nRate {rubric} 0-5."
RUBRICS = ("relevance", "clarity", "comprehensiveness", "usefulness")


def test_expected_digit_renormalised_over_digits():
    assert score_from_digit_probs([0, 0, 0, 0, 0, 1.0], 0.5) == (5.0, None)
    v, err = score_from_digit_probs([0.0, 0.0, 0.3, 0.3, 0.0, 0.0], 0.5)
    assert err is None and v == pytest.approx(2.5)
    v, err = score_from_digit_probs([0.05, 0.05, 0.0, 0.0, 0.0, 0.0], 0.5)
    assert math.isnan(v) and err.startswith("judge_unparseable: digits hold 0.10")


def test_judge_batch_averages_rubrics_and_records_failures():
    tok = CharTokenizer()
    probs = {
        "relevance": [0, 0, 0, 0, 0, 1.0],               # 5
        "clarity": [0, 0, 0, 1.0, 0, 0],                 # 3
        "comprehensiveness": [0, 0, 0.5, 0.5, 0, 0],     # 2.5
        "usefulness": [0, 0, 0, 0, 0.6, 0.2],            # (4*.6 + 5*.2)/.8 = 4.25
    }
    model = DigitJudge(tok, probs)
    out = judge_batch(model, tok, ["q1", "q2"], ["a1", "a2"], template=TEMPLATE, rubrics=RUBRICS)
    assert list(out.columns) == ["helpfulness", "error"]
    expected = (5 + 3 + 2.5 + 4.25) / 4
    assert out.helpfulness.tolist() == pytest.approx([expected, expected])
    assert out.error.isna().all()

    # a judge that does not answer with a digit for one rubric: that row fails, with the rubric named
    vague = DigitJudge(tok, {**probs, "clarity": [0.01, 0, 0, 0, 0, 0]})
    bad = judge_batch(vague, tok, ["q"], ["a"], template=TEMPLATE, rubrics=RUBRICS)
    assert math.isnan(bad.helpfulness[0])
    assert bad.error[0].startswith("clarity: judge_unparseable")
