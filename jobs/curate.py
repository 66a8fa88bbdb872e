"""Entry point of the curation job: ``spark-submit jobs/curate.py --config conf/demo.yaml``.

Also ``cleancurate curate ...`` and ``python -m cleancurate.jobs.curate ...``; all take
the same options. Imports go through the installed ``cleancurate`` package (ship it
to executors as a wheel or zip with ``--py-files``).
"""

import argparse
import sys

from cleancurate.jobs import options


def build_parser(prog: str = "curate") -> argparse.ArgumentParser:
    p = options.common_parser(prog, "Curate (query, response) text with a language model.", "demo",
                              "curation.rounds=3", "output folder of Delta tables (overrides output.path)")
    p.add_argument("--input", help="input Parquet path, Delta path or catalog table (overrides input.path)")
    p.add_argument("--new-run", action="store_true",
                   help="add a run beside the existing ones: a changed config, or a changed source curated afresh")
    p.add_argument("--incremental", action="store_true",
                   help="bring the output up to date with a changed source: curate new and changed rows, remove "
                        "deleted ones (a pipeline step on a schedule)")
    p.add_argument("--stop-after-round", type=int, help="commit this round and stop; rerun to resume")
    p.add_argument("--verbose", "-v", action="store_true", help="also print the time of every stage")
    return p


class ProgressPrinter(options.ProgressPrinter):
    """One line per round on stderr: documents, candidates, elapsed, ETA."""

    def __init__(self, quiet: bool = False, stream=None, verbose: bool = False):
        super().__init__(quiet, stream)
        self.verbose = verbose
        self.round_times: list[float] = []
        self.rounds = None

    def message(self, ev: dict, el: float) -> str | None:
        kind = ev["event"]
        if kind == "start":
            msg = f"run {ev['run_id']} (config {ev['config_hash']})"
            if ev.get("increment"):
                msg += f", increment {ev['increment']}"
            if ev.get("source"):
                msg += f" of {ev['source']}"
            if ev["resume_after_round"] is not None and ev["resume_after_round"] >= 0:
                msg += f": resuming after round {ev['resume_after_round']}"
        elif kind == "unchanged":
            msg = (f"run {ev['run_id']}: the source is unchanged since increment {ev['increment']} "
                   f"({ev['source']}); nothing to do")
        elif kind == "planned":
            msg = (f"increment {ev['increment']} ({ev['read_via']}): {ev['new']} new, {ev['changed']} changed, "
                   f"{ev['removed']} removed, {ev['unchanged']} unchanged documents [{ev['seconds']:.1f}s]")
        elif kind == "change_feed_unavailable":
            msg = f"comparing the whole source instead of its change feed: {ev['reason']}"
        elif kind == "prepared":
            msg = (f"input {ev['input_rows']} rows, valid {ev['valid_rows']}, flagged unsafe by the screen "
                   f"{ev.get('unsafe_rows', 0)}, selected {ev['selected_rows']} [{ev['seconds']:.1f}s]")
        elif kind == "round_start":
            self.rounds = ev["rounds"]
            msg = f"round {ev['round']}/{ev['rounds']} started"
        elif kind == "round_committed":
            self.round_times.append(ev["seconds"])
            left = (self.rounds or 0) - ev["round"]
            eta = f", ETA {left * (sum(self.round_times[1:]) / max(1, len(self.round_times) - 1)):.0f}s" \
                if left > 0 and len(self.round_times) > 1 else ""
            msg = (f"round {ev['round']} committed: {ev['docs_active']} docs active, {ev['candidates']} candidates, "
                   f"{ev['passed']} passed, {ev['docs_converged']} converged, {ev['gen_tokens']} tokens generated "
                   f"[{ev['seconds']:.1f}s, elapsed {el:.0f}s{eta}]")
        elif kind == "step":
            if not self.verbose:
                return None
            msg = f"  {ev['step']}: {ev['seconds']:.1f}s"
        elif kind == "stopped":
            msg = f"stopped after round {ev['round']} as asked; rerun the same command to resume"
        elif kind == "complete":
            msg = (f"complete: {ev['curated_rows']} curated ({ev['improved_rows']} improved, the rest kept their "
                   "original), "
                   f"{ev['quarantined_rows']} quarantined, {ev['mix_rows']} rows in mix [{el:.0f}s]")
        else:
            return None
        return msg


def main(argv=None) -> int:
    from cleancurate import config as config_mod
    from cleancurate.config import ConfigError
    from cleancurate.jobs.curation import AccountingError, curate
    from cleancurate.jobs.curation.increments import ConcurrentRunError
    from cleancurate.tables import InputError

    args = build_parser().parse_args(argv)

    def run() -> int:
        cfg = config_mod.load(args.config, options.config_overrides(args, **{"input.path": "input"}))
        result = curate(None, cfg, new_run=args.new_run, progress=ProgressPrinter(args.quiet, verbose=args.verbose),
                        stop_after_round=args.stop_after_round, report=not args.no_report,
                        incremental=args.incremental)
        options.print_outcome(f"run {result.run_id}", f"tables in {result.store.location('')}", result.complete,
                              result.report_path)
        if result.mlflow_run_id:
            print(f"MLflow run {result.mlflow_run_id} (experiment {cfg.report.mlflow_experiment or 'default'}, "
                  f"tag cleancurate.run_id={result.run_id})")
        return 0

    return options.run_job(run, (ConfigError, InputError, ConcurrentRunError), (AccountingError,))


if __name__ == "__main__":
    sys.exit(main())
