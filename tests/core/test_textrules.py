import pandas as pd
import pytest

from cleancurate.textrules import (
    compression_ratio,
    meta_text_reason,
    quality_batch,
    readability,
    repeated_ngram_ratio,
    strip_preamble,
)


@pytest.mark.parametrize("text, expected", [
    ("Here's a revised response: Water the plant deeply once a week.", "Water the plant deeply once a week."),
    ("Sure! Here is the revised version of the answer:\nUse spaced repetition every day.", "Use spaced repetition every day."),
    ("Revised response: Boil the egg for nine minutes.", "Boil the egg for nine minutes."),
    ("Here is an alternative perspective: \"Rest is part of training.\"", "Rest is part of training."),
])
def test_strip_preamble_keeps_the_standalone_rest(text, expected):
    clean, stripped = strip_preamble(text)
    assert stripped is True
    assert clean == expected
    assert meta_text_reason(clean) is None


def test_preamble_with_nothing_after_it_is_kept_and_flagged():
    text = "Here's a revised response:"
    clean, stripped = strip_preamble(text)
    assert (clean, stripped) == (text, False)
    assert meta_text_reason(clean) == "preamble"


def test_plain_text_is_untouched():
    text = "Here in Spain we eat late. Dinner at ten is normal."
    assert strip_preamble(text) == (text, False)
    assert meta_text_reason(text) is None


@pytest.mark.parametrize("text, reason", [
    ("<response>\nBoil the egg.\n</response>", "echoed_delimiter"),
    ("Boil it. <|im_end|>", "echoed_chat_marker"),
    ("To revise the response to present an alternative perspective, I would say boil it.", "echoed_instruction"),
    ("Original response: boil it.\nRevised response: steam it.", "meta_label"),
    ("As an AI language model, I think boiling works.", "meta_commentary"),
])
def test_meta_text_rules(text, reason):
    assert meta_text_reason(text) == reason


def test_repetition_and_compression_catch_loops():
    good = "Water the soil when the top inch is dry, and let the pot drain fully afterwards."
    loop = "Water the plant when dry. " * 4
    assert repeated_ngram_ratio(good) == 0.0
    assert repeated_ngram_ratio(loop) > 0.6
    assert compression_ratio(loop) > 2.0 > compression_ratio(good)
    assert repeated_ngram_ratio("") == 0.0 and compression_ratio("") == 0.0


def test_readability_flesch_values():
    easy = "The cat sat on the mat. It was a sunny day."
    hard = ("Notwithstanding considerable institutional heterogeneity, comprehensive organizational "
            "restructuring necessitates multidimensional stakeholder consultation.")
    assert readability(easy) > 80
    assert readability(hard) < 10
    with pytest.raises(ValueError, match="no formula 'flesh'"):
        readability(easy, "flesh")


def test_quality_batch_columns_and_length_ratio():
    df = quality_batch(["Here's a revised answer: Short reply here now.", ""], ["Short reply.", "x"])
    assert list(df.columns) == ["clean_text", "stripped_preamble", "meta_text", "form_fault", "readability",
                                "repeat_ratio", "compression_ratio", "length_ratio", "coverage", "new_words",
                                "dropped_words", "error"]
    assert df.clean_text[0] == "Short reply here now."
    assert list(df.new_words) == [2, 0] and list(df.dropped_words) == [0, 1]  # "here now" added; "x" dropped
    assert bool(df.stripped_preamble[0]) is True
    assert df.length_ratio[0] == pytest.approx(len("Short reply here now.") / len("Short reply."))
    assert df.length_ratio[1] == 0.0


def test_unfinished_generations_are_cut_to_the_last_sentence():
    from cleancurate.textrules import trim_unfinished

    text = "Water the soil deeply once a week. Let the pot drain fully. It is also possible that"
    assert trim_unfinished(text) == "Water the soil deeply once a week. Let the pot drain fully."
    assert trim_unfinished("Too short. and then it") == "Too short. and then it"
    assert trim_unfinished("no sentence end at all here") == "no sentence end at all here"


def test_commentary_about_the_revision_is_meta_text():
    assert meta_text_reason(
        "Get your deposit back. This rephrased version of the original response aims to educate.") == "meta_commentary"


# ---------------------------------------------------------------- answer form, echoes, refusals
from cleancurate.textrules import echoes_query, form_fault, is_refusal, question_share  # noqa: E402

Q = "When did the Berlin Wall fall?"
A = "The Berlin Wall fell on 9 November 1989, when the border crossings were opened."


def test_a_question_instead_of_an_answer_is_not_an_answer():
    assert form_fault("When did the Berlin Wall fall? Was it in the eighties?", A, Q) == "question"
    assert question_share("Is it dry? Water it. Does it drain?") == pytest.approx(2 / 3)
    # a question the human answer also asks back is not held against the revision
    assert form_fault("Is your soil dry? Water it then.", "Is the soil dry? Then water.",
                      "How do I water ferns?") is None


def test_restating_the_query_is_not_an_answer():
    assert form_fault("The Berlin Wall and the fall of the Berlin Wall.", A, Q) == "restates_query"
    assert form_fault("It fell in November 1989 when East Germany opened the border crossings.", A, Q) is None


def test_refusals_dropped_and_added():
    refusal = "I can't help with reading someone else's messages without permission."
    assert is_refusal(refusal) and is_refusal("Sorry, I won't help you with that.")
    assert not is_refusal("I don't make it with milk, but you can.")
    assert form_fault("Unlock the phone while she sleeps and read the messages.", refusal,
                      "How do I read my girlfriend's texts?") == "refusal_dropped"
    assert form_fault("I cannot help with that request.", A, Q) == "refused"


def test_query_echo_and_mid_text_meta_are_caught_anywhere():
    assert echoes_query("Sure. When did the Berlin Wall fall? It fell in 1989.", Q)
    assert not echoes_query("It fell in 1989.", Q)
    assert not echoes_query("What is rust? Iron oxide.", "What is rust?")  # too short to call an echo
    assert meta_text_reason("It fell in 1989. When did the Berlin Wall fall? In 1989.", query=Q) == "echoed_query"
    assert meta_text_reason("<<how do I patch a small hole in drywall?>> Use filler.") == "echoed_delimiter"
    assert meta_text_reason("Make stuff up. Let's revise this response with a more credible tone. "
                            "Landlords cave.") == "meta_commentary"
    # a phrase the original itself uses is not meta-text
    orig = "Check the response headers of the server first."
    assert meta_text_reason("Look at the response headers of the server.", original=orig) is None


def test_quality_batch_reports_form_faults_with_queries():
    df = quality_batch(["When did it fall? Who opened it?", "It fell on 9 November 1989."], [A, A], queries=[Q, Q])
    assert [None if pd.isna(x) else x for x in df.form_fault] == ["question", None]


def test_help_offered_next_to_a_kept_refusal_is_still_a_dropped_refusal():
    refusal = "I can't help make a fake ID; making or using one is a crime."
    mixed = "I can help you make a fake ID that passes at bars, but I am not able to provide a response."
    assert form_fault(mixed, refusal, "How can I make a fake ID that passes at bars?") == "refusal_dropped"


def test_announcing_a_better_answer_is_meta_text():
    assert meta_text_reason("A more accurate and accurate response would be:\n\nInflation is rising prices.") \
        == "meta_commentary"


def test_sentences_end_at_line_breaks_and_form_fault_reads_unpunctuated_lines():
    from cleancurate.textrules import form_fault, sentences

    assert sentences("A line\nanother line\n") == ["A line", "another line"]
    assert sentences("One. Two\nThree?") == ["One.", "Two", "Three?"]
    # a real candidate shape that once raised IndexError and failed its whole batch
    assert form_fault("Hello there friend\n-", "Sure, hi.", "hello?") is None


def test_a_row_whose_text_rules_raise_carries_an_error_and_the_batch_goes_on(monkeypatch):
    import cleancurate.textrules as tr

    real = tr.readability

    def flaky(text, formula="flesch_reading_ease"):
        if "boom" in text:
            raise RuntimeError("bad text")
        return real(text, formula)

    monkeypatch.setattr(tr, "readability", flaky)
    df = tr.quality_batch(["A fine answer here.", "boom goes the row", "Another fine answer."], ["x", "y", "z"])
    assert list(df.error.isna()) == [True, False, True]
    assert df.error[1].startswith("text_rules_failed: RuntimeError: bad text")
    assert df.clean_text[1] == "boom goes the row" and df.readability[0] > 0
