"""The harm check: the probability that a response is a harmful answer to its query, by the configured backend.

``harm.backend`` picks one check for the whole job:

- ``head`` (default, CPU): :class:`cleancurate.safety.HarmHead`, a logistic head over the
  encoder's embeddings (:func:`screen_batch`; :func:`harm_head` parses it once per worker);
- ``guard``: a safety classifier LM (``harm.guard_model``) asked in the way its format file
  says (``harm.guard_format``), scored from its verdict-token probabilities
  (:func:`cleancurate.engine.guard.guard_batch`).

:func:`check_batch` runs the configured one. The curation job's safety screen runs it on
every valid original before selection (a language model must not polish harmful text),
the candidate scorer on every candidate for the gate's ``harmful`` rule
(:mod:`~cleancurate.engine.scorer`), and the evaluation job as its ``harm`` judge. Every
variant returns ``harm`` and ``error`` per row, NaN and the error for a row that could not
be scored, so a caller treats an unscorable row the same whichever backend ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pandas as pd

from cleancurate.batching import error_text
from cleancurate.engine.embedding import embed
from cleancurate.configsections import HarmConfig, RuntimeConfig
from cleancurate.schemas.udf import SCREEN_COLUMNS

if TYPE_CHECKING:
    from cleancurate.config import Config

_HEADS: dict = {}
_FORMATS: dict = {}
_GIB = 1024**3


def backend(harm: HarmConfig) -> str | None:
    """The configured check, ``"head"`` or ``"guard"``, or None when it is off (no head file, no guard model)."""
    if harm.backend == "guard":
        return "guard" if harm.guard_model else None
    return "head" if harm.head else None


def describe(harm: HarmConfig) -> str:
    """Which check scored a row, for the quarantine's ``detail`` and reports: backend, format and model."""
    if harm.backend == "guard":
        return f"backend=guard format={harm.guard_format} model={harm.guard_model}"
    return f"backend=head head={harm.head_file}"


def harm_head(harm: HarmConfig):
    """The configured :class:`cleancurate.safety.HarmHead` (parsed once per worker), or None."""
    if not harm.head:
        return None
    if harm.head not in _HEADS:
        from cleancurate.safety import HarmHead

        _HEADS[harm.head] = HarmHead.from_json(harm.head)
    return _HEADS[harm.head]


def guard_format(harm: HarmConfig):
    """The configured :class:`~cleancurate.engine.guard.GuardFormat` (parsed once per worker)."""
    if harm.guard_spec not in _FORMATS:
        from cleancurate.engine.guard import GuardFormat

        _FORMATS[harm.guard_spec] = GuardFormat.from_yaml(harm.guard_spec, harm.guard_format)
    return _FORMATS[harm.guard_spec]


def load_guard(cfg: Config):
    """The worker's guard model (``harm.guard_model``), loaded once and cached like every model:
    on the task's GPU in bf16 where supported, never downloaded (``model.allow_network``); or, for
    ``server:<name>``, the served guard (:class:`~cleancurate.engine.served.ServedModel`)."""
    from cleancurate.engine.served import load_or_serve

    return load_or_serve(cfg, "guard")


def preflight(cfg: Config) -> None:
    """On the driver, before any model work: the guard model's tokenizer and config load, and the format
    works with them (:func:`~cleancurate.engine.guard.check_format`). Loads no weights."""
    from transformers import AutoConfig, AutoTokenizer

    from cleancurate.engine.guard import check_format, context_length
    from cleancurate.config import served_name
    from cleancurate.models import ModelError, load_tokenizer, resolve

    spec = cfg.harm.guard_model
    if served_name(spec):  # the server holds the model: its tokenizer must work with the format
        tokenizer = load_tokenizer(cfg.server.tokenizers[served_name(spec)], cfg.model.allow_network)
        check_format(guard_format(cfg.harm), tokenizer, 10 ** 9)  # a prompt over the server's context is a row error
        return
    path, _ = resolve(spec)
    opts = dict(trust_remote_code=False, local_files_only=not cfg.model.allow_network)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **opts)
        conf = AutoConfig.from_pretrained(path, **opts)
    except OSError as exc:
        raise ModelError(f"cannot load the guard model '{spec}' offline ({exc.__class__.__name__}: {exc}); "
                         "name a local directory, or pre-populate the Hugging Face cache") from exc
    check_format(guard_format(cfg.harm), tokenizer, context_length(conf))


def guard_budget(model, configured: int | None, beside: Sequence = ()) -> int:
    """Guard scoring's token budget: ``runtime.token_budget``, or (null) one sized from the GPU's memory
    with room left for the weights of the models ``beside`` it in the same worker (CPU: 1024)."""
    if configured:
        return int(configured)
    from cleancurate.batching import scoring_token_budget

    others = sum(p.numel() * p.element_size() for m in beside for p in m.parameters()) / _GIB
    return scoring_token_budget(model, reserve_gib=4.0 + others) or 1024


def check_batch(harm: HarmConfig, runtime: RuntimeConfig, encoder, guard, queries: Sequence[str],
                responses: Sequence[str], *, beside: Sequence = ()) -> pd.DataFrame:
    """The configured harm check of each (query, response), in input order: ``harm`` and ``error``.

    Args:
        harm: the ``harm`` section (which backend, its head or guard format).
        runtime: the ``runtime`` section (the guard's token budget and compilation).
        encoder: the sentence encoder (``LoadedModel``) the head reads; unused by the guard.
        guard: the guard model (``LoadedModel``, :func:`load_guard`); unused by the head.
        beside: other models resident in this worker (sizes the guard's automatic budget).
    """
    kind = backend(harm)
    if kind == "head":
        return screen_batch(encoder.model, encoder.tokenizer, harm_head(harm), queries, responses)
    if kind is None:
        raise ValueError("no harm check is configured: set harm.head_file (harm.backend head) or "
                         "harm.guard_model (harm.backend guard)")
    from cleancurate.batching import resolve_score_compile
    from cleancurate.engine.guard import guard_batch
    from cleancurate.engine.served import ServedModel

    if isinstance(guard, ServedModel):
        from cleancurate.engine.served_scoring import guard_batch_served

        return guard_batch_served(guard.client, guard.tokenizer, guard_format(harm), list(queries), list(responses),
                                  guard.top_logprobs)
    return guard_batch(guard.model, guard.tokenizer, guard_format(harm), list(queries), list(responses),
                       token_budget=guard_budget(guard.model, runtime.token_budget, beside),
                       compile=resolve_score_compile(guard.model, runtime.score_compile))


def screen_batch(model, tokenizer, head, queries: Sequence[str], responses: Sequence[str]) -> pd.DataFrame:
    """The head's harm probability per (query, response), in input order; a failing row gets an ``error``."""
    n = len(queries)
    if n == 0:
        return pd.DataFrame({"harm": [], "error": []})[SCREEN_COLUMNS]
    try:
        q = embed(model, tokenizer, list(queries))
        t = embed(model, tokenizer, list(responses))
        return pd.DataFrame({"harm": head.score(q, t, responses), "error": [None] * n})[SCREEN_COLUMNS]
    except Exception as exc:  # noqa: BLE001 - isolate the failing row by halving
        if n == 1:
            return pd.DataFrame({"harm": [float("nan")], "error": [error_text(exc)]})[SCREEN_COLUMNS]
        mid = n // 2
        return pd.concat([screen_batch(model, tokenizer, head, queries[:mid], responses[:mid]),
                          screen_batch(model, tokenizer, head, queries[mid:], responses[mid:])], ignore_index=True)
