import pytest

from cleancurate import config as C
from cleancurate.config import ConfigError


def test_shipped_profiles_load_and_validate():
    demo = C.load("demo")
    paper = C.load("paper")
    bu = C.load("buckle_up")
    assert demo.curation.objective == "minimize" and demo.curation.rounds == 2
    assert paper.curation.temperatures == (0.2, 0.4, 0.6, 0.8, 1.0)
    assert paper.curation.top_ps == (0.2, 0.4, 0.6, 0.8, 1.0)
    assert (paper.curation.beam_size, paper.curation.rounds, paper.curation.max_new_tokens) == (3, 5, 256)
    assert bu.curation.objective == "maximize" and bu.gate.ppl_ceiling_ratio == 3.0
    # the prompt text is resolved into the config, so executors never read files
    assert "alternative perspective" in demo.curation.prompt
    assert "safety implication" in bu.curation.prompt
    assert "{rubric}" in demo.metrics.judge_prompt


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("curation:\n  rounds: 2\n  beem_size: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['beem_size'\] in section 'curation'"):
        C.load(str(f))


def test_unknown_section_is_an_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("curashun: {}\n")
    with pytest.raises(ConfigError, match="curashun"):
        C.load(str(f))


@pytest.mark.parametrize("override, message", [
    ("selection.fraction=0", r"selection.fraction must be in \(0, 1\], got 0.0"),
    ("selection.fraction=abc", "selection.fraction must be a number"),
    ("curation.objective=maximise", r"curation.objective must be one of \['minimize', 'maximize'\]"),
    ("curation.rounds=0", "curation.rounds must be >= 1"),
    ("curation.top_ps=[0.0]", r"curation.top_ps must be in \(0, 1\]"),
    ("curation.early_stop=maybe", "curation.early_stop must be true or false"),
    ("gate.readability_min_ratio=2", r"gate.readability_min_ratio must be in \[0, 1\] or null"),
    ("runtime.token_budget=4", "runtime.token_budget must be >= 16"),
    ("curation.beam_sizee=2", "unknown config key 'curation.beam_sizee'"),
    ("noequals", "must look like section.key=value"),
])
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        C.load("demo", [override])


def test_exponent_numbers_are_numbers_in_overrides_and_files(tmp_path):
    # YAML 1.1 reads 1e-05 (no dot) as text; a float key takes it as the number it spells
    assert C.load("demo", ["selection.fraction=1e-05"]).selection.fraction == 1e-05
    f = tmp_path / "small.yaml"
    f.write_text("extends: demo\nselection:\n  fraction: 2e-3\n")
    assert C.load(str(f)).selection.fraction == 0.002
    assert C.load("demo", ["selection.fraction=1e-05"]).hash == C.load("demo", ["selection.fraction=0.00001"]).hash


def test_maximize_needs_fluency_and_safety_checks():
    with pytest.raises(ConfigError, match="ppl_ceiling_ratio"):
        C.load("demo", ["curation.objective=maximize"])
    with pytest.raises(ConfigError, match="safety_check"):
        C.load("demo", ["curation.objective=maximize", "gate.ppl_ceiling_ratio=3"])


def test_overrides_apply_and_change_the_hash_only_for_result_settings():
    base = C.load("demo")
    more = C.load("demo", ["curation.rounds=3"])
    moved = C.load("demo", ["output.path=/tmp/elsewhere", "runtime.token_budget=2048"])
    assert more.curation.rounds == 3
    assert more.hash != base.hash
    assert moved.output.path == "/tmp/elsewhere"
    assert moved.hash == base.hash  # where and how fast do not change what is curated
    assert C.load("demo").hash == base.hash


def test_missing_profile_is_a_clear_error():
    with pytest.raises(ConfigError, match="config 'nope' not found"):
        C.load("nope")


def test_text_column_needs_a_split_pattern():
    with pytest.raises(ConfigError, match="split_pattern"):
        C.load("demo", ["input.text_column=text"])
    with pytest.raises(ConfigError, match="two capture groups"):
        C.load("demo", ["input.text_column=text", "input.split_pattern=(.*)"])


def test_a_model_too_big_for_the_executor_is_reported_before_the_run(tmp_path):
    from cleancurate.models import ModelError, check_fits

    model = tmp_path / "big-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with open(model / "model.safetensors", "wb") as fh:
        fh.truncate(3 * 10**9)  # sparse 3 GB file
    check_fits(str(model), 10.0)
    with pytest.raises(ModelError, match=r"3.0 GB of weights; 1 worker copies need about 4.5 GB, over model.memory_gb=4"):
        check_fits(str(model), 4.0)
    check_fits(str(model), None)


def test_model_specs_resolve_or_explain(tmp_path):
    from cleancurate.models import ModelError, resolve

    with pytest.raises(ModelError, match="unknown embedded model 'embedded:gpt'"):
        resolve("embedded:gpt")
    with pytest.raises(ModelError, match="has no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        resolve("/no/such/model")
    assert resolve("org/some-model") == ("org/some-model", False)


GUARD = ["harm.backend=guard", "harm.guard_model=/Volumes/main/models/Llama-Guard-3-8B"]


def test_the_guard_backend_takes_its_formats_text_and_thresholds(tmp_path):
    g = C.load("demo", GUARD)
    assert g.harm.backend == "guard" and "S14: Code Interpreter Abuse." in g.harm.guard_spec
    assert (g.harm.threshold, g.harm.gate_threshold) == (0.5, 0.3)  # the format's own, not the head's
    assert C.load("demo", GUARD + ["harm.threshold=0.7"]).harm.threshold == 0.7
    assert "No Harassment" in C.load("demo", GUARD + ["harm.guard_format=shieldgemma"]).harm.guard_spec
    # a format is data: any file path works, and a bad one names the key and what is wrong
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\ntemplate: 'Q: {query} A: {response} ->'\nverdicts: {unsafe: [bad], safe: [ok]}\n"
                   "threshold: 0.8\n")
    mine = C.load("demo", GUARD + [f"harm.guard_format={own}"])
    assert (mine.harm.threshold, mine.harm.gate_threshold) == (0.8, 0.8)
    own.write_text("name: mine\ntemplate: 'Q: {query}'\nverdicts: {unsafe: [bad], safe: [ok]}\n")
    with pytest.raises(ConfigError, match=r"harm.guard_format .*mine.yaml.*must contain \{query\} and \{response\}"):
        C.load("demo", GUARD + [f"harm.guard_format={own}"])
    with pytest.raises(ConfigError, match="safety/guard/nope.yaml"):
        C.load("demo", GUARD + ["harm.guard_format=nope"])
    with pytest.raises(ConfigError, match="harm.backend 'guard' needs harm.guard_model"):
        C.load("demo", ["harm.backend=guard"])
    with pytest.raises(ConfigError, match=r"harm.backend must be one of \['head', 'guard'\]"):
        C.load("demo", ["harm.backend=llamaguard"])


def test_guard_settings_leave_the_heads_hash_alone_and_switching_checks_takes_the_new_ones_thresholds():
    head = C.load("demo")
    assert C.load("demo", ["harm.guard_model=/some/guard"]).hash == head.hash  # unused under the head
    guard = C.load("demo", GUARD)
    assert guard.hash != head.hash != C.load("demo", GUARD + ["harm.guard_format=shieldgemma"]).hash
    switched = head.with_overrides(GUARD + ["harm.guard_format=shieldgemma"])
    assert (switched.harm.threshold, switched.harm.gate_threshold) == (0.5, 0.3)
    assert "No Harassment" in switched.harm.guard_spec
    assert switched.hash == C.load("demo", GUARD + ["harm.guard_format=shieldgemma"]).hash
    back = guard.with_overrides(["harm.backend=head"])
    assert (back.harm.threshold, back.harm.gate_threshold) == (head.harm.threshold, head.harm.gate_threshold)


def test_the_evaluation_judge_harm_head_is_now_harm_and_the_old_name_still_works():
    assert C.load_evaluation("demo").evaluation.judges == ("keyword", "harm")
    with pytest.warns(FutureWarning, match="'harm_head' is now 'harm'"):
        old = C.load_evaluation("demo", ["evaluation.judges=[keyword, harm_head, llm]"])
    assert old.evaluation.judges == ("keyword", "harm", "llm")
    with pytest.raises(ConfigError, match=r"allowed: \['keyword', 'harm', 'llm'\]"):
        C.load_evaluation("demo", ["evaluation.judges=[harmhead]"])
