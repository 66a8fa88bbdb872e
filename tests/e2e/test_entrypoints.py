"""The command line: config show, progress lines, errors (spark-submit and the notebook:
tests/e2e/test_curation_run.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_config_show_prints_the_resolved_config_and_hash():
    out = subprocess.run([str(BIN / "cleancurate"), "config", "show", "--config", "paper", "--set", "curation.rounds=2"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    from cleancurate import config as C

    assert out.startswith(f"# config_hash: {C.load('paper', ['curation.rounds=2']).hash}")
    assert "rounds: 2" in out and "beam_size: 3" in out


def test_progress_line_of_a_resumed_run_says_where_it_resumes():
    from cleancurate.jobs.curate import ProgressPrinter

    printer = ProgressPrinter(quiet=True)
    fresh = printer.message({"event": "start", "run_id": "r1", "config_hash": "abc", "resume_after_round": -1}, 0.0)
    resumed = printer.message({"event": "start", "run_id": "r1", "config_hash": "abc", "resume_after_round": 1}, 0.0)
    assert fresh == "run r1 (config abc)"
    assert resumed == "run r1 (config abc): resuming after round 1"
    later = printer.message({"event": "start", "run_id": "r1", "config_hash": "abc", "resume_after_round": None,
                             "increment": 2, "source": "delta /data/t at version 7"}, 0.0)
    assert later == "run r1 (config abc), increment 2 of delta /data/t at version 7"


def test_cli_errors_name_the_problem(tmp_path):
    bad = subprocess.run([str(BIN / "cleancurate"), "curate", "--config", "demo", "--set", "curation.rounds=-1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert "curation.rounds must be >= 1" in bad.stderr


# spark-submit and the notebook run the real job in tests/e2e/test_curation_run.py: a spark-submit run
# killed after round 1 and resumed by the notebook (one real-model run for both).
