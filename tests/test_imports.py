"""The batch functions and the GPU benchmark import on a machine without Spark (torch only)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UDF_MODULES = sorted(f"cleancurate.udfs.{p.stem}" for p in (ROOT / "udfs").glob("*.py") if p.stem != "__init__")

_PROBE = r"""
import importlib, json, sys

class NoSpark:
    # a machine without pyspark: every import of it fails
    def find_spec(self, name, path=None, target=None):
        if name == "pyspark" or name.startswith("pyspark."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NoSpark())
result = {"imported": [], "failed": {}}
for name in MODULES:
    try:
        importlib.import_module(name)
        result["imported"].append(name)
    except Exception as exc:
        result["failed"][name] = f"{type(exc).__name__}: {exc}"
import cleancurate.schemas as schemas
result["generation_type"] = schemas.GENERATION
try:
    schemas.TABLES
    result["tables"] = "loaded"
except ImportError:
    result["tables"] = "ImportError"
result["pyspark_loaded"] = any(m == "pyspark" or m.startswith("pyspark.") for m in sys.modules)
print(json.dumps(result))
"""


def test_udf_modules_and_gpu_bench_import_without_pyspark():
    modules = UDF_MODULES + ["bench.gpu"]
    code = _PROBE.replace("MODULES", repr(modules))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    assert sorted(result["imported"]) == sorted(modules)
    assert "cleancurate.udfs.rewrite" in result["imported"] and len(UDF_MODULES) >= 8
    assert result["generation_type"] == "text string, gen_tokens int, error string"
    # the table schemas need pyspark and load only when asked for
    assert result["tables"] == "ImportError"
    assert result["pyspark_loaded"] is False


def test_table_schemas_still_load_lazily_with_pyspark():
    from cleancurate.schemas import RUNS, TABLES

    assert TABLES["runs"] is RUNS
    assert RUNS.fieldNames()[0] == "run_id"


# --- layers: jobs -> udfs -> schemas -> library; imports point downwards only ----------------------

#: folder -> packages its modules must not import
LAYERS = {
    "cleancurate": ("cleancurate.jobs", "cleancurate.udfs"),
    "schemas": ("cleancurate.jobs", "cleancurate.udfs"),
    "udfs": ("cleancurate.jobs",),
}
#: the public entry points of the library, which import a job when called
FACADES = {"cleancurate/__init__.py", "cleancurate/cli.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (imports inside functions included)."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def layer_violations() -> list[str]:
    bad = []
    for folder, forbidden in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in FACADES:
                continue
            for name in sorted(imported_modules(path)):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{rel} imports {name}")
    return bad


def test_library_udfs_and_schemas_never_import_the_layers_above():
    assert layer_violations() == []
    # the check sees what it is meant to see: the stages import the UDFs, the library does not
    stages = imported_modules(ROOT / "jobs" / "curation" / "stages.py")
    assert "cleancurate.udfs.rewrite" in stages and "cleancurate.jobs.curation.validate" in stages


def test_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    bad = tmp_path / "udfs"
    bad.mkdir()
    (bad / "leak.py").write_text("def f():\n    from cleancurate.jobs.curation import curate\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert layer_violations() == ["udfs/leak.py imports cleancurate.jobs.curation",
                                  "udfs/leak.py imports cleancurate.jobs.curation.curate"]


def test_public_entry_points_reach_the_jobs():
    import cleancurate
    from cleancurate.jobs.curation import curate
    from cleancurate.jobs.evaluation import EvaluationResult, evaluate

    assert cleancurate.EvaluationResult is EvaluationResult
    assert callable(cleancurate.curate) and callable(cleancurate.evaluate)
    assert curate.__module__ == "cleancurate.jobs.curation.stages"
    assert evaluate.__module__ == "cleancurate.jobs.evaluation.job"
