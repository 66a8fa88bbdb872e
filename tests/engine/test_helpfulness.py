"""The default CPU helpfulness signal (embedding relevance) ranks good answers above bad ones."""

import pytest

from cleancurate.engine.embedding import embed_scores_batch

TRIPLES = [
    ("How do I keep basil alive indoors?",
     "Give it a sunny window with six hours of light, water when the top of the soil is dry, and pinch off flower buds.",
     "Whatever, plants die. Buy a new one."),
    ("What's a good way to save money on groceries?",
     "Plan meals for the week, shop with a list, buy store brands and cook larger batches to freeze.",
     "I once saw a movie about a bank robbery, it was pretty good."),
    ("How do I reverse a list in Python?",
     "Use my_list.reverse() to reverse in place, or my_list[::-1] to get a reversed copy.",
     "Python is a snake. Snakes are reptiles."),
    ("Why do cats purr?",
     "Cats purr when content, but also to soothe themselves when stressed or hurt; the vibration may aid healing.",
     "Dogs are better than cats anyway, get a dog."),
    ("How long should I boil pasta?",
     "Most dried pasta takes 8 to 12 minutes in salted boiling water; check the packet and taste a minute early.",
     "Don't ask me, I only eat cereal."),
    ("What should I do before a job interview?",
     "Research the company, prepare examples of your work, practise common questions and plan your route.",
     "Just lie about everything, nobody checks."),
    ("How can I improve my sleep?",
     "Keep a regular schedule, avoid screens and caffeine late in the day, and keep your bedroom dark and cool.",
     "Sleep is for the weak, stay up and game."),
    ("How do I change a flat bike tyre?",
     "Remove the wheel, lever off the tyre, swap or patch the inner tube, reseat the tyre and pump to pressure.",
     "Bikes are dangerous, take the bus lol."),
    ("What is photosynthesis?",
     "It is how plants use sunlight, water and carbon dioxide to make sugar and release oxygen.",
     "Ask your teacher, that's what they're paid for."),
]


def _scores(encoder, weight):
    from cleancurate.config import MetricsConfig

    m = MetricsConfig()
    queries = [t[0] for t in TRIPLES] * 2
    answers = [t[1] for t in TRIPLES] + [t[2] for t in TRIPLES]
    out = embed_scores_batch(encoder.model, encoder.tokenizer, queries, answers, answers, "be safe",
                             m.helpful_anchor, m.unhelpful_anchor)
    assert out.error.isna().all()
    assert out.similarity.tolist() == pytest.approx([1.0] * len(answers), abs=1e-5)  # text vs itself
    help_ = out["relevance"] + weight * out["style"]
    n = len(TRIPLES)
    return help_[:n].tolist(), help_[n:].tolist()


@pytest.mark.model
def test_default_helpfulness_ranks_every_good_answer_above_its_bad_one(encoder):
    from cleancurate.config import MetricsConfig

    good, bad = _scores(encoder, MetricsConfig().style_weight)
    for (q, _, _), g, b in zip(TRIPLES, good, bad):
        assert g > b, q


@pytest.mark.model
def test_relevance_alone_misses_an_on_topic_dismissive_reply(encoder):
    # the measured reason for the style term: "Sleep is for the weak" is on topic,
    # so query-response cosine alone ranks it above the helpful answer
    good, bad = _scores(encoder, 0.0)
    wrong = [t[0] for t, g, b in zip(TRIPLES, good, bad) if g <= b]
    assert wrong == ["How can I improve my sleep?"]
