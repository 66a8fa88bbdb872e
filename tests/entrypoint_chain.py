"""The entry points' chain, run in the background of the test session.

Two ways users start the job, on one run, each in processes of its own as a user starts them:

1. ``spark-submit jobs/curate.py`` (its own JVM, driver and workers) is SIGKILLed, with
   its whole process group, once round 1 is committed: no clean-up runs;
2. the notebook, executed headless in a fresh kernel (another JVM), resumes the same run
   after round 1 from the tables alone, finishes it and shows the report.

These processes spend most of their time starting up (a JVM, Python workers, the models),
so tests/conftest.py starts the chain as soon as the test session's JVM is up and the
in-process tests run meanwhile; the test in tests/e2e/test_curation_run.py waits for it, then
checks what it left. The chain records what it saw and asserts nothing itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class EntrypointChain:
    """spark-submit killed after round 1, then the notebook resuming it, in a background thread.

    Args:
        cfg_path: the run's config file (the shared run's, with its own output and the report on).
        input_path: the input the config names (notebook parameter ``input_table``).
        out: the run's output folder.
        jars: local jar paths of Delta and its dependencies, as the test session resolved
            them: both processes load them instead of resolving the packages again (with
            none, spark-submit resolves Delta's package and the notebook does as the job does).
        spark_conf: Spark settings for the job's own sessions.
        load_log: where the chain's processes log their model loads (not the session's log).
    """

    KILL_AFTER = "round 1 committed"

    def __init__(self, cfg_path: str, input_path: str, out: Path, jars: list[str], spark_conf: dict[str, str],
                 load_log: Path):
        self.cfg_path, self.input_path, self.out = cfg_path, input_path, Path(out)
        self.jars, self.spark_conf = jars, spark_conf
        # one torch thread per process: the chain's processes share the cores with the session's
        self.env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "CLEANCURATE_LOAD_LOG": str(load_log),
                    "OMP_NUM_THREADS": "1"}
        if jars:
            self.env["CLEANCURATE_SPARK_JARS"] = ",".join(jars)
        self.future: Future = Future()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._main, name="entrypoint-chain", daemon=True)

    def submit_command(self) -> list[str]:
        from cleancurate.session import delta_maven_coordinate

        jars = ["--jars", ",".join(self.jars)] if self.jars else ["--packages", delta_maven_coordinate()]
        return [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", *jars,
                "--driver-memory", "2g",
                *sum((["--conf", f"{k}={v}"] for k, v in self.spark_conf.items()), []),
                "jobs/curate.py", "--config", self.cfg_path]

    def start(self) -> "EntrypointChain":
        self._thread.start()
        return self

    def result(self, timeout: float) -> dict:
        """What the chain saw (see :meth:`_run`); raises what the chain raised."""
        return self.future.result(timeout)

    def cancel(self) -> None:
        """Kill a spark-submit still running (the session ends before its test ran)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    def _main(self) -> None:
        # Linux: niceness is per thread and inherited by what the thread starts, so the chain's
        # processes take only the cores the in-process tests leave idle
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass  # elsewhere the chain runs at the session's priority: slower, not wrong
        try:
            self.future.set_result(self._run())
        except BaseException as exc:  # noqa: BLE001 - handed to the test that waits for it
            self.future.set_exception(exc)

    def _run(self) -> dict:
        seen: list[str] = []
        # spark-submit's Python driver writes its stderr (the progress lines) to spark-submit's stdout
        # its own process group (killed as one), in this session: a new session would be a
        # scheduler autogroup of its own, with an equal share of the cores whatever its niceness
        proc = self._proc = subprocess.Popen(self.submit_command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             text=True, cwd=ROOT, process_group=0, env=self.env)
        watchdog = threading.Timer(900, self.cancel)  # a silent hang cannot block the suite
        watchdog.start()
        killed = False
        try:
            for line in proc.stdout:
                seen.append(line)
                if self.KILL_AFTER in line:
                    os.killpg(proc.pid, signal.SIGKILL)  # spark-submit, its JVM, the driver and workers
                    killed = True
                    break
        finally:
            watchdog.cancel()
            if not killed:
                self.cancel()
            proc.wait()
        submit = {"killed": killed, "returncode": proc.returncode, "output": "".join(seen),
                  "curated_after_kill": (self.out / "curated").exists()}
        if not killed:
            return {"submit": submit, "notebook": None}
        return {"submit": submit, "notebook": self._notebook()}

    def _notebook(self):
        import nbformat
        from nbclient import NotebookClient

        nb = nbformat.read(ROOT / "notebooks" / "curate.ipynb", as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        params.source += (f"\ninput_table = {self.input_path!r}\noutput = {str(self.out)!r}\n"
                          f"profile = {self.cfg_path!r}\noverrides = {['spark.conf=' + repr(self.spark_conf)]!r}\n")
        client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})

        def lower_priority(notebook):
            # the kernel starts a session (and autogroup) of its own: lower the group's priority
            try:
                Path(f"/proc/{client.km.provisioner.pid}/autogroup").write_text("19")
            except (OSError, AttributeError):
                pass  # no autogroups here: the kernel's niceness (inherited) is what counts

        client.on_notebook_start = lower_priority
        client.execute(env=self.env)
        return nb
