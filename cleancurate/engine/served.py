"""Models behind an OpenAI-compatible inference server (``backend: server``).

vLLM (``vllm serve``), SGLang, llama.cpp's server and Databricks model serving endpoints
all answer the OpenAI API; this module is the job's client for it, with no dependency
beyond the standard library:

- :class:`ServerClient` sends requests to one or several base URLs (``.../v1``), at most
  ``server.in_flight`` at a time per Spark task, with a timeout, and retries a request
  answered 429 or 5xx, or not answered at all, with exponential backoff (``Retry-After``
  honoured). A request the server answers with an error after its retries gives that
  row an ``error``; a server that cannot be reached after them raises
  :class:`ServerError`, which fails the task and so the round: the same command resumes
  the round once the server is back, and nothing half-done is committed.
- :func:`preflight` (the driver, before anything is committed) checks that each URL
  answers ``GET /models`` and serves ``server.model``; otherwise the job stops with a
  message naming the URL and what came back.
- The API key is read from the environment variable ``server.api_key_env`` on each
  worker and sent only in the ``Authorization`` header: it is in no config, hash, table,
  log, error message or report (on Databricks, ``spark.executorEnv.<VAR>
  {{secrets/<scope>/<key>}}`` puts a secret there).

Generation (:func:`generate_batch_served`) keeps each candidate's semantics: one request
per (document, temperature, top_p) with its own seed, ``max_tokens``, the chat
template's end-of-turn strings as stops, the same prompt. The prompt is rendered on the
client with the model's own tokenizer and chat template (``/completions``), so its tokens
are the in-process backend's; with ``server.tokenizer: server`` the server renders it
(``/chat/completions``). A document's candidates are sent together, so a server with
prefix caching (vLLM's ``--enable-prefix-caching``, llama.cpp's prompt cache) computes
their shared prompt once.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from cleancurate.config import served_name
from cleancurate.schemas.udf import GENERATION_COLUMNS
from cleancurate.textrules import trim_unfinished

if TYPE_CHECKING:
    from cleancurate.config import Config, ServerConfig

#: statuses worth a retry: rate limited, or the server failing for the moment
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: ``server.tokenizer`` value that leaves prompt rendering to the server (the chat API)
SERVER_RENDERS = "server"


class ServerError(RuntimeError):
    """The inference server cannot be used: unreachable, or not serving the configured model."""


class RequestError(RuntimeError):
    """One request failed after its retries while the server answered: that row gets an ``error``."""


def _key(server: ServerConfig) -> str | None:
    """The API key from the environment variable ``server.api_key_env`` (None when no variable is named)."""
    if not server.api_key_env:
        return None
    key = os.environ.get(server.api_key_env)
    if not key:
        raise ServerError(f"server.api_key_env names {server.api_key_env}, which is not set on this "
                          "process (on Databricks: spark.executorEnv.<VAR> {{secrets/<scope>/<key>}})")
    return key


@dataclass(frozen=True)
class ServerClient:
    """Requests to an OpenAI-compatible server: spread over ``urls``, retried, at most ``in_flight`` at once.

    Build it with :meth:`from_config` on each worker; the key comes from the environment there.
    """

    urls: tuple[str, ...]
    model: str | None
    in_flight: int = 4
    timeout: float = 120.0
    retries: int = 4
    backoff: float = 1.0
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, server: ServerConfig) -> "ServerClient":
        """The client of a :class:`~cleancurate.config.ServerConfig` (``server`` section)."""
        if not server.urls:
            raise ServerError("server.urls is empty: give the server's base URL, e.g. http://localhost:8000/v1")
        return cls(tuple(u.rstrip("/") for u in server.urls), server.model, server.in_flight,
                   server.timeout_seconds, server.retries, server.backoff_seconds, _key(server))

    # ---------------------------------------------------------------- transport
    def _send(self, url: str, body: dict | None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def request(self, path: str, body: dict | None = None, key: int = 0) -> dict:
        """``POST`` (``GET`` without ``body``) ``path`` on one of the URLs (chosen by ``key``), with retries.

        Raises:
            RequestError: the server answered with an error status after the retries.
            ServerError: no answer (refused, reset, timed out) after the retries.
        """
        url = f"{self.urls[key % len(self.urls)]}{path}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            wait = self.backoff * (2 ** attempt) * (0.5 + random.random() / 2)
            try:
                return self._send(url, body)
            except urllib.error.HTTPError as exc:
                detail = _body_text(exc)
                last = RequestError(f"{url} answered {exc.code}: {detail}")
                if exc.code not in RETRY_STATUS:
                    raise last from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = ServerError(f"inference server {url} did not answer ({type(reason).__name__}: {reason}) "
                                   f"after {attempt + 1} tries; the round fails and the same command resumes it "
                                   "once the server is back")
            except ValueError as exc:  # not JSON
                last = RequestError(f"{url} answered something that is not JSON ({exc})")
            if attempt < self.retries:
                time.sleep(wait)
        raise last

    def map(self, fn, items: Sequence) -> list:
        """``fn(item, i)`` for every item, ``in_flight`` at a time, results in input order."""
        if len(items) <= 1 or self.in_flight <= 1:
            return [fn(x, i) for i, x in enumerate(items)]
        with ThreadPoolExecutor(max_workers=min(self.in_flight, len(items))) as pool:
            return list(pool.map(fn, items, range(len(items))))

    # ---------------------------------------------------------------- calls
    def probe(self, url: str, model: str | None = None) -> "ServerClient":
        """This client narrowed to ``url`` (and ``model``), one request at a time, no retry: start-up checks."""
        return replace(self, urls=(url,), model=model or self.model, in_flight=1, retries=0)

    def models(self, url: str) -> list[str]:
        """The model names ``url`` serves (``GET /models``)."""
        got = self.probe(url).request("/models")
        return [m.get("id") for m in got.get("data", []) if isinstance(m, dict)]

    # a prompt picks its URL by its hash: a document's candidates share one prompt, so one server and its prefix cache
    def complete(self, prompt: str, **params) -> dict:
        """The first choice of a ``/completions`` request (``text``, ``finish_reason``, ``logprobs``) and ``usage``."""
        key = zlib.crc32(prompt.encode("utf-8"))
        out = self.request("/completions", {"model": self.model, "prompt": prompt, **params}, key)
        return _first_choice(out)

    def chat(self, messages: list[dict], **params) -> dict:
        """The first choice of a ``/chat/completions`` request, its message's text as ``text``."""
        key = zlib.crc32(json.dumps(messages).encode("utf-8"))
        out = self.request("/chat/completions", {"model": self.model, "messages": messages, **params}, key)
        choice = _first_choice(out)
        choice["text"] = (choice.get("message") or {}).get("content") or ""
        return choice


def _body_text(exc: urllib.error.HTTPError, limit: int = 300) -> str:
    try:
        text = exc.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        text = ""
    return " ".join(text.split())[:limit] or exc.reason or "no detail"


def _first_choice(out: dict) -> dict:
    choices = out.get("choices") or []
    if not choices:
        raise RequestError(f"the server's answer has no choices: {json.dumps(out)[:200]}")
    return {**choices[0], "usage": out.get("usage") or {}}


def preflight(server: ServerConfig, names: Sequence[str] | None = None) -> None:
    """Stop before anything is committed unless every URL answers and serves each of ``names``
    (default: ``server.model``)."""
    client = ServerClient.from_config(server)
    wanted = [server.model] if names is None else list(names)
    for url in client.urls:
        if not server.list_models:  # an endpoint that lists no models: each name must answer one token
            for name in wanted:
                try:
                    client.probe(url, name).complete("Hello", max_tokens=1)
                except (ServerError, RequestError) as exc:
                    raise ServerError(f"served models: {name!r} at {url}: {exc}") from None
            continue
        try:
            served = client.models(url)
        except (ServerError, RequestError) as exc:
            raise ServerError(f"served models: {exc}") from None
        for name in wanted:
            if name not in served:
                raise ServerError(f"served models: {url} serves {served or 'no model'}, not {name!r}; "
                                  "set server.model (or the server:<name> spec) to the served name")


@dataclass(frozen=True)
class ServedModel:
    """A judge or guard behind the server: the client for its served name, and the tokenizer that renders its prompts."""

    client: ServerClient
    tokenizer: object
    top_logprobs: int = 20


def served_model(cfg: Config, spec: str) -> ServedModel:
    """The :class:`ServedModel` of a ``server:<name>`` spec: the ``server`` section's URLs and key, that name,
    and the tokenizer ``server.tokenizers[<name>]`` names (loaded alone, no weights)."""
    from cleancurate.models import ModelError, load_tokenizer

    name = served_name(spec)
    tok_spec = cfg.server.tokenizers.get(name)
    if not tok_spec:
        raise ModelError(f"the served model {name!r} needs server.tokenizers.{name}: the model spec of its tokenizer "
                         "(a local folder or embedded:...), which renders its prompts and finds its answer tokens")
    client = replace(ServerClient.from_config(cfg.server), model=name)
    return ServedModel(client, load_tokenizer(tok_spec, cfg.model.allow_network), cfg.server.top_logprobs)


def load_or_serve(cfg: Config, role: str):
    """The worker's model for ``role`` (``judge``, ``guard``, ...): a :class:`ServedModel` when its spec is
    ``server:<name>``, else the loaded model (:func:`cleancurate.models.load`)."""
    from cleancurate.models import ModelSpec, load

    spec = ModelSpec.of(cfg, role).spec
    return served_model(cfg, spec) if served_name(spec) else load(cfg, role)


def served_names(cfg: Config) -> list[str]:
    """Every served model name a run calls: the generation model's, the guard's, the judge's."""
    from cleancurate.config import served_roles

    return list(dict.fromkeys(n for n in served_roles(cfg).values() if n))


# ------------------------------------------------------------------ generation
def stop_strings(tokenizer) -> list[str]:
    """The end-of-turn strings a served generation stops at (the tokens the in-process backend stops at)."""
    from cleancurate.engine.prompting import stop_token_ids

    if tokenizer is None:
        return []
    return sorted({tokenizer.convert_ids_to_tokens(t) for t in stop_token_ids(tokenizer)} - {None})


def generate_batch_served(client: ServerClient, prompts: Sequence, temps: Sequence[float], top_ps: Sequence[float],
                          seeds: Sequence[int], *, max_new_tokens: int, stops: Sequence[str]) -> pd.DataFrame:
    """One served generation per prompt with per-row settings and seeds; a failed request gives its row an ``error``.

    Args:
        prompts: rendered prompt texts (``/completions``), or chat message lists (``/chat/completions``).
        stops: stop strings (:func:`stop_strings`).

    Raises:
        ServerError: the server could not be reached: the batch (and its task and round) fails.

    Returns:
        DataFrame with ``text``, ``gen_tokens`` and ``error`` in input order.
    """
    def one(i: int, _pos: int):
        params = dict(max_tokens=int(max_new_tokens), temperature=float(temps[i]), top_p=float(top_ps[i]),
                      seed=int(seeds[i]) % (2 ** 31), stop=list(stops) or None)
        p = prompts[i]
        try:
            got = client.complete(p, **params) if isinstance(p, str) else client.chat(p, **params)
        except RequestError as exc:
            return None, 0, str(exc)[:300]
        finish = got.get("finish_reason")
        if finish not in ("stop", "length"):
            return None, 0, f"server: request ended with finish_reason={finish!r}"
        text = (got.get("text") or "").strip()
        tokens = int((got.get("usage") or {}).get("completion_tokens") or 0)
        return (trim_unfinished(text) if finish == "length" else text), tokens, None

    rows = client.map(one, list(range(len(prompts))))
    df = pd.DataFrame(rows, columns=GENERATION_COLUMNS)
    df["gen_tokens"] = df["gen_tokens"].astype("int32")
    return df
