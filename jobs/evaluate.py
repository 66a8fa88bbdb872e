"""Entry point of the evaluation job: ``spark-submit jobs/evaluate.py --config conf/eval-small.yaml``.

Also ``cleancurate evaluate ...`` and ``python -m cleancurate.jobs.evaluate ...``. The
output folder (``output.path`` or ``--output``) must hold a complete curation run;
the evaluation's tables and report go beside it. Rerun the same command to resume
after the last finished mix.
"""

import argparse
import sys

from cleancurate.jobs import options


def build_parser(prog: str = "evaluate") -> argparse.ArgumentParser:
    p = options.common_parser(prog, "Fine-tune on mixes with and without curated texts, answer held-out "
                              "prompts, report harmful rates with intervals.", "eval-small", "evaluation.max_steps=5",
                              "folder holding the curation run's tables (overrides output.path)")
    p.add_argument("--curation-run-id", help="curation run to evaluate (default: the latest complete one)")
    p.add_argument("--stop-after-mix", help="commit this mix and stop; rerun to resume")
    return p


class ProgressPrinter(options.ProgressPrinter):
    """One line per mix on stderr."""

    def message(self, ev: dict, el: float) -> str | None:
        kind = ev["event"]
        if kind == "start":
            msg = (f"evaluation {ev['eval_run_id']} of curation run {ev['curation_run_id']}: "
                   f"{ev['harmful_prompts']} harmful + {ev['benign_prompts']} benign prompts"
                   + (f"; finished before: {', '.join(ev['finished'])}" if ev["finished"] else ""))
        elif kind == "mixes_built":
            kept = f" ({ev['curated_kept']} of them kept originals)" if ev.get("curated_kept") else ""
            msg = (f"mixes: {ev['benign']} benign, {ev['harmful']} harmful, {ev['curated']} curated rows{kept}; "
                   + ", ".join(f"{k[5:]}={v}" for k, v in ev.items() if k.startswith("rows_"))
                   + f"; curated texts from {ev['curated_source']}: {ev['revisions_available']} revisions, "
                   f"{ev['kept_originals_available']} kept originals")
        elif kind == "mix_start":
            phases = ev.get("phases") or []
            order = (" then ".join(f"{'+'.join(k)} ({n})" for k, n in phases) if len(phases) > 1 else "")
            msg = f"mix {ev['mix']}: training on {ev['train_rows']} rows" + (f": {order}" if order else "")
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
            return None
        return msg


def main(argv=None) -> int:
    from cleancurate import config as config_mod
    from cleancurate.config import ConfigError
    from cleancurate.jobs.evaluation import PromptAccountingError, evaluate
    from cleancurate.jobs.evaluation.finetune import FineTuneError
    from cleancurate.tables import InputError

    args = build_parser().parse_args(argv)

    def run() -> int:
        overrides = options.config_overrides(args, **{"evaluation.curation_run_id": "curation_run_id"})
        cfg = config_mod.load_evaluation(args.config, overrides)
        result = evaluate(cfg, progress=ProgressPrinter(args.quiet), stop_after_mix=args.stop_after_mix,
                          report=not args.no_report)
        rows = result.table("evaluation").orderBy("metric", "mix").collect() if result.complete else []
        for r in rows:
            print(f"{r.mix:8s} {r.metric:24s} {r.value:8.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]  n={r.n}")
        options.print_outcome(f"evaluation {result.eval_run_id}", f"table {result.store.location('evaluation')}",
                              result.complete, result.report_path)
        return 0

    return options.run_job(run, (ConfigError, InputError, FineTuneError), (PromptAccountingError,))


if __name__ == "__main__":
    sys.exit(main())
