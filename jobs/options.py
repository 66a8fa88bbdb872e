"""Command-line options, config overrides and exit codes shared by the jobs' entry points."""

import argparse
import sys
import time
from typing import Callable


def common_parser(prog: str, description: str, default_config: str, set_example: str,
                  output_help: str) -> argparse.ArgumentParser:
    """A parser with the options every job takes: profile, overrides, output, report, quiet."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", "-c", default=default_config,
                   help=f"profile name in conf/ or a YAML path (default: {default_config})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, e.g. --set {set_example} (repeatable)")
    p.add_argument("--output", help=output_help)
    p.add_argument("--output-table-prefix", help="catalog tables <prefix><table> instead of a folder")
    p.add_argument("--no-report", action="store_true", help="skip the report")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the final summary")
    return p


def config_overrides(args: argparse.Namespace, **paths: str) -> list[str]:
    """``--set`` overrides plus the output options, then ``{config key: attribute}`` pairs given in ``paths``."""
    overrides = list(args.overrides)
    pairs = {"output.path": "output", "output.table_prefix": "output_table_prefix", **paths}
    for key, attr in pairs.items():
        value = getattr(args, attr, None)
        if value:
            overrides.append(f"{key}={value}")
    return overrides


class ProgressPrinter:
    """One line per job event on stderr, ``[cleancurate] <message>``; nothing when ``quiet``.

    A job's printer implements :meth:`message`: the line for an event, or None to print nothing.
    """

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.t0 = time.time()

    def message(self, ev: dict, elapsed: float) -> str | None:
        raise NotImplementedError

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        msg = self.message(ev, time.time() - self.t0)
        if msg is not None:
            print(f"[cleancurate] {msg}", file=self.stream, flush=True)


def print_outcome(what: str, where: str, complete: bool, report_path: str | None) -> None:
    """The last lines of a job on stdout: what it wrote and where, and the report."""
    print(f"{what}: {where}" + ("" if complete else " (stopped early; rerun to resume)"))
    if report_path:
        print(f"report: {report_path}")


def run_job(fn: Callable[[], int], user_errors: tuple, accounting_errors: tuple) -> int:
    """Run ``fn``; a config or input problem exits 2, rows that do not add up exit 3, each with one line."""
    try:
        return fn()
    except user_errors as exc:
        print(f"cleancurate: error: {exc}", file=sys.stderr)
        return 2
    except accounting_errors as exc:
        print(f"cleancurate: accounting error: {exc}", file=sys.stderr)
        return 3
