"""``cleancurate`` command line: curate, config show, sample, report, evaluate, serve."""

from __future__ import annotations

import argparse
import json
import sys


def _config_show(argv: list[str]) -> int:
    from cleancurate import config as config_mod

    p = argparse.ArgumentParser(
        prog="cleancurate config show",
        description="Print the configuration a run would use and its hash: every key a user can set, the ones the "
                    "profile (and the profiles it extends) or --set gave marked '# set', the rest at their defaults.")
    p.add_argument("--config", "-c", default="demo")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--evaluation", action="store_true", help="also print the evaluation section (cleancurate evaluate)")
    p.add_argument("--all", action="store_true",
                   help="every section: evaluation, and server where no model is served")
    p.add_argument("--json", action="store_true", help="JSON instead of YAML")
    args = p.parse_args(argv)
    try:
        load = config_mod.load_evaluation if args.evaluation or args.all else config_mod.load
        cfg = load(args.config, args.overrides)
        given = config_mod.profile_keys(args.config, args.overrides)
    except config_mod.ConfigError as exc:
        print(f"cleancurate: error: {exc}", file=sys.stderr)
        return 2
    d = cfg.user_dict()
    if args.json:
        print(json.dumps({"config_hash": cfg.hash, "config": d}, indent=2))
        return 0
    hidden = []
    if not (args.all or config_mod.served_roles(cfg) or any(k.startswith("server.") for k in given)):
        d.pop("server")  # read only by served models
        hidden.append("server (no model is served)")
    if "evaluation" not in d:
        hidden.append("evaluation (--evaluation)")
    print(f"# config_hash: {cfg.hash}")
    for line in _yaml_lines(d, given):
        print(line)
    print(f"# not shown: {', '.join(hidden)}; --all shows every section")
    return 0


def _yaml_lines(d: dict, given: set[str]) -> list[str]:
    """One line per key (lists inline), sections as blocks; keys in ``given`` marked ``# set``."""
    import yaml

    def value(v) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=float("inf"), allow_unicode=True).strip() \
            .removesuffix("\n...").removesuffix("...").strip()

    lines = []
    for key, v in d.items():
        if isinstance(v, dict) and v:
            lines.append(f"{key}:")
            lines += [f"  {k}: {value(x)}" + ("  # set" if f"{key}.{k}" in given else "") for k, x in v.items()]
        else:
            lines.append(f"{key}: {value(v)}" + ("  # set" if key in given else ""))
    return lines


def _sample(argv: list[str]) -> int:
    from cleancurate import sample

    p = argparse.ArgumentParser(prog="cleancurate sample", description="Build or export the shipped sample corpus.")
    p.add_argument("--out", help="where to write (default: rebuild data/sample/corpus.parquet from pairs.jsonl)")
    p.add_argument("--format", choices=["parquet", "delta"], default="parquet")
    args = p.parse_args(argv)
    if args.format == "parquet":
        from pathlib import Path

        print(sample.build_parquet(dest=Path(args.out) if args.out else None))
        return 0
    if not args.out:
        p.error("--out is required with --format delta")
    from cleancurate.session import get_spark

    print(sample.write_delta(get_spark(), args.out))
    return 0


def _report(argv: list[str]) -> int:
    from cleancurate.jobs.curation.report import main as report_main

    return report_main(argv)


COMMANDS = {
    "curate": "run the curation job (see `cleancurate curate --help`)",
    "config": "`config show`: print the resolved config and its hash",
    "sample": "build the sample corpus Parquet, or write it as Delta",
    "report": "rebuild the HTML report of an output folder",
    "evaluate": "fine-tune on mixes with/without curated texts and measure harm (see `cleancurate evaluate --help`)",
    "serve": "serve the embedded model over an OpenAI-compatible API (llama.cpp, CPU) for model.backend server",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: cleancurate COMMAND [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:8s} {text}")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "curate":
        from cleancurate.jobs.curate import main as curate_main

        return curate_main(rest)
    if cmd == "config":
        if not rest or rest[0] != "show":
            print("usage: cleancurate config show [--config PROFILE] [--set KEY=VALUE ...]", file=sys.stderr)
            return 2
        return _config_show(rest[1:])
    if cmd == "sample":
        return _sample(rest)
    if cmd == "report":
        return _report(rest)
    if cmd == "evaluate":
        from cleancurate.jobs.evaluate import main as evaluate_main

        return evaluate_main(rest)
    if cmd == "serve":
        from cleancurate.localserver import main as serve_main

        return serve_main(rest)
    print(f"cleancurate: unknown command '{cmd}'; one of {sorted(COMMANDS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
