"""Helpers shared by the benchmarks: sample rows, environment facts, timing, memory, JSON output.

Every benchmark prints exactly one JSON object on stdout. Anything else that gets
written while it runs (Spark/JVM logs, warnings, Ivy resolution messages) is sent
to stderr: :func:`quiet_stdout` points file descriptor 1 at stderr for the whole
run, and :func:`emit` writes the result to the saved original stdout.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from contextlib import contextmanager

MODEL_SPEC = "embedded:smollm2-135m"
_REAL_STDOUT_FD: int | None = None


def quiet_stdout() -> None:
    """Route fd 1 (Python and every child process: JVM, Spark workers) to stderr."""
    global _REAL_STDOUT_FD
    if _REAL_STDOUT_FD is not None:
        return
    sys.stdout.flush()
    _REAL_STDOUT_FD = os.dup(1)
    os.dup2(2, 1)


def add_threads_option(ap, help: str = "torch intra-op threads (default 1, see README; 0 keeps torch's own default)"):
    """The ``--threads`` option of the CPU benchmarks."""
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=help)


def begin() -> dict:
    """Start a CPU benchmark: stdout kept for the JSON, no tokenizer threads, and the load when it
    starts (keys added to :func:`environment`'s in the JSON)."""
    quiet_stdout()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {"loadavg_1m_at_start": round(os.getloadavg()[0], 2),
            "cpu_pressure_some_avg60_pct_at_start": cpu_pressure()}


def emit(obj: dict) -> None:
    """Write the single JSON result to the real stdout."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    sys.stdout.flush()
    if _REAL_STDOUT_FD is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        os.write(_REAL_STDOUT_FD, text.encode("utf-8"))


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:
        pass
    return str(o)


def sample_rows(n: int | None = None, max_chars: int = 2000) -> list[dict]:
    """Sample rows whose query and response are non-empty strings under ``max_chars`` (input order)."""
    from cleancurate.sample import read_records

    rows = [
        r for r in read_records()
        if isinstance(r.get("query"), str) and isinstance(r.get("response"), str)
        and r["query"].strip() and r["response"].strip()
        and len(r["query"]) < max_chars and len(r["response"]) < max_chars
    ]
    return rows if n is None else rows[:n]


def environment() -> dict:
    """Versions, threads and CPU facts for the JSON output."""
    import torch
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpu_pressure_some_avg60_pct": cpu_pressure(),
    }
    try:
        import pyspark

        env["pyspark"] = pyspark.__version__
    except ImportError:
        pass
    return env


def cpu_pressure() -> float | None:
    """Share of the last minute in which some runnable task waited for a CPU (Linux PSI, %).

    Well above 0 means other processes were competing for the cores during the run.
    """
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as fh:
            first = fh.readline().split()
        return float(dict(kv.split("=") for kv in first[1:])["avg60"])
    except (OSError, KeyError, ValueError):
        return None


DEFAULT_THREADS = 1  # see bench/README.md: 2 intra-op threads collapse when another process holds a core


def load_model():
    """The embedded SmolLM2-135M on CPU (cached per process) and how long the first call took."""
    from cleancurate.models import get_model

    t0 = time.perf_counter()
    lm = get_model(MODEL_SPEC, device="cpu")
    return lm, time.perf_counter() - t0


def timed(fn, *args, **kwargs):
    """(result, wall seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def timed_cpu(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process, all its threads) of one call.

    On a shared machine CPU seconds move less with other tenants' load than wall
    seconds do (but OpenMP threads that spin while waiting still count).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def set_threads(n: int | None) -> None:
    """torch intra-op threads for this process (None keeps torch's default)."""
    if n:
        import torch

        torch.set_num_threads(n)


def summary(times: list[float]) -> dict:
    """min / median / all of a list of timings, rounded."""
    return {
        "min_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "runs_s": [round(t, 4) for t in times],
    }


def maxrss_mib() -> float:
    """Peak RSS of this process so far (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def rss_mib(pid: int | None = None) -> float | None:
    """Current RSS of a process from /proc (MiB)."""
    return _proc_status_mib(pid or os.getpid(), "VmRSS")


def hwm_mib(pid: int | None = None) -> float | None:
    """Peak RSS (VmHWM) of a process from /proc (MiB)."""
    return _proc_status_mib(pid or os.getpid(), "VmHWM")


def _proc_status_mib(pid: int, field: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError):
        return None
    return None


def reset_hwm(pid: int) -> bool:
    """Reset a process's VmHWM (Linux: write 5 to clear_refs); False when not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Polls the RSS of a set of processes in a background thread and keeps each one's peak.

    ``pids`` is a callable returning {pid: label}, re-evaluated every poll so
    processes that start during the measurement are picked up.
    """

    def __init__(self, pids, interval: float = 0.05):
        self._pids = pids
        self.interval = interval
        self.peaks: dict[int, float] = {}
        self.labels: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self):
        for pid, label in self._pids().items():
            r = rss_mib(pid)
            if r is None:
                continue
            self.labels[pid] = label
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), r)

    def __enter__(self):
        self.poll()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()
        return False


@contextmanager
def rss_peak_of_self(interval: float = 0.02):
    """Sampled peak RSS of this process during the block (ru_maxrss cannot be reset)."""
    sampler = RssSampler(lambda: {os.getpid(): "self"}, interval)
    holder = {}
    with sampler:
        yield holder
    holder["peak_rss_mib"] = sampler.peaks.get(os.getpid())


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (lo, hi) of the proportion k/n; z=1.96 gives 95%. (0.0, 1.0) when n is 0."""
    import math

    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_rate(k: int, n: int) -> dict:
    """The proportion k/n with its Wilson 95% interval, as the benchmarks print it (value None when n is 0)."""
    lo, hi = wilson(k, n)
    return {"value": round(k / n, 4) if n else None, "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def max_rel_diff(a, b) -> float:
    """max |a-b| / |b| over paired finite values; inf when a pair is not comparable."""
    import math

    worst = 0.0
    for x, y in zip(a, b):
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            if not (math.isnan(x) and math.isnan(y)):
                return float("inf")
            continue
        worst = max(worst, abs(x - y) / max(abs(y), 1e-30))
    return worst
