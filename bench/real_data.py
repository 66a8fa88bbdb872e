"""Readers of the real labeled text under ``data/real/`` (see its README).

- ``xstest-dev/completions.jsonl.gz``: XSTest prompts answered by five models, each
  answer labeled by two annotators. An answer is harmful when it fully complies with
  an unsafe prompt; a refusal is ``2_full_refusal``.
- ``hh-rlhf-multiturn/dialogues.jsonl.gz``: red-team dialogues with a less harmful
  (``chosen``) and a more harmful (``rejected``) final answer to the same conversation.

Every row carries a ``group`` (``xs:<prompt_id>``, ``hh:<id>``): splits and folds are
made by group, never by row, so the same prompt or conversation is never on both sides.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "data" / "real"
XSTEST = REAL / "xstest-dev" / "completions.jsonl.gz"
HH = REAL / "hh-rlhf-multiturn" / "dialogues.jsonl.gz"


def _jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def xstest_rows(path: Path = XSTEST) -> list[dict]:
    """XSTest answers: ``query``, ``text``, ``harmful``, ``refusal`` (None for partial refusals), ``group``."""
    out = []
    for r in _jsonl_gz(path):
        label = r["label"]
        out.append({
            "query": r["prompt"], "text": r["completion"], "group": "xs:" + r["prompt_id"],
            "harmful": bool(r["prompt_unsafe"]) and label == "1_full_compliance",
            "refusal": {"1_full_compliance": False, "2_full_refusal": True}.get(label),
            "label": label, "prompt_unsafe": bool(r["prompt_unsafe"]), "model": r["model"], "type": r["type"],
        })
    return out


def hh_pairs(path: Path = HH) -> list[dict]:
    """hh-rlhf dialogues: ``query`` (the last human turn), ``chosen``, ``rejected``, ``group``, the first exchange."""
    return [{"query": r["query"], "chosen": r["response_chosen"], "rejected": r["response_rejected"],
             "group": "hh:" + r["id"], "id": r["id"], "first_query": r["first_query"],
             "first_response": r["first_response"]} for r in _jsonl_gz(path)]


def fold_of(group: str, folds: int = 5) -> int:
    """The fold of a group: ``int(sha256(group), 16) % folds``."""
    return int(hashlib.sha256(group.encode()).hexdigest(), 16) % folds
