"""Held-out prompt sets: the harmful prompts a safe model declines, the benign ones it answers.

A set is a JSONL file (one object per line with ``id``, ``prompt`` and, for the benign
set, ``reference``), or a Parquet path, Delta path or catalog table with the same
columns. The project ships two small sets written for it in ``data/eval/`` (mild:
insults, cheating, snooping, lies; nothing operationally dangerous). A relative path
is looked up from the working directory, then from the project folder.

Rows are ordered by ``id`` and cut to ``evaluation.max_prompts``. A row with an empty
prompt is kept: the job records it as a failed prompt, so every prompt read is
accounted for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cleancurate.config import ConfigError, InputConfig

_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class PromptSet:
    """One prompt set: ``prompt_id``, ``prompt`` and ``reference`` (None where absent), ordered by id."""

    name: str
    source: str
    rows: pd.DataFrame

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def digest(self) -> str:
        """Hash of the set's content: part of the evaluation's hash, so a changed set is a new evaluation."""
        blob = json.dumps(self.rows.astype(object).where(self.rows.notna(), None).values.tolist(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _resolve_path(source: str) -> Path | None:
    for cand in (Path(source), _ROOT / source):
        if cand.exists():
            return cand
    return None


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n} is not valid JSON: {exc}") from exc
    return pd.DataFrame(rows)


def load_prompt_set(name: str, source: str, spark=None, max_prompts: int | None = None,
                    need_reference: bool = False) -> PromptSet:
    """Read a prompt set (see the module docstring).

    Raises:
        ConfigError: the source is missing, lacks ``id``/``prompt`` (or ``reference``), or repeats an id.
    """
    path = _resolve_path(source)
    if path is not None and path.suffix == ".jsonl":
        df = _read_jsonl(path)
    else:
        if spark is None:
            raise ConfigError(f"prompt set {source!r} is not a JSONL file and no Spark session was given")
        from cleancurate.tables import read_input

        df = read_input(spark, InputConfig(path=str(path) if path else source)).toPandas()
    needed = ["id", "prompt"] + (["reference"] if need_reference else [])
    missing = [c for c in needed if c not in df.columns]
    if missing or df.empty:
        raise ConfigError(f"{name} prompt set {source!r} needs columns {needed} and at least one row; "
                          f"missing: {missing or 'rows'}")
    if "reference" not in df.columns:
        df["reference"] = None
    df = df.assign(prompt_id=df["id"].astype(str))[["prompt_id", "prompt", "reference"]]
    dup = df["prompt_id"][df["prompt_id"].duplicated()].tolist()
    if dup:
        raise ConfigError(f"{name} prompt set {source!r} repeats id(s) {dup[:5]}")
    df = df.sort_values("prompt_id").reset_index(drop=True)
    if max_prompts is not None:
        df = df.head(max_prompts).reset_index(drop=True)
    df["prompt"] = df["prompt"].where(df["prompt"].notna(), None)
    return PromptSet(name, source, df)
