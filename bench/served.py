"""Generation through an OpenAI-compatible server vs the in-process backend, same rows, same cores.

    .venv/bin/python -m bench.served [--docs 8] [--max-new-tokens 64] [--in-flight 1,4,16]
                                     [--threads 2] [--url URL --model NAME [--config PROFILE]]

Rows: ``docs`` sample documents x the demo profile's (temperature, top_p) grid (2 x 2),
prompts rendered with the embedded tokenizer and the demo revision instruction, one
seed per row: what a round of ``make demo`` asks the rewrite UDF.

*In-process*: :func:`cleancurate.engine.generate.generate_batch` (transformers, the
embedded model dequantized, ``runtime.gen_batch_size`` 16, ``threads`` torch threads).
*Served*: :func:`cleancurate.engine.served.generate_batch_served` with 1, 4 and 16
requests in flight. Without ``--url`` the benchmark starts llama.cpp's server on the
embedded GGUF (``cleancurate serve --no-logprobs``, ``threads`` threads; ``--logprobs`` keeps
every prompt token's logits, as a served judge or guard needs) and stops it afterwards; with
``--url`` (e.g. ``vllm serve`` on a GPU node) it measures that server; give ``--config`` a
profile whose ``model.name`` is the served model's folder, so the prompts are its own and the
in-process run (on the GPU when there is one) is the same model.

Prints one JSON object: per run the wall seconds, generated tokens, tokens/s and its
ratio to the in-process run. The in-process and served texts differ (different sampler
implementations, and llama.cpp computes with the quantized weights); the token counts
are of each run's own texts.
"""

from __future__ import annotations

import argparse
import socket
import time

from bench._common import begin, emit, environment, sample_rows, set_threads


def _rows(tok, cfg, docs: int):
    from cleancurate.engine.prompting import build_prompts

    rows = sample_rows(docs)
    cur = cfg.curation
    doc_prompts = build_prompts(tok, cur.prompt, cur.system_prompt, [r["query"] for r in rows],
                                [r["response"] for r in rows])
    prompts, temps, top_ps, seeds = [], [], [], []
    for p in doc_prompts:
        for t in cur.temperatures:
            for tp in cur.top_ps:
                prompts.append(p)
                temps.append(t)
                top_ps.append(tp)
                seeds.append(1000 + len(seeds))
    return prompts, temps, top_ps, seeds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="demo", help="profile whose model.name renders the prompts and runs in-process")
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--in-flight", default="1,4,16")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in-process, and the local server's threads")
    ap.add_argument("--url", default=None, help="a running server's base URL (.../v1); default: start llama.cpp's")
    ap.add_argument("--model", default=None, help="the served model's name (with --url)")
    ap.add_argument("--logprobs", action="store_true",
                    help="start the local server with log-probabilities on (as a served judge or guard needs)")
    args = ap.parse_args(argv)
    out = begin()
    set_threads(args.threads)

    from cleancurate import config as C
    from cleancurate.engine.generate import generate_batch
    from cleancurate.engine.served import ServerClient, generate_batch_served, stop_strings
    from cleancurate.localserver import SERVED_NAME, start
    from cleancurate.models import get_model

    cfg = C.load(args.config)
    lm = get_model(cfg.model.name, device="auto")
    prompts, temps, top_ps, seeds = _rows(lm.tokenizer, cfg, args.docs)
    out["inputs"] = {"docs": args.docs, "rows": len(prompts), "max_new_tokens": args.max_new_tokens,
                     "grid": [list(cfg.curation.temperatures), list(cfg.curation.top_ps)], "threads": args.threads,
                     "server": args.url or "llama.cpp (llama-cpp-python[server]) on the embedded GGUF, CPU",
                     "local_server_logprobs": args.logprobs if args.url is None else None}
    out["environment"] = environment()

    t0 = time.perf_counter()
    df = generate_batch(lm.model, lm.tokenizer, prompts, temps, top_ps, seeds, max_new_tokens=args.max_new_tokens,
                        batch_size=cfg.runtime.gen_batch_size or 16)
    base_s = time.perf_counter() - t0
    base_tokens = int(df.gen_tokens.sum())
    runs = {"in_process": {"seconds": round(base_s, 2), "gen_tokens": base_tokens, "errors": int(df.error.notna().sum()),
                           "tokens_per_s": round(base_tokens / base_s, 1), "ratio": 1.0, "device": lm.device}}

    proc = None
    url, model = args.url, args.model
    if url is None:
        proc, url = start(_free_port(), threads=args.threads, logprobs=args.logprobs)
        model = SERVED_NAME
    try:
        stops = stop_strings(lm.tokenizer)
        for k in [int(x) for x in args.in_flight.split(",")]:
            client = ServerClient((url,), model, in_flight=k, timeout=600.0, retries=2)
            t0 = time.perf_counter()
            got = generate_batch_served(client, prompts, temps, top_ps, seeds, max_new_tokens=args.max_new_tokens,
                                        stops=stops)
            s = time.perf_counter() - t0
            tokens = int(got.gen_tokens.sum())
            runs[f"served_in_flight_{k}"] = {
                "seconds": round(s, 2), "gen_tokens": tokens, "errors": int(got.error.notna().sum()),
                "tokens_per_s": round(tokens / s, 1),
                "ratio": round((tokens / s) / (base_tokens / base_s), 3)}
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    out["runs"] = runs
    emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
