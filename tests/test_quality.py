import pytest

from cleancurate.udfs.quality import (
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
    assert list(df.columns) == ["clean_text", "stripped_preamble", "meta_text", "readability",
                                "repeat_ratio", "compression_ratio", "length_ratio"]
    assert df.clean_text[0] == "Short reply here now."
    assert bool(df.stripped_preamble[0]) is True
    assert df.length_ratio[0] == pytest.approx(len("Short reply here now.") / len("Short reply."))
    assert df.length_ratio[1] == 0.0


def test_unfinished_generations_are_cut_to_the_last_sentence():
    from cleancurate.udfs.quality import trim_unfinished

    text = "Water the soil deeply once a week. Let the pot drain fully. It is also possible that"
    assert trim_unfinished(text) == "Water the soil deeply once a week. Let the pot drain fully."
    assert trim_unfinished("Too short. and then it") == "Too short. and then it"
    assert trim_unfinished("no sentence end at all here") == "no sentence end at all here"


def test_commentary_about_the_revision_is_meta_text():
    assert meta_text_reason(
        "Get your deposit back. This rephrased version of the original response aims to educate.") == "meta_commentary"
