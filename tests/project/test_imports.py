"""Layers and imports: the engine and the UDF factories import without Spark, imports point
downwards, and no two modules import each other, even through imports inside functions."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: the UDF shell and its factories (the shell imports pyspark only when it builds a UDF)
UDF_MODULES = ["cleancurate.udfs"] + sorted(
    f"cleancurate.udfs.{p.stem}" for p in (ROOT / "udfs").glob("*.py") if p.stem != "__init__")
ENGINE_MODULES = ["cleancurate.engine"] + sorted(
    f"cleancurate.engine.{p.stem}" for p in (ROOT / "cleancurate" / "engine").glob("*.py") if p.stem != "__init__")

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


def test_engine_udf_modules_and_gpu_bench_import_without_pyspark():
    modules = ENGINE_MODULES + ["cleancurate.textrules"] + UDF_MODULES + ["bench.gpu", "bench.gpu_guard"]
    code = _PROBE.replace("MODULES", repr(modules))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    assert sorted(result["imported"]) == sorted(modules)
    assert "cleancurate.udfs.rewrite" in result["imported"] and len(UDF_MODULES) >= 5  # shell + 4 factories
    assert "cleancurate.engine.generate" in result["imported"] and len(ENGINE_MODULES) >= 13
    assert "cleancurate.engine.guard" in result["imported"]  # the guard harm backend runs on bare GPU workers too
    assert result["generation_type"] == "text string, gen_tokens int, error string"
    # the table schemas need pyspark and load only when asked for
    assert result["tables"] == "ImportError"
    assert result["pyspark_loaded"] is False


def test_table_schemas_still_load_lazily_with_pyspark():
    from cleancurate.schemas import RUNS, TABLES

    assert TABLES["runs"] is RUNS
    assert RUNS.fieldNames()[0] == "run_id"


# --- layers: jobs -> udfs -> schemas -> library (with the engine); imports point downwards only ---

#: folder -> packages its modules must not import
LAYERS = {
    "cleancurate": ("cleancurate.jobs", "cleancurate.udfs"),
    # the model engine runs in Spark workers, the evaluation driver and benchmarks alike
    "cleancurate/engine": ("cleancurate.jobs", "cleancurate.udfs", "pyspark"),
    "schemas": ("cleancurate.jobs", "cleancurate.udfs"),
    "udfs": ("cleancurate.jobs",),
    # the evaluation job runs models through the engine, not through the Spark layer
    "jobs/evaluation": ("cleancurate.udfs",),
    "bench": ("cleancurate.udfs",),
}
#: the public entry points of the library, which import a job when called
FACADES = {"cleancurate/__init__.py", "cleancurate/cli.py"}
#: file -> the forbidden imports it may make anyway: the job's scorer UDF is what these benchmarks measure
EXEMPT = {
    "bench/scoring.py": ("cleancurate.udfs",),
    "bench/memory.py": ("cleancurate.udfs",),
}


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


def _under(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def layer_violations() -> list[str]:
    bad = []
    for folder, forbidden in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in FACADES:
                continue
            for name in sorted(imported_modules(path)):
                if _under(name, forbidden) and not _under(name, EXEMPT.get(rel, ())):
                    bad.append(f"{rel} imports {name}")
    return list(dict.fromkeys(bad))  # a file in two layer folders (library and engine) is listed once


def test_library_udfs_and_schemas_never_import_the_layers_above():
    assert layer_violations() == []
    # the check sees what it is meant to see: the stages import the UDFs, the library does not
    stages = set().union(*(imported_modules(p) for p in (ROOT / "jobs" / "curation").glob("*.py")))
    assert "cleancurate.udfs.rewrite" in stages and "cleancurate.jobs.curation.validate" in stages
    # the evaluation job and the benchmarks run models through the engine
    assert "cleancurate.engine.generate" in imported_modules(ROOT / "jobs" / "evaluation" / "answer.py")
    assert "cleancurate.engine.harm" in imported_modules(ROOT / "jobs" / "evaluation" / "job.py")
    assert "cleancurate.engine.generate" in imported_modules(ROOT / "bench" / "gpu.py")
    assert "cleancurate.engine.guard" in imported_modules(ROOT / "bench" / "gpu_guard.py")
    # the screen, the scorer and the evaluation's harm judge reach the guard through the one harm check
    for user in ("udfs/screen.py", "cleancurate/engine/scorer.py", "jobs/evaluation/job.py"):
        assert "cleancurate.engine.harm.check_batch" in imported_modules(ROOT / user), user


def test_layer_check_catches_the_engine_or_the_evaluation_reaching_into_spark(tmp_path, monkeypatch):
    (tmp_path / "cleancurate" / "engine").mkdir(parents=True)
    (tmp_path / "cleancurate" / "engine" / "leak.py").write_text(
        "def f():\n    from pyspark.sql.functions import pandas_udf\n    from cleancurate.udfs import score\n")
    (tmp_path / "jobs" / "evaluation").mkdir(parents=True)
    (tmp_path / "jobs" / "evaluation" / "leak.py").write_text("from cleancurate.udfs.rewrite import make_rewrite_fn\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert layer_violations() == [
        "cleancurate/engine/leak.py imports cleancurate.udfs",
        "cleancurate/engine/leak.py imports cleancurate.udfs.score",
        "cleancurate/engine/leak.py imports pyspark.sql.functions",
        "cleancurate/engine/leak.py imports pyspark.sql.functions.pandas_udf",
        "jobs/evaluation/leak.py imports cleancurate.udfs.rewrite",
        "jobs/evaluation/leak.py imports cleancurate.udfs.rewrite.make_rewrite_fn",
    ]


def test_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    bad = tmp_path / "udfs"
    bad.mkdir()
    (bad / "leak.py").write_text("def f():\n    from cleancurate.jobs.curation import curate\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert layer_violations() == ["udfs/leak.py imports cleancurate.jobs.curation",
                                  "udfs/leak.py imports cleancurate.jobs.curation.curate"]


# --- no import circle: the module graph, imports inside functions included, is acyclic ----------

#: package -> folder, as pyproject.toml's package-dir lays them out; bench is a package of its own
PACKAGE_DIRS = {"cleancurate": "cleancurate", "cleancurate.jobs": "jobs", "cleancurate.udfs": "udfs",
                "cleancurate.schemas": "schemas", "bench": "bench"}


def project_modules() -> dict[str, Path]:
    """Every module of the project, by the name it is imported as."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")) if base.is_dir() else ():
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, at any depth (imports inside functions included).

    ``from a import b`` points at ``a.b`` when that is a module, else at ``a``; relative imports
    are resolved. The package ``__init__`` that Python runs on the way to a submodule is not an
    edge: only the module a statement names is.
    """
    import ast

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            targets.update(t for t in found if t in modules and t != name)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other by imports (strongly connected, more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_no_import_circle_among_the_project_modules():
    modules = project_modules()
    graph = import_graph(modules)
    assert import_cycles(graph) == []
    # the graph holds what it should: every package, and imports inside functions
    assert {"cleancurate.engine.generate", "cleancurate.udfs.rewrite", "cleancurate.jobs.evaluation.job",
            "cleancurate.schemas.udf", "bench.gpu"} <= set(modules)
    assert "cleancurate.engine.generate" in graph["cleancurate.udfs.rewrite"]
    assert "cleancurate.engine.harm" in graph["cleancurate.jobs.evaluation.job"]  # imported inside a method
    assert "cleancurate.jobs.evaluation.job" in graph["cleancurate"]  # the facade, inside evaluate()
    assert "cleancurate.engine.guard" in graph["cleancurate.engine.harm"]  # imported inside functions
    assert "bench.gpu_guard" in graph["bench.gpu"] and "bench.gpu" not in graph["bench.gpu_guard"]


def test_circle_check_catches_a_planted_circle(tmp_path, monkeypatch):
    engine = tmp_path / "cleancurate" / "engine"
    engine.mkdir(parents=True)
    (tmp_path / "cleancurate" / "__init__.py").write_text("")
    (engine / "__init__.py").write_text("")
    (engine / "a.py").write_text("from cleancurate.engine.b import g\n\n\ndef f():\n    return g()\n")
    # the way back hides inside a function, as the rewrite / vLLM backend circle did
    (engine / "b.py").write_text("def g():\n    from cleancurate.engine import a\n\n    return a\n")
    (engine / "c.py").write_text("from . import a\nfrom .b import g\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = import_graph(project_modules())
    assert graph["cleancurate.engine.c"] == {"cleancurate.engine.a", "cleancurate.engine.b"}
    assert import_cycles(graph) == [["cleancurate.engine.a", "cleancurate.engine.b"]]
    # a longer circle, with a module that only points into it
    assert import_cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "t": {"x"}}) == [["x", "y", "z"]]
    assert import_cycles({"x": {"y"}, "y": set(), "t": {"x", "y"}}) == []


def test_public_entry_points_reach_the_jobs():
    import cleancurate
    from cleancurate.jobs.curation import curate
    from cleancurate.jobs.evaluation import EvaluationResult, evaluate

    assert cleancurate.EvaluationResult is EvaluationResult
    assert callable(cleancurate.curate) and callable(cleancurate.evaluate)
    assert curate.__module__ == "cleancurate.jobs.curation.stages"
    assert evaluate.__module__ == "cleancurate.jobs.evaluation.job"
