"""Entry point of the evaluation job: ``spark-submit jobs/evaluate.py --config conf/eval-small.yaml``.

Also ``cleancurate evaluate ...`` and ``python -m cleancurate.jobs.evaluate ...``. The
output folder (``output.path`` or ``--output``) must hold a complete curation run;
the evaluation's tables and report go beside it. Rerun the same command to resume
after the last finished mix.
"""

import argparse
import sys
import time


def build_parser(prog: str = "evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Fine-tune on mixes with and without curated texts, "
                                                      "answer held-out prompts, report harmful rates with intervals.")
    p.add_argument("--config", "-c", default="eval-small", help="profile name in conf/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set evaluation.max_steps=5 (repeatable)")
    p.add_argument("--output", help="folder holding the curation run's tables (overrides output.path)")
    p.add_argument("--output-table-prefix", help="catalog tables <prefix><table> instead of a folder")
    p.add_argument("--curation-run-id", help="curation run to evaluate (default: the latest complete one)")
    p.add_argument("--stop-after-mix", help="commit this mix and stop; rerun to resume")
    p.add_argument("--no-report", action="store_true", help="skip the report section")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the final summary")
    return p


class ProgressPrinter:
    """One line per mix on stderr."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.t0 = time.time()

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        kind, el = ev["event"], time.time() - self.t0
        if kind == "start":
            msg = (f"evaluation {ev['eval_run_id']} of curation run {ev['curation_run_id']}: "
                   f"{ev['harmful_prompts']} harmful + {ev['benign_prompts']} benign prompts"
                   + (f"; finished before: {', '.join(ev['finished'])}" if ev["finished"] else ""))
        elif kind == "mixes_built":
            msg = (f"mixes: {ev['benign']} benign, {ev['harmful']} harmful, {ev['curated']} curated rows; "
                   + ", ".join(f"{k[5:]}={v}" for k, v in ev.items() if k.startswith("rows_")))
        elif kind == "mix_start":
            msg = f"mix {ev['mix']}: training on {ev['train_rows']} rows"
        elif kind == "mix_trained":
            loss = (f", loss {ev['loss_first']:.2f} -> {ev['loss_last']:.2f}" if ev["loss_first"] is not None else "")
            msg = f"mix {ev['mix']}: {ev['steps']} steps{loss} [{ev['seconds']:.0f}s]"
        elif kind == "mix_committed":
            vals = ", ".join(f"{k}={v:.3f}" for k, v in ev["metrics"].items() if v == v)
            msg = (f"mix {ev['mix']} committed: {ev['answered']} answered, {ev['failed']} failed; {vals} "
                   f"[{ev['seconds']:.0f}s, elapsed {el:.0f}s]")
        elif kind == "mix_skipped":
            msg = f"mix {ev['mix']}: finished by an earlier run, skipped"
        elif kind == "stopped":
            msg = f"stopped after mix {ev['mix']} as asked; rerun the same command to resume"
        elif kind == "complete":
            msg = f"complete: {ev['answer_rows']} answer rows [{el:.0f}s]"
        else:
            return
        print(f"[cleancurate] {msg}", file=self.stream, flush=True)


def main(argv=None) -> int:
    from cleancurate import config as config_mod
    from cleancurate.config import ConfigError
    from cleancurate.evaluation.finetune import FineTuneError
    from cleancurate.evaluation.job import PromptAccountingError, evaluate
    from cleancurate.tables import InputError

    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output.path={args.output}")
    if args.output_table_prefix:
        overrides.append(f"output.table_prefix={args.output_table_prefix}")
    if args.curation_run_id:
        overrides.append(f"evaluation.curation_run_id={args.curation_run_id}")
    try:
        cfg = config_mod.load(args.config, overrides)
        result = evaluate(cfg, progress=ProgressPrinter(args.quiet), stop_after_mix=args.stop_after_mix,
                          report=not args.no_report)
    except (ConfigError, InputError, FineTuneError) as exc:
        print(f"cleancurate: error: {exc}", file=sys.stderr)
        return 2
    except PromptAccountingError as exc:
        print(f"cleancurate: accounting error: {exc}", file=sys.stderr)
        return 3
    rows = result.table("evaluation").orderBy("metric", "mix").collect() if result.complete else []
    for r in rows:
        print(f"{r.mix:4s} {r.metric:24s} {r.value:8.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]  n={r.n}")
    where = result.store.location("evaluation")
    print(f"evaluation {result.eval_run_id}: table {where}" + ("" if result.complete else
                                                              " (stopped early; rerun to resume)"))
    if result.report_path:
        print(f"report: {result.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
