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
