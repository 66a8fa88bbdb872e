"""The refusal detector (cleancurate.refusal): real refusal forms, helpful answers with negations, real labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cleancurate.refusal import is_refusal, refusal_match
from cleancurate import textrules

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text", [
    "I'm not able to help with that.",
    "I can't help with creating malware.",
    "I won't be able to assist with this request.",
    "I'm sorry, but I cannot provide instructions for picking someone else's lock.",
    "As an AI language model, I cannot write content that demeans a group of people.",
    "I apologize, but I cannot fulfill that request.",
    "I cannot fulfill your request. I'm just an AI, it's not within my programming or ethical guidelines to "
    "provide information on how to hurt someone.",
    "It is not appropriate or ethical to share someone's private home address without their consent.",
    "I must advise against trying this at home: the fumes are toxic.",
    "I\u2019m sorry, but I can\u2019t assist with that.",  # curly apostrophes
    "Unfortunately, I cannot and will not provide that information.",
    "I'm really sorry that you're feeling this way, but I'm unable to provide the help that you need. It's "
    "really important to talk things over with someone who can, such as a mental health professional.",
    "I am an AI language model and do not condone violence of any kind. If you are in danger, call the police.",
    "That's not something I can help with, but I'm happy to talk about something else.",
    "I must respectfully decline.",
    # the decline may follow a sentence of context
    "Hacking into an account you do not own is a crime. I can't help with that.",
])
def test_real_refusal_forms_are_refusals(text):
    assert is_refusal(text), text


@pytest.mark.parametrize("text", [
    "You cannot mix bleach and ammonia: it releases chloramine gas. Use one cleaner, rinse, then use the other.",
    "I can't stress enough how important sleep is. Here are five tips: keep a schedule, dim the lights, ...",
    "I'm not a doctor, but here is what usually helps with a cold: rest, fluids and paracetamol for the fever.",
    "I can't help but notice that your loop never increments i. Move `i += 1` inside the loop.",
    "I cannot recommend this book highly enough: it explains recursion step by step.",
    "I can't provide an exact number, but roughly 71% of the Earth's surface is water.",
    "In Java we cannot access a private field from another class; add a getter instead.",
    "It is not safe to run the generator indoors, because carbon monoxide builds up. Put it 20 feet outside.",
    "I'm sorry, but I don't understand the question. Could you say which version you use?",
    "As an AI, I don't have personal preferences, but the most popular choices are Python and Go.",
    "What should I do if I can't provide proof of income? Ask your employer for a letter.",
    "How do I politely decline a wedding invitation? Send a short note and a card.",
    # a long helpful answer with one cautionary sentence late in it
    "Preheat the oven to 180 C. Cream the butter and sugar. Beat in the eggs one at a time. Fold in the "
    "flour. Bake for 25 minutes. I cannot guarantee it rises every time, but it usually does.",
    # an opening decline followed by the help itself
    "I can't give personal medical advice, but here are the general guidelines: adults should take no more "
    "than 4 g of paracetamol a day.",
])
def test_helpful_answers_with_negations_are_not_refusals(text):
    assert not is_refusal(text), (text, refusal_match(text))


def test_a_decline_after_the_opening_sentences_is_not_a_refusal():
    help_first = ("Open Settings. Choose Accounts. Click Reset password. Enter the code from the email. "
                  "Choose a new password. I can't help with accounts that are not yours, of course.")
    assert not is_refusal(help_first)
    assert is_refusal("I can't help with accounts that are not yours. " + help_first)


def test_the_gate_reads_the_same_detector():
    assert textrules.is_refusal is is_refusal
    query = "How do I get into my neighbour's wifi?"
    refusal = ("I cannot fulfill your request. I'm just an AI, it's not within my programming or ethical "
               "guidelines to help you access a network without permission.")
    assert textrules.form_fault("Scan for the network, then try the router's default admin password.",
                                refusal, query) == "refusal_dropped"
    assert textrules.form_fault("I'm not able to help with getting onto a network that isn't yours without "
                                "permission; ask your neighbour for the password.", refusal, query) != "refusal_dropped"
    # help offered next to a kept refusal is still a dropped refusal (_COMPLIANCE in form_fault)
    assert textrules.form_fault("I can't help with that, but sure, here's how: try the default password.",
                                refusal, query) == "refusal_dropped"
    assert textrules.clause_coverage("Ask your neighbour.", refusal, query) == (1.0, None)


def test_the_library_module_needs_neither_spark_nor_torch():
    code = ("import json, sys, cleancurate.refusal; print(json.dumps(sorted(m for m in "
            "('pyspark', 'torch', 'pandas', 'cleancurate.udfs', 'cleancurate.jobs') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_held_out_xstest_recall_and_precision():
    """On XSTest prompts held out from writing the patterns (folds 3-4), against the human labels."""
    from bench.real_data import XSTEST, xstest_rows
    from bench.refusal import HELD_OUT_FOLDS, confusion, labeled, old_is_refusal, split_rows

    if not XSTEST.exists():
        pytest.skip(f"{XSTEST} is not here")
    held = labeled(split_rows(xstest_rows(), HELD_OUT_FOLDS))
    assert len(held) > 300 and sum(r["refusal"] for r in held) > 100
    got = confusion(held, is_refusal)
    assert got["recall"]["value"] >= 0.8, got
    assert got["precision"]["value"] >= 0.9, got
    # the measure tells detectors apart: the regex this one replaced misses a third of the refusals
    assert confusion(held, old_is_refusal)["recall"]["value"] < 0.8
