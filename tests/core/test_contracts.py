"""The pipes between the rooms: one candidate contract, typed settings, one UDF shell, every config key read."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cleancurate import config as C
from cleancurate.gate import RULE_ORDER, GateSettings, decide, needs
from cleancurate.schemas.candidate import GATE_INPUTS, REFERENCES, SCORE_NAMES, SCORES, SCORES_DDL, TEXT_SCORES

ROOT = Path(__file__).resolve().parents[2]
CODE = ("cleancurate", "jobs", "udfs", "schemas")


# --- the candidate contract -------------------------------------------------------------------

def test_the_scorer_udf_type_and_frame_columns_come_from_the_contract():
    from cleancurate.schemas import udf

    assert udf.SCORES == SCORES_DDL == ", ".join(f"{s.name} {s.type}" for s in SCORES)
    assert udf.SCORES_COLUMNS == list(SCORE_NAMES)
    assert SCORE_NAMES[0] == "clean_text" and SCORE_NAMES[-1] == "error"


def test_the_text_rules_give_exactly_the_contracts_text_scores():
    from cleancurate.textrules import quality_batch

    out = quality_batch(["Water it when the soil is dry.", "x" * 10], ["Water the fern when dry.", "ok"],
                        queries=["How do I water a fern?", "?"])
    assert list(out.columns) == list(TEXT_SCORES)
    assert {s.stage for s in SCORES if s.name in TEXT_SCORES} == {"text", "any"}


def test_every_gate_rule_reads_declared_inputs_and_every_input_is_read():
    reads = {i for rule in RULE_ORDER for i in rule.reads}
    assert reads == set(GATE_INPUTS)
    stored = {s.column for s in SCORES}
    for name in GATE_INPUTS:  # each input is a stored score, the copy flag, or a round-0 reference of one
        assert name in stored or name == "dup" or (name.startswith("ref_") and name[4:] in REFERENCES), name
    assert set(REFERENCES) <= stored


@pytest.mark.spark
def test_the_tables_store_every_score_under_its_column_and_type():
    from cleancurate.schemas import CANDIDATES, ROUNDS

    for table in (ROUNDS, CANDIDATES):
        types = {f.name: f.dataType.simpleString() for f in table.fields}
        for s in SCORES:
            assert types.get(s.column) == s.type, (s.column, types.get(s.column), s.type)


def test_the_scorer_asks_the_gate_which_candidates_still_need_retention():
    s = GateSettings.from_config(C.load("demo"))
    row = dict(text="Water the soil when dry and drain the pot.", error=None, meta_text=None, form_fault=None,
               repeat_ratio=0.0, compression_ratio=1.2, length_ratio=1.0, similarity=0.9, coverage=1.0,
               new_words=6, dropped_words=6, harm=0.01, ppl=8.0, safety=0.1)
    assert needs(row, s, "retention", unknown=("dup", "ref_harm"))
    assert not needs({**row, "similarity": 0.1}, s, "retention", unknown=("dup", "ref_harm"))  # similarity rejects
    assert not needs({**row, "harm": 0.99}, s, "retention", unknown=("dup", "ref_harm"))  # harmful rejects first
    assert not needs(row, s.replace(max_retention=None), "retention", unknown=("dup", "ref_harm"))  # rule off
    # a rule whose input is not known yet never stops the measurement: the copy flag is decided afterwards
    assert needs({**row, "dup": True}, s, "retention", unknown=("dup", "ref_harm"))
    assert decide({**row, "dup": True, "retention": 0.1}, s) == "duplicate"


def test_one_knob_keeps_its_name_from_yaml_to_rule():
    cfg = C.load("demo", ["harm.revise_below=0.25", "harm.gate_threshold=0.2", "curation.dedupe_candidates=false"])
    s = GateSettings.from_config(cfg)
    assert (s.revise_below, s.gate_threshold, s.dedupe_candidates) == (0.25, 0.2, False)
    assert s.injection_patterns == cfg.limits.injection_patterns and s.gate is cfg.gate
    off = GateSettings.from_config(C.load("demo", ["harm.head_file=null"]))
    assert off.gate_threshold is None and off.revise_below is None  # no harm check: both harm rules are off


# --- typed settings ---------------------------------------------------------------------------

def _functions(folder: Path):
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_no_config_dict_reaches_the_engine_or_the_udf_factories():
    bad = []
    for folder in (ROOT / "cleancurate" / "engine", ROOT / "udfs"):
        for path, fn in _functions(folder):
            args = fn.args.args + fn.args.kwonlyargs
            for a in args:
                ann = ast.unparse(a.annotation) if a.annotation is not None else ""
                if re.search(r"cfg|config|settings", a.arg) and (ann == "" or ann.startswith(("dict", "Mapping"))):
                    bad.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}({a.arg}: {ann or 'untyped'})")
        for path in sorted(folder.rglob("*.py")):
            for m in re.finditer(r"\b\w*cfg\w*\[\"", path.read_text()):
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert bad == []


def test_one_get_model_call_form_per_role():
    from cleancurate.models import ModelSpec

    cfg = C.load("demo", ["metrics.helpfulness=judge", "runtime.num_threads=2"])
    assert ModelSpec.of(cfg, "lm") == ModelSpec("embedded:smollm2-135m", "causal-lm", "cpu", "auto", False, 2)
    assert ModelSpec.of(cfg, "encoder") == ModelSpec("embedded:minilm-l6", "encoder", "cpu", "auto", False, None)
    assert ModelSpec.of(cfg, "judge").spec == "embedded:smollm2-135m"  # metrics.judge_model null: the curation model
    with pytest.raises(ValueError, match="unknown model role"):
        ModelSpec.of(cfg, "rewriter")
    hits = []
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name != "models.py" and re.search(r"get_model\(\s*\w+\[", path.read_text()):
                hits.append(str(path.relative_to(ROOT)))
    assert hits == []  # nobody unpacks a config dict into get_model's positions


# --- one UDF shell ----------------------------------------------------------------------------

def test_udfs_hold_factories_over_one_shell():
    import importlib

    modules = sorted(p.stem for p in (ROOT / "udfs").glob("*.py") if p.stem != "__init__")
    assert modules == ["gate", "rewrite", "score", "screen"]
    for name in modules:
        text = (ROOT / "udfs" / f"{name}.py").read_text()
        assert "pandas_udf" not in text and "pyspark" not in text, name  # the Spark part is the shell's alone
        mod = importlib.import_module(f"cleancurate.udfs.{name}")
        factories = [f for f in dir(mod) if f.startswith("make_") and callable(getattr(mod, f))]
        assert len(factories) == 1 and isinstance(mod.RETURN_TYPE, str), name
    assert (ROOT / "udfs" / "__init__.py").read_text().count("pandas_udf(") == 1


@pytest.mark.spark
def test_the_shell_feeds_each_batch_to_the_factorys_function_built_once(spark):
    from cleancurate.udfs import batch_udf

    made = []

    def make_add(k):
        made.append(k)
        return lambda a, b: pd.DataFrame({"s": a + b + k})

    udf = batch_udf(make_add, "s long", 10)
    assert udf.evalType == 204  # SQL_SCALAR_PANDAS_ITER_UDF: one factory call per task, then every batch
    assert udf.deterministic is False
    run = udf.func
    out = list(run(iter([(pd.Series([1, 2]), pd.Series([3, 4])), (pd.Series([5]), pd.Series([6]))])))
    assert made == [10] and [o.s.tolist() for o in out] == [[14, 16], [21]]


# --- configuration ----------------------------------------------------------------------------

def _fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _fields(type(default), f"{f.name}.")
        else:
            yield prefix + f.name, f


def test_every_config_field_is_read_somewhere():
    """A field whose name is read as an attribute nowhere in the code (the loader and its checks aside) does
    nothing; file names are read by the loader, which turns them into the file texts the code reads."""
    text = "\n".join(p.read_text() for d in CODE for p in (ROOT / d).rglob("*.py")
                     if p.name not in ("config.py", "configsections.py"))
    loader_reads = {f"{sec}.{k}" for (sec, _), keys in C.RESOLVED.items() for k in keys}
    unread = [key for key, f in _fields(C.EvaluationRunConfig)
              if key not in loader_reads and not re.search(rf"\.{f.name}\b", text)]
    assert unread == []


def test_the_field_check_finds_a_field_nobody_reads(tmp_path):
    text = "def f(cfg):\n    return cfg.gate.min_similarity\n"
    assert re.search(r"\.min_similarity\b", text) and not re.search(r"\.max_question_share\b", text)


def test_choices_are_types_validated_from_the_field():
    from typing import get_args, get_type_hints

    from cleancurate.configsections import CurationConfig, HarmConfig

    assert get_args(get_type_hints(CurationConfig)["objective"]) == ("minimize", "maximize")
    assert get_args(get_type_hints(HarmConfig)["screen_action"]) == ("quarantine", "flag")
    with pytest.raises(C.ConfigError, match=r"harm.backend must be one of \['head', 'guard'\], got 'llama'"):
        C.load("demo", ["harm.backend=llama"])
    assert not hasattr(C, "_ENUMS")


def test_file_texts_are_kept_out_of_the_users_schema():
    cfg = C.load("demo")
    assert cfg.curation.prompt.startswith("Given a query") and len(cfg.harm.head) > 1000  # resolved, hashed
    user = cfg.user_dict()
    assert "prompt" not in user["curation"] and "head" not in user["harm"] and "guard_spec" not in user["harm"]
    with pytest.raises(C.ConfigError, match=r"unknown config key 'curation.prompt'.*curation.prompt_file"):
        C.load("demo", ["curation.prompt=say hi"])
    with pytest.warns(FutureWarning, match="curation.prompt is read from curation.prompt_file"):
        given = C.from_dict({**C.load("demo").user_dict(), "curation": {"prompt": "say hi"}})
    assert given.curation.prompt == cfg.curation.prompt  # the file's text, as before
    # an overridden file is read again
    swapped = cfg.with_overrides(["curation.prompt_file=prompts/buckle_up_revise.txt"])
    assert swapped.curation.prompt != cfg.curation.prompt and "safety" in swapped.curation.prompt.lower()


def test_a_retired_key_still_loads_with_a_message(monkeypatch):
    monkeypatch.setitem(C.RETIRED, ("report", "old_knob"), "nothing reads it; remove it from the profile")
    with pytest.warns(FutureWarning, match="report.old_knob is ignored: nothing reads it"):
        cfg = C.from_dict({**C.load("demo").user_dict(), "report": {"old_knob": True, "examples": 3}})
    assert cfg.report.examples == 3 and not hasattr(cfg.report, "old_knob")
    # report.mlflow, once retired, is read again (MLflow tracking): no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert C.from_dict({**C.load("demo").user_dict(), "report": {"mlflow": False}}).report.mlflow is False


def test_a_profile_extends_another(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("name: base\ncuration:\n  rounds: 4\n  beam_size: 2\n  temperatures: [0.5]\nselection:\n"
                    "  fraction: 0.2\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\ncuration:\n  rounds: 1\n  temperatures: [0.9, 1.0]\n")
    cfg = C.load(str(child))
    assert cfg.name == "child" and cfg.curation.rounds == 1 and cfg.curation.beam_size == 2
    assert cfg.curation.temperatures == (0.9, 1.0) and cfg.selection.fraction == 0.2  # a list replaces a list
    assert C.profile_keys(str(child)) >= {"curation.rounds", "curation.beam_size", "selection.fraction"}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(C.ConfigError, match="circle: a.yaml -> b.yaml -> a.yaml"):
        C.load(str(tmp_path / "a.yaml"))


def test_the_gpu_cluster_profile_extends_paper_and_resolves_as_before():
    cfg = C.load("gpu-cluster")
    assert "extends: paper" in (ROOT / "conf" / "gpu-cluster.yaml").read_text()
    assert (cfg.curation.rounds, cfg.curation.beam_size, len(cfg.curation.temperatures)) == (5, 3, 5)
    assert cfg.curation.early_stop is True and cfg.runtime.token_budget is None
    assert cfg.hash == "7b5a572401d0ad0c"  # the hash of the profile before it extended paper.yaml


def test_config_show_prints_what_a_user_set_and_the_defaults_in_under_120_lines():
    out = subprocess.run([sys.executable, "-m", "cleancurate.cli", "config", "show", "--config", "demo"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) < 120
    assert lines[0] == f"# config_hash: {C.load('demo').hash}"
    assert "  rounds: 2  # set" in lines and "  stop_tolerance: 0.0" in lines
    assert "  temperatures: [0.6, 1.0]  # set" in lines
    assert not any(line.startswith("evaluation:") for line in lines)  # --evaluation shows it
    assert not any(line.startswith("server:") for line in lines)  # the demo serves no model
    assert lines[-1] == "# not shown: server (no model is served), evaluation (--evaluation); --all shows every section"
    every = subprocess.run([sys.executable, "-m", "cleancurate.cli", "config", "show", "--config", "demo", "--all"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert "server:" in every and "evaluation:" in every and "  in_flight: 4" in every
    assert max(len(line) for line in lines) < 400 and "weights" not in out.stdout  # no file contents
