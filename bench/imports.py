"""What a fresh Python process pays to import a model UDF's modules, with and without bytecode.

    .venv/bin/python -m bench.imports [--repeats 3]

Every Spark Python worker, the notebook kernel and each TorchDistributor rank is a new
process that imports pyspark's worker, pandas, pyarrow, torch, transformers (the Llama
model code) and the project's engine. Python reads each module's compiled bytecode
(``__pycache__/*.pyc``) when it exists; where ``PYTHONDONTWRITEBYTECODE`` is set (as on
the machine these figures come from) or the environment is read-only, a module without it
is compiled from source at every import, in every process. ``make install`` therefore
compiles site-packages at install time and ``make test`` / ``make demo`` the project's own
modules.

``--repeats`` alternating pairs of child processes, each timing the same imports:

- ``bytecode``: the environment as installed (its ``.pyc`` files);
- ``source``: ``PYTHONPYCACHEPREFIX`` pointed at an empty folder, so no ``.pyc`` is found
  and every module compiles from source, as in an environment installed without bytecode.

Both run with ``PYTHONDONTWRITEBYTECODE=1``, so neither leaves bytecode for the next.
``ratio = median(source) / median(bytecode)``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import begin, emit, environment

MODULES = ["pyspark.worker", "pyspark.sql.pandas.serializers", "pandas", "pyarrow", "torch", "transformers",
           "transformers.models.llama.modeling_llama", "cleancurate.engine.generate",
           "cleancurate.engine.perplexity"]
CHILD = ("import time, importlib\n"
         "t0 = time.perf_counter()\n"
         "for m in {modules!r}:\n"
         "    importlib.import_module(m)\n"
         "print(time.perf_counter() - t0)\n")


def child_seconds(extra_env: dict) -> float:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **extra_env}
    out = subprocess.run([sys.executable, "-c", CHILD.format(modules=MODULES)], env=env, check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating (bytecode, source) pairs (default 3)")
    args = ap.parse_args(argv)
    env_start = begin()
    runs: dict[str, list[float]] = {"bytecode": [], "source": []}
    child_seconds({})  # warm the page cache, not timed
    for _ in range(args.repeats):
        runs["bytecode"].append(round(child_seconds({}), 3))
        with tempfile.TemporaryDirectory(prefix="bench-imports-") as empty:
            runs["source"].append(round(child_seconds({"PYTHONPYCACHEPREFIX": empty}), 3))
    med = {k: statistics.median(v) for k, v in runs.items()}
    emit({
        "benchmark": "imports",
        "inputs": {"modules": MODULES, "repeats": args.repeats, "python": sys.version.split()[0]},
        "seconds": runs,
        "median_seconds": med,
        "ratio": round(med["source"] / med["bytecode"], 2),
        "environment": {**environment(), **env_start},
    })


if __name__ == "__main__":
    main()
