"""Job configuration: YAML profiles loaded into frozen, validated dataclasses.

A profile is a YAML file in ``conf/`` (or any path). ``--set section.key=value``
overrides any key; values are parsed as YAML scalars. Unknown keys and bad values
raise :class:`ConfigError` naming the key and what is allowed. Prompt files named
in the config are read at load time, so the resolved config (and its hash) carries
the exact prompt text that executors will use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from cleancurate.configsections import (  # noqa: F401  (re-exported: cleancurate.config.GateConfig etc.)
    REFUSAL_KEYWORDS, CurationConfig, EvaluationConfig, GateConfig, HarmConfig, InputConfig, LimitsConfig,
    MetricsConfig, ModelConfig, OutputConfig, ReportConfig, RuntimeConfig, SelectionConfig, ServerConfig, SparkConfig,
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class Config:
    """The curation job's configuration (``cleancurate curate``). The evaluation job's is
    :class:`EvaluationRunConfig`: these sections and its own ``evaluation`` root."""

    name: str = "custom"
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    harm: HarmConfig = field(default_factory=HarmConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists) of every field, the resolved file texts included."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def user_dict(self) -> dict[str, Any]:
        """The keys a user can set, with their values: :meth:`to_dict` without the file texts read at load time."""
        d = self.to_dict()
        for section, name in RESOLVED:
            if section in d:
                d[section].pop(name, None)
        return d

    def as_curation(self) -> "Config":
        """The curation job's part of this configuration (itself, for a :class:`Config`)."""
        return self if type(self) is Config else Config(**_curation_sections(self))

    @property
    def hash(self) -> str:
        """Hash of everything that changes the curated result.

        Output location, Spark settings, batching and reporting are left out: they
        change where and how fast, not what. The texts of the prompt and harm files are
        in: executors use exactly them.
        """
        d = self.to_dict()
        for key in ("output", "spark", "runtime", "report", "name", "evaluation"):
            d.pop(key, None)
        if served_roles(self):  # the served models and the prompt rendering, not where or how fast
            d["server"] = {k: d["server"][k] for k in ("model", "tokenizer", "tokenizers", "top_logprobs")}
        else:
            d.pop("server")
        if d["harm"]["backend"] == "head":  # the guard's settings change nothing then
            for key in ("backend", "guard_model", "guard_format", "guard_spec"):
                d["harm"].pop(key)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "Config":
        """A copy with ``section.key=value`` overrides applied and validated.

        A file named by an overridden key (``curation.prompt_file``, ``harm.head_file``, ...)
        is read again; a new harm check takes its own thresholds unless they are set too.
        """
        raw = self.to_dict()
        _apply_overrides(raw, overrides)
        keys = set(overrides) if isinstance(overrides, dict) else {o.split("=", 1)[0].strip() for o in overrides}
        for (section, name), sources in RESOLVED.items():
            if keys & {f"{section}.{k}" for k in sources}:
                raw[section][name] = ""  # read again by from_dict
        if keys & {"harm.backend", "harm.guard_format", "harm.head_file"}:  # another check: its thresholds
            raw["harm"].update({k: None for k in ("threshold", "gate_threshold") if f"harm.{k}" not in keys})
        return from_dict(raw, base_dir=None, resolve_prompts=False, root=type(self))


@dataclass(frozen=True)
class EvaluationRunConfig(Config):
    """The evaluation job's configuration (``cleancurate evaluate``): the curation sections it reads (the
    output holding the curation run, the model to fine-tune, the harm check and judge, runtime, Spark,
    report) and the ``evaluation`` root, which the curation job neither holds nor hashes. The evaluation
    has a hash of its own (``jobs.evaluation.job.evaluation_hash``)."""

    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    @classmethod
    def of(cls, cfg: Config) -> "EvaluationRunConfig":
        """``cfg`` itself if it is one, else a curation configuration with the evaluation's defaults."""
        return cfg if isinstance(cfg, EvaluationRunConfig) else cls(**_curation_sections(cfg))


def _curation_sections(cfg: Config) -> dict[str, Any]:
    """The curation job's sections of ``cfg`` (of either root), by name."""
    return {f.name: getattr(cfg, f.name) for f in fields(Config)}


#: a model spec naming a served model (``harm.guard_model``, ``metrics.judge_model``): ``server:<served name>``
SERVED_PREFIX = "server:"


def served_name(spec: str | None) -> str | None:
    """The served model's name of a ``server:<name>`` spec, else None."""
    return spec[len(SERVED_PREFIX):] if spec and spec.startswith(SERVED_PREFIX) else None


def served_roles(cfg: "Config") -> dict[str, str | None]:
    """The run's served models (the ``server`` section), role -> served name: ``rewrite`` (``server.model``),
    ``guard`` and ``judge`` (their ``server:<name>`` specs), in that order."""
    roles = {"rewrite": cfg.server.model} if cfg.model.backend == "server" else {}
    if cfg.harm.backend == "guard" and served_name(cfg.harm.guard_model):
        roles["guard"] = served_name(cfg.harm.guard_model)
    if cfg.metrics.helpfulness == "judge" and served_name(cfg.metrics.judge_model):
        roles["judge"] = served_name(cfg.metrics.judge_model)
    return roles


#: (section, field) filled from a file at load time -> the keys that name the file
RESOLVED: dict[tuple[str, str], tuple[str, ...]] = {
    ("curation", "prompt"): ("prompt_file",),
    ("metrics", "judge_prompt"): ("judge_prompt_file",),
    ("harm", "head"): ("head_file",),
    ("harm", "guard_spec"): ("guard_format", "backend"),
    ("evaluation", "judge_prompt"): ("judge_prompt_file", "judges"),
}


def _conf_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("CLEANCURATE_CONF_DIR"):
        dirs.append(Path(os.environ["CLEANCURATE_CONF_DIR"]))
    dirs.append(Path.cwd() / "conf")
    dirs.append(Path(__file__).resolve().parent.parent / "conf")
    dirs.append(Path(__file__).resolve().parent / "conf")  # inside a built wheel
    return list(dict.fromkeys(d.resolve() for d in dirs))


def find_profile(name_or_path: str) -> Path:
    """Locate a profile by path, or by name in the conf directories."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for d in _conf_dirs():
        for cand in (d / name_or_path, d / f"{name_or_path}.yaml"):
            if cand.is_file():
                return cand
    raise ConfigError(
        f"config '{name_or_path}' not found: give a YAML path or a profile name from "
        f"{', '.join(str(d) for d in _conf_dirs() if d.is_dir())}"
    )


def _parse_scalar(text: str) -> Any:
    """A YAML scalar or list (``3``, ``true``, ``[0.2, 0.4]``); text that is not YAML stays a string."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> None:
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}' must look like section.key=value")
            key, value = item.split("=", 1)
            parsed.append((key.strip(), _parse_scalar(value)))
        items = parsed
    for key, value in items:
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                hint = (" (the evaluation job's keys: cleancurate evaluate, or config show --evaluation)"
                        if node is raw and part == "evaluation" else "")
                raise ConfigError(f"unknown config section '{part}' in override '{key}'{hint}")
            node = node[part]
        if parts[-1] not in node or tuple(parts) in RESOLVED:
            hint = f" (it is read from {parts[0]}.{RESOLVED[tuple(parts)][0]})" if tuple(parts) in RESOLVED else ""
            raise ConfigError(f"unknown config key '{key}' in override{hint}")
        node[parts[-1]] = value


def _coerce(path: str, typ: Any, value: Any) -> Any:
    origin = get_origin(typ)
    args = get_args(typ)
    if origin is type(None) or typ is type(None):
        return None
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(path, inner, value)
    if value is None:
        raise ConfigError(f"{path} must not be null")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {type(value).__name__}")
        return tuple(_coerce(f"{path}[{i}]", args[0], v) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {type(value).__name__}")
        return {str(k): str(v) for k, v in value.items()}
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-05 (no dot) as text: take it as the number it spells
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"section '{prefix or 'root'}' must be a mapping")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(f"unknown config key(s) {unknown} in {where}; allowed: {sorted(names)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build(typ, raw[f.name], path)
        else:
            kwargs[f.name] = _coerce(path, typ, raw[f.name])
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    s, c, g, r = cfg.selection, cfg.curation, cfg.gate, cfg.runtime
    checks = [
        (0.0 < s.fraction <= 1.0, f"selection.fraction must be in (0, 1], got {s.fraction}"),
        (c.rounds >= 1, f"curation.rounds must be >= 1, got {c.rounds}"),
        (c.beam_size >= 1, f"curation.beam_size must be >= 1, got {c.beam_size}"),
        (c.max_new_tokens >= 1, f"curation.max_new_tokens must be >= 1, got {c.max_new_tokens}"),
        (len(c.temperatures) > 0, "curation.temperatures must list at least one value"),
        (len(c.top_ps) > 0, "curation.top_ps must list at least one value"),
        (all(0.0 <= t <= 2.0 for t in c.temperatures), f"curation.temperatures must be in [0, 2], got {list(c.temperatures)}"),
        (all(0.0 < p <= 1.0 for p in c.top_ps), f"curation.top_ps must be in (0, 1], got {list(c.top_ps)}"),
        (c.stop_tolerance >= 0, "curation.stop_tolerance must be >= 0"),
        (c.max_candidates_per_round >= 1, "curation.max_candidates_per_round must be >= 1"),
        (r.token_budget is None or r.token_budget >= 16, f"runtime.token_budget must be >= 16 or null (auto), got {r.token_budget}"),
        (r.arrow_batch_rows >= 1, "runtime.arrow_batch_rows must be >= 1"),
        (r.gen_batch_size is None or r.gen_batch_size >= 1, "runtime.gen_batch_size must be >= 1 or null (auto)"),
        (r.score_stride >= 1, "runtime.score_stride must be >= 1"),
        (g.ngram >= 1, "gate.ngram must be >= 1"),
        (cfg.limits.max_chars >= 1 and cfg.limits.max_tokens >= 1, "limits.max_chars and limits.max_tokens must be >= 1"),
        (cfg.input.text_column is not None or (cfg.input.query_column and cfg.input.response_column),
         "input.query_column and input.response_column are required unless input.text_column is set"),
        (cfg.input.text_column is None or cfg.input.split_pattern is not None,
         "input.split_pattern (a regex with two groups: query, response) is required with input.text_column"),
        (bool(cfg.output.path) or bool(cfg.output.table_prefix), "output.path or output.table_prefix is required"),
        (cfg.server.in_flight >= 1, "server.in_flight must be >= 1"),
        (cfg.server.timeout_seconds > 0, "server.timeout_seconds must be > 0"),
        (cfg.server.retries >= 0 and cfg.server.backoff_seconds >= 0, "server.retries and server.backoff_seconds must be >= 0"),
    ]
    roles = served_roles(cfg)
    if roles:
        checks += [
            (bool(cfg.server.urls), f"served models ({', '.join(roles)}) need server.urls (e.g. [http://localhost:8000/v1])"),
            (all(u.startswith(("http://", "https://")) for u in cfg.server.urls),
             f"server.urls must be http:// or https:// URLs, got {list(cfg.server.urls)}"),
            (cfg.server.top_logprobs >= 2, "server.top_logprobs must be >= 2"),
        ]
        for role in ("guard", "judge"):
            if role in roles:
                name = roles[role]
                checks.append((name in cfg.server.tokenizers,
                               f"the served {role} {name!r} needs server.tokenizers.{name}: its tokenizer's model spec"))
    if cfg.model.backend == "server":
        checks.append((bool(cfg.server.model), "model.backend server needs server.model: the served model's name"))
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    for ratio in ("readability_min_ratio", "helpfulness_min_ratio"):
        v = getattr(g, ratio)
        if v is not None and not 0.0 <= v <= 1.0:
            raise ConfigError(f"gate.{ratio} must be in [0, 1] or null, got {v}")
    if g.min_coverage is not None and not 0 <= g.min_coverage <= 1:
        raise ConfigError(f"gate.min_coverage must be in [0, 1] or null, got {g.min_coverage}")
    if g.max_retention is not None and g.max_retention <= 0:
        raise ConfigError(f"gate.max_retention must be > 0 or null, got {g.max_retention}")
    for key in ("threshold", "gate_threshold"):
        v = getattr(cfg.harm, key)
        if v is None or not 0.0 <= v <= 1.0:
            raise ConfigError(f"harm.{key} must be in [0, 1] or null (the check's own), got {v}")
    if cfg.harm.revise_below is not None and not 0.0 <= cfg.harm.revise_below <= 1.0:
        raise ConfigError(f"harm.revise_below must be in [0, 1] or null (rule off), got {cfg.harm.revise_below}")
    if cfg.harm.backend == "guard" and not cfg.harm.guard_model:
        raise ConfigError("harm.backend 'guard' needs harm.guard_model: a local model directory or volume, a hub id "
                          "already in the local cache, or embedded:smollm2-135m (plumbing only, not a classifier)")
    if cfg.harm.backend == "guard":
        _guard_format(dataclasses.asdict(cfg.harm))
    if cfg.harm.head_file and cfg.harm.head:
        from cleancurate.safety import HarmHead

        try:
            HarmHead.from_json(cfg.harm.head)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"harm.head_file {cfg.harm.head_file!r} is not a harm head: {exc}") from exc
    if g.length_ratio_min is not None and g.length_ratio_max is not None and g.length_ratio_min > g.length_ratio_max:
        raise ConfigError("gate.length_ratio_min must not exceed gate.length_ratio_max")
    if c.objective == "maximize" and g.ppl_ceiling_ratio is None:
        raise ConfigError(
            "curation.objective 'maximize' needs gate.ppl_ceiling_ratio (a fluency ceiling relative to the "
            "original's perplexity), since maximizing perplexity otherwise rewards noise"
        )
    if c.objective == "maximize" and g.safety_check == "none":
        raise ConfigError("curation.objective 'maximize' needs gate.safety_check 'keywords' or 'embedding'")
    if cfg.metrics.helpfulness == "judge" and "{response}" not in cfg.metrics.judge_prompt and cfg.metrics.judge_prompt:
        raise ConfigError("metrics.judge_prompt must contain {query}, {response} and {rubric} placeholders")
    if cfg.input.split_pattern is not None:
        import re

        try:
            if re.compile(cfg.input.split_pattern).groups < 2:
                raise ConfigError("input.split_pattern needs two capture groups (query, response)")
        except re.error as exc:
            raise ConfigError(f"input.split_pattern is not a valid regex: {exc}") from exc


EVAL_MIXES = ("base", "A", "B", "C", "before", "after")
EVAL_JUDGES = ("keyword", "harm", "llm")


def _validate_evaluation(cfg: "EvaluationRunConfig") -> None:
    """Checks of the ``evaluation`` section (see :class:`EvaluationConfig`)."""
    e = cfg.evaluation
    bad_mix = [m for m in e.mixes if m not in EVAL_MIXES]
    bad_judge = [j for j in e.judges if j not in EVAL_JUDGES]
    checks = [
        (not bad_mix, f"evaluation.mixes: unknown mix(es) {bad_mix}; allowed: {list(EVAL_MIXES)}"),
        (len(set(e.mixes)) == len(e.mixes) and len(e.mixes) > 0, "evaluation.mixes must list each mix once"),
        (not bad_judge, f"evaluation.judges: unknown judge(s) {bad_judge}; allowed: {list(EVAL_JUDGES)}"),
        (0.0 <= e.contamination < 1.0, f"evaluation.contamination must be in [0, 1), got {e.contamination}"),
        (e.curated_ratio >= 0, f"evaluation.curated_ratio must be >= 0, got {e.curated_ratio}"),
        (e.curated_ratio > 0 or not set(e.mixes) & {"B", "before", "after"},
         "evaluation.curated_ratio 0 leaves mixes B, before and after without curated texts (equal to A); "
         "set it above 0 or drop them from evaluation.mixes"),
        (e.max_benign is None or e.max_benign >= 1, "evaluation.max_benign must be >= 1 or null"),
        (e.learning_rate > 0, f"evaluation.learning_rate must be > 0, got {e.learning_rate}"),
        (e.weight_decay >= 0, "evaluation.weight_decay must be >= 0"),
        (e.batch_size >= 1 and e.epochs >= 1, "evaluation.batch_size and evaluation.epochs must be >= 1"),
        (e.max_steps is None or e.max_steps >= 1, "evaluation.max_steps must be >= 1 or null"),
        (e.max_length >= 16, f"evaluation.max_length must be >= 16, got {e.max_length}"),
        (e.lora_r >= 1 and e.lora_alpha >= 1, "evaluation.lora_r and evaluation.lora_alpha must be >= 1"),
        (0.0 <= e.lora_dropout < 1.0, "evaluation.lora_dropout must be in [0, 1)"),
        (e.num_processes >= 1, "evaluation.num_processes must be >= 1"),
        (e.max_prompts is None or e.max_prompts >= 1, "evaluation.max_prompts must be >= 1 or null"),
        (e.max_new_tokens >= 1, "evaluation.max_new_tokens must be >= 1"),
        (0.0 <= e.temperature <= 2.0, f"evaluation.temperature must be in [0, 2], got {e.temperature}"),
        (0.0 < e.top_p <= 1.0, f"evaluation.top_p must be in (0, 1], got {e.top_p}"),
        (e.bootstrap >= 100, f"evaluation.bootstrap must be >= 100 resamples, got {e.bootstrap}"),
        (0.5 <= e.confidence < 1.0, f"evaluation.confidence must be in [0.5, 1), got {e.confidence}"),
        (0.0 <= e.judge_threshold <= 5.0, "evaluation.judge_threshold must be in [0, 5]"),
        (e.report_examples >= 0, "evaluation.report_examples must be >= 0"),
        ("llm" not in e.judges or all(k in e.judge_prompt for k in ("{query}", "{response}", "{rubric}")),
         "evaluation.judge_prompt must contain {query}, {response} and {rubric} placeholders"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def read_conf_file(value: str, base_dir: Path | None) -> str:
    """Text of a file named in a profile (prompt, harm head): beside the profile, as given, or in conf/."""
    candidates = [Path(value)]
    if base_dir is not None:
        candidates.insert(0, base_dir / value)
    candidates += [d / value for d in _conf_dirs()]
    for cand in candidates:
        if cand.is_file():
            return cand.read_text(encoding="utf-8").strip()
    raise ConfigError(f"file '{value}' named in the config not found (looked in {', '.join(str(c.parent) for c in candidates)})")


def _guard_format(harm: dict):
    """The guard format of a ``harm`` section (its ``guard_spec`` text), or a ConfigError naming the file."""
    from cleancurate.engine.guard import GuardFormat, GuardFormatError

    try:
        return GuardFormat.from_yaml(harm.get("guard_spec") or "", str(harm.get("guard_format")))
    except GuardFormatError as exc:
        raise ConfigError(f"harm.guard_format {harm.get('guard_format')!r}: {exc}") from exc


def _guard_format_file(value: str) -> str:
    """``harm.guard_format`` as a file: a path as given, a name as ``safety/guard/<name>.yaml``."""
    return value if value.endswith((".yaml", ".yml")) or "/" in value else f"safety/guard/{value}.yaml"


def _head_thresholds(head_text: str, head_file: str | None) -> dict:
    """The screen's and the gate's thresholds a harm head file carries (for ``null``); 0.5 without a head."""
    from cleancurate.safety import DEFAULT_THRESHOLD, HarmHead

    if not head_text:
        return {"threshold": DEFAULT_THRESHOLD, "gate_threshold": DEFAULT_THRESHOLD}
    try:
        head = HarmHead.from_json(head_text)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"harm.head_file {head_file!r} is not a harm head: {exc}") from exc
    return {"threshold": head.threshold, "gate_threshold": head.gate_threshold}


def _drop_resolved(raw: dict[str, Any]) -> None:
    """File texts given in a profile are not keys: the loader reads them (they never took effect)."""
    import warnings

    for (section, name), sources in RESOLVED.items():
        sec = raw.get(section)
        if isinstance(sec, dict) and name in sec:
            if sec.pop(name):
                warnings.warn(f"{section}.{name} is read from {section}.{sources[0]} at load time; the value given "
                              "in the profile is ignored (set the file instead)", FutureWarning, stacklevel=4)


def _resolve_files(raw: dict[str, Any], base_dir: Path | None) -> None:
    """Fill each file-backed field (:data:`RESOLVED`) that is empty with its file's text."""
    def sec(name: str) -> dict:
        raw[name] = raw.get(name) or {}
        return raw[name]

    cur, met, harm = sec("curation"), sec("metrics"), sec("harm")
    if not cur.get("prompt"):
        cur["prompt"] = read_conf_file(cur.get("prompt_file", CurationConfig.prompt_file), base_dir)
    if not met.get("judge_prompt"):
        met["judge_prompt"] = read_conf_file(met.get("judge_prompt_file", MetricsConfig.judge_prompt_file), base_dir)
    if not harm.get("head"):
        head_file = harm.get("head_file", HarmConfig.head_file)
        harm["head"] = read_conf_file(head_file, base_dir) if head_file else ""
    if harm.get("backend") == "guard" and not harm.get("guard_spec"):
        harm["guard_spec"] = read_conf_file(_guard_format_file(str(harm.get("guard_format", HarmConfig.guard_format))),
                                            base_dir)
    ev = raw.get("evaluation")
    if isinstance(ev, dict) and not ev.get("judge_prompt"):
        try:
            ev["judge_prompt"] = read_conf_file(ev.get("judge_prompt_file", EvaluationConfig.judge_prompt_file),
                                                base_dir)
        except ConfigError:
            if "llm" in (ev.get("judges") or ()):
                raise
            ev["judge_prompt"] = ""  # only the LLM judge reads it


def from_dict(raw: dict[str, Any], base_dir: Path | None = None, resolve_prompts: bool = True,
              root: type[Config] = Config) -> Config:
    """Build and validate a configuration from a nested dict: the curation job's (:class:`Config`), or with
    ``root=EvaluationRunConfig`` the evaluation job's.

    ``resolve_prompts``: the dict is a user's (a profile's keys): file texts in it are
    dropped and every file is read. False: the dict is a resolved configuration's
    (:meth:`Config.to_dict`); only file texts left empty are read.
    """
    raw = json.loads(json.dumps(raw or {}))
    if root is EvaluationRunConfig:
        raw.setdefault("evaluation", {})
    elif "evaluation" in raw:
        raise ConfigError("the evaluation section is the evaluation job's (cleancurate evaluate): build it with "
                          "root=EvaluationRunConfig, or load the profile with load_evaluation()")
    if resolve_prompts:
        _drop_resolved(raw)
    _resolve_files(raw, base_dir)
    harm = raw["harm"]
    if harm.get("threshold") is None or harm.get("gate_threshold") is None:
        if harm.get("backend") == "guard":
            fmt = _guard_format(harm)
            own = {"threshold": fmt.threshold, "gate_threshold": fmt.gate_threshold}
        else:
            own = _head_thresholds(harm.get("head") or "", harm.get("head_file"))
        raw["harm"] = {**harm, **{k: v for k, v in own.items() if harm.get(k) is None}}
    _rename_judges(raw)
    _drop_retired(raw)
    cfg = _build(root, raw, "")
    _validate(cfg)
    if isinstance(cfg, EvaluationRunConfig):
        _validate_evaluation(cfg)
    return cfg


#: keys that are no longer read, and what to do instead
RETIRED: dict[tuple[str, str], str] = {}


def _drop_retired(raw: dict[str, Any]) -> None:
    import warnings

    for (section, name), why in RETIRED.items():
        sec = raw.get(section)
        if isinstance(sec, dict) and name in sec:
            sec.pop(name)
            warnings.warn(f"{section}.{name} is ignored: {why}", FutureWarning, stacklevel=4)


def _rename_judges(raw: dict) -> None:
    """``evaluation.judges``: the old name ``harm_head`` is read as ``harm``, with a deprecation warning."""
    ev = raw.get("evaluation")
    judges = ev.get("judges") if isinstance(ev, dict) else None
    judges = [judges] if isinstance(judges, str) else judges
    if isinstance(judges, list) and "harm_head" in judges:
        import warnings

        warnings.warn("evaluation.judges: 'harm_head' is now 'harm' (the configured harm check, harm.backend); "
                      "the old name still works", FutureWarning, stacklevel=3)
        ev["judges"] = list(dict.fromkeys("harm" if j == "harm_head" else j for j in judges))


def _read_profile(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile's keys, over those of the profile it ``extends:`` (a name in conf/ or a path beside it)."""
    if path.resolve() in chain:
        names = " -> ".join(p.name for p in chain + (path.resolve(),))
        raise ConfigError(f"profiles extend each other in a circle: {names}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must name one profile, got {parent!r}")
    beside = path.parent / parent
    parent_path = beside if beside.is_file() else find_profile(parent)
    base = _read_profile(parent_path, chain + (path.resolve(),))
    base.pop("name", None)
    _deep_merge(base, raw)
    return base


def load(name_or_path: str, overrides: list[str] | None = None, root: type[Config] = Config) -> Config:
    """Load a profile (path or name in ``conf/``), apply overrides, validate: the curation job's
    configuration (:func:`load_evaluation` for the evaluation job's).

    A profile may start from another with ``extends: <profile>``: its keys are merged
    over the other's, section by section (a list replaces a list). A profile may hold
    both jobs' keys: the curation job checks an ``evaluation`` section and leaves it out.

    Raises:
        ConfigError: the file is missing, a key is unknown, or a value is invalid.
    """
    path = find_profile(name_or_path)
    raw = _read_profile(path)
    raw.setdefault("name", path.stem)
    other_job = raw.pop("evaluation", None) if root is Config else None  # the evaluation job's keys
    if overrides:
        base = root().user_dict()
        _deep_merge(base, raw)
        _apply_overrides(base, overrides)
        raw = base
    if other_job is not None:  # checked with the curation keys as this run has them, then left out
        from_dict({**raw, "evaluation": other_job}, base_dir=path.parent, root=EvaluationRunConfig)
    return from_dict(raw, base_dir=path.parent, root=root)


def load_evaluation(name_or_path: str, overrides: list[str] | None = None) -> "EvaluationRunConfig":
    """The evaluation job's configuration: :func:`load` with the ``evaluation`` root."""
    return load(name_or_path, overrides, root=EvaluationRunConfig)


def profile_keys(name_or_path: str, overrides: list[str] | None = None) -> set[str]:
    """The dotted keys a profile (with the profiles it extends) and the overrides set: the rest are defaults."""
    raw = _read_profile(find_profile(name_or_path))
    keys = {f"{sec}.{k}" for sec, v in raw.items() if isinstance(v, dict) for k in v}
    keys |= {k for k, v in raw.items() if not isinstance(v, dict)}
    return keys | {o.split("=", 1)[0].strip() for o in overrides or ()}


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
