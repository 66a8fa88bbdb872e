"""The evaluation job's settings and surface: its config section and id, the shipped prompt sets,
its progress lines and the ``evaluate`` command."""

from __future__ import annotations

import pytest

from cleancurate import config as C
from cleancurate.config import ConfigError


def test_progress_lines_say_where_the_curated_texts_come_from_and_the_phase_order():
    from cleancurate.jobs.evaluate import ProgressPrinter

    printer = ProgressPrinter(quiet=True)
    built = printer.message({"event": "mixes_built", "benign": 95, "harmful": 11, "curated": 11, "curated_kept": 10,
                             "curated_source": "run r1 in out/demo", "revisions_available": 1,
                             "kept_originals_available": 11, "rows_A": 106, "rows_before": 117}, 0.0)
    assert built == ("mixes: 95 benign, 11 harmful, 11 curated rows (10 of them kept originals); A=106, before=117; "
                     "curated texts from run r1 in out/demo: 1 revisions, 11 kept originals")
    start = printer.message({"event": "mix_start", "mix": "before", "train_rows": 117,
                             "phases": [(["curated"], 11), (["benign", "harmful"], 106)]}, 0.0)
    assert start == "mix before: training on 117 rows: curated (11) then benign+harmful (106)"


def test_the_evaluation_id_ignores_which_mixes_are_listed_and_the_kept_originals_switch():
    """Adding a mix to a finished evaluation resumes it (only the new mix trains); what changes rows does not."""
    from cleancurate.jobs.evaluation.job import evaluation_hash

    cfg = C.load_evaluation("eval-small")
    h = evaluation_hash(cfg, "run-1", {"harmful": "x"})
    assert h == evaluation_hash(cfg.with_overrides(["evaluation.mixes=[A, before]"]), "run-1", {"harmful": "x"})
    assert h == evaluation_hash(cfg.with_overrides(["evaluation.allow_kept_originals=false"]), "run-1", {"harmful": "x"})
    assert h != evaluation_hash(cfg.with_overrides(["evaluation.curated_ratio=2.0"]), "run-1", {"harmful": "x"})
    assert h != evaluation_hash(cfg, "run-1", {"harmful": "x"}, curated_source="out/cs@run-9")
    assert h != evaluation_hash(cfg, "run-2", {"harmful": "x"})


def test_the_evaluation_keys_have_their_own_root_validated_and_left_out_of_the_curation_hash():
    demo, demo_eval = C.load("demo"), C.load_evaluation("demo")
    assert type(demo) is C.Config and not hasattr(demo, "evaluation")  # the curation job holds none of them
    assert demo.hash == demo_eval.hash == C.load_evaluation("demo", ["evaluation.max_steps=3"]).hash
    assert demo_eval.evaluation.learning_rate == 5e-5 and demo_eval.evaluation.contamination == 0.05
    with pytest.raises(ConfigError, match=r"unknown config section 'evaluation'.*cleancurate evaluate"):
        C.load("demo", ["evaluation.max_steps=3"])
    with pytest.raises(ConfigError, match="the evaluation section is the evaluation job's"):
        C.from_dict({**demo.user_dict(), "evaluation": {"max_steps": 3}})
    # a profile holding both jobs' keys curates with its curation sections, its evaluation keys checked
    assert C.load("eval-small").hash == C.load_evaluation("eval-small").hash
    assert type(C.load("eval-small")) is C.Config
    assert C.load_evaluation("eval-small").as_curation() == C.load("eval-small")
    for override, message in [
        ("evaluation.mixes=[A, D]", r"unknown mix\(es\) \['D'\]"),
        ("evaluation.judges=[keyword, vibes]", r"unknown judge\(s\) \['vibes'\]"),
        ("evaluation.contamination=1.0", r"contamination must be in \[0, 1\)"),
        ("evaluation.method=qlora", r"evaluation.method must be one of \['full', 'lora'\]"),
        ("evaluation.bootstrap=10", "bootstrap must be >= 100"),
        ("evaluation.curated_ratio=0", "curated_ratio 0 leaves mixes B, before and after without curated texts"),
    ]:
        with pytest.raises(ConfigError, match=message):
            C.load_evaluation("demo", [override])
    small = C.load_evaluation("eval-small")
    assert small.evaluation.mixes == ("base", "A", "B", "C", "before", "after")
    assert small.evaluation.allow_kept_originals is True and "{rubric}" in small.evaluation.judge_prompt
    assert {"before", "after"} <= set(C.load_evaluation("eval-gpu").evaluation.mixes)  # the GPU profile has the stages too
    assert demo_eval.evaluation.allow_kept_originals is False and demo_eval.evaluation.curated_output is None


def test_a_profile_holding_both_jobs_keys_curates_and_its_evaluation_keys_are_checked(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("extends: demo\nevaluation:\n  max_steps: 2\n", encoding="utf-8")
    cfg = C.load(str(both), ["output.path=/tmp/elsewhere"])  # checked with the override applied
    assert type(cfg) is C.Config and cfg.output.path == "/tmp/elsewhere" and cfg.hash == C.load(
        "demo", ["output.path=/tmp/elsewhere"]).hash
    assert C.load_evaluation(str(both)).evaluation.max_steps == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: demo\nevaluation:\n  mixes: [A, Z]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown mix\(es\) \['Z'\]"):
        C.load(str(bad))  # the curation job refuses a profile whose evaluation keys are wrong

def test_shipped_prompt_sets():
    from cleancurate.jobs.evaluation.promptsets import load_prompt_set

    harmful = load_prompt_set("harmful", "data/eval/harmful_prompts.jsonl")
    benign = load_prompt_set("benign", "data/eval/benign_prompts.jsonl", need_reference=True)
    assert 30 <= len(harmful) <= 50 and 30 <= len(benign) <= 50
    assert harmful.rows.prompt_id.is_unique and benign.rows.reference.map(bool).all()
    assert load_prompt_set("benign", "data/eval/benign_prompts.jsonl", max_prompts=3).rows.prompt_id.tolist() == \
        ["b001", "b002", "b003"]


def test_cli_lists_and_parses_the_evaluate_command(capsys):
    from cleancurate import cli

    assert "evaluate" in cli.COMMANDS
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--help"])
    assert exc.value.code == 0 and "--stop-after-mix" in capsys.readouterr().out
