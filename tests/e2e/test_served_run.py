"""The server backend against a real OpenAI-compatible server: llama.cpp's, serving the embedded GGUF on CPU.

The server is started once for the module (:func:`cleancurate.localserver.start`, what
``cleancurate serve`` runs) and requires an API key, which the job reads from an
environment variable.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests import jobdata
from cleancurate import config as C

pytestmark = [pytest.mark.spark, pytest.mark.model]

KEY_ENV = "CLEANCURATE_TEST_SERVER_KEY"
# set at collection, before the test session starts Spark: the executors' Python workers inherit the
# environment the JVM started with, as a cluster's get spark.executorEnv.<VAR>
KEY = os.environ.setdefault(KEY_ENV, f"sk-test-{uuid.uuid4().hex}")
#: |served - in-process| allowed, the same SmolLM2 both ways: llama.cpp computes with the Q4_1 weights, the
#: in-process model with them dequantized to float32. Measured on 2026-12-07 (14 guard rows, 6 judge rows; the test
#: now asks 6 and 4 to keep its time down):
#: guard harm probability max 0.049 (full vocabulary asked); judge 0-5 score max 0.032 with the full vocabulary,
#: 0.355 with the default 20 log-probabilities (digits outside them count 0; SmolLM2 puts little mass on digits)
GUARD_TOLERANCE = 0.08
JUDGE_TOLERANCE = 0.1
JUDGE_TOLERANCE_TOP20 = 0.6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The module's llama.cpp server: stop it and start it again on the same port."""

    def __init__(self, tmp: Path):
        self.port, self.key, self.log = _free_port(), KEY, tmp / "server.log"
        self.proc, self.url = None, f"http://127.0.0.1:{self.port}/v1"

    def start(self):
        from cleancurate.localserver import start

        with open(self.log, "ab") as log:
            self.proc, self.url = start(self.port, threads=2, api_key=self.key, log=log)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def post(self, path: str, body: dict) -> dict:
        """POST ``path`` under the server's root (``/v1/...`` for the API, ``/extras/...`` for llama.cpp's own)."""
        root = self.url.removesuffix("/v1")
        req = urllib.request.Request(f"{root}{path}", json.dumps(body).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.key}")
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("server"))
    s.start()
    yield s
    s.stop()


def served_config(served: Served, input_path: str, out: str, **server) -> C.Config:
    raw = jobdata.job_config(input_path, out, rounds=2)
    raw["model"]["backend"] = "server"
    raw["server"] = {"urls": [served.url], "model": "smollm2-135m", "api_key_env": KEY_ENV, "retries": 1,
                     "backoff_seconds": 0.2, "timeout_seconds": 120, "in_flight": 4, **server}
    return C.from_dict(raw)


def test_served_prompts_have_the_in_process_backends_token_ids(served, tmp_path):
    from cleancurate.models import load
    from cleancurate.udfs.rewrite import _prompts, served_tokenizer

    cfg = served_config(served, "unused", str(tmp_path / "out"))
    queries = pd.Series([q for _, q, _ in jobdata.GOOD])
    parents = pd.Series([r for _, _, r in jobdata.GOOD])
    in_process = _prompts(load(cfg, "lm").tokenizer, cfg.curation, queries, parents)
    rendered = _prompts(served_tokenizer(cfg), cfg.curation, queries, parents)
    assert rendered == in_process
    tok = load(cfg, "lm").tokenizer
    for prompt in rendered:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]  # what the in-process backend feeds the model
        assert served.post("/extras/tokenize", {"input": prompt})["tokens"] == ids
        got = served.post("/v1/completions", {"model": "smollm2-135m", "prompt": prompt, "max_tokens": 1, "seed": 1})
        assert got["usage"]["prompt_tokens"] == len(ids)


def test_a_served_run_killed_mid_round_resumes_with_exact_accounting_and_the_key_nowhere(
        spark, served, tmp_path, monkeypatch, capfd):
    from cleancurate.jobs.curation.stages import CurationJob

    src = jobdata.write_parquet(spark, str(tmp_path / "in.parquet"))
    out = tmp_path / "out"
    cfg = served_config(served, src, str(out))

    def kill_at_round_2(event):
        if event["event"] == "round_start" and event["round"] == 2:
            served.stop()  # the server goes away while round 2 generates

    with pytest.raises(Exception) as lost:
        CurationJob(cfg, spark=spark, progress=kill_at_round_2).run()
    assert f"inference server {served.url}/completions did not answer" in str(lost.value)
    inc = spark.read.format("delta").load(f"{out}/increments").toPandas()
    assert int(inc.last_complete_round.iloc[0]) == 1 and inc.status.iloc[0] == "running"

    # with the server down, the same command stops before committing anything, naming the URL
    from cleancurate.engine.served import ServerError

    with pytest.raises(ServerError, match=rf"{served.url}/models did not answer"):
        CurationJob(cfg, spark=spark).run()

    served.start()
    events = []
    res = CurationJob(cfg, spark=spark, progress=events.append).run()
    assert res.complete and res.resumed_from_round == 1
    assert [e["round"] for e in events if e["event"] == "round_start"] == [2]

    def table(name):
        return spark.read.format("delta").load(f"{out}/{name}").toPandas()

    c, cand, mix, q = res.counts, table("candidates"), table("mix"), table("quarantine")
    # rows in = rows out + rows quarantined, and every candidate generated by the server and scored
    assert c["input_rows"] == len(jobdata.rows()) == len(mix) + len(q[q.stage.isin(["validate", "screen"])])
    fresh = cand[cand["round"] > 0]
    per_round = fresh.groupby("round").size().to_dict()
    assert per_round[1] == 4 and per_round[2] >= 2  # 2 docs x 2 temperatures; then each beam member's grid
    assert fresh.error.isna().all() and fresh.ppl.notna().all() and (fresh.gen_tokens > 0).all()
    assert (fresh.gen_tokens <= cfg.curation.max_new_tokens).all()
    assert len(table("curated")) + len(q[q.stage == "curate"]) == c["selected_rows"] == 2

    # the API key is in no table, no log line, no config and no hash input
    for f in out.rglob("*"):
        if f.is_file():
            assert served.key.encode() not in f.read_bytes(), f
    printed = capfd.readouterr()
    assert served.key not in printed.out and served.key not in printed.err
    assert served.key not in json.dumps(cfg.to_dict()) and served.key not in served.log.read_text(errors="replace")
    assert cfg.hash == served_config(served, src, str(out), api_key_env="OTHER").hash
    assert cfg.hash == served_config(served, src, str(out), urls=["http://elsewhere:8000/v1"], in_flight=16).hash


def test_a_served_guard_and_judge_agree_with_the_in_process_ones(served, tmp_path, monkeypatch):
    """The same model (SmolLM2) as guard and judge, in-process (dequantized weights) and served by llama.cpp
    (the Q4_1 weights): scores in range, and within the tolerance measured here of each other."""
    import math

    from cleancurate.engine.guard import guard_batch
    from cleancurate.engine.harm import guard_format, load_guard
    from cleancurate.engine.judge import judge_batch
    from cleancurate.engine.served import ServedModel, load_or_serve
    from cleancurate.engine.served_scoring import guard_batch_served, judge_batch_served
    from cleancurate.models import load

    raw = jobdata.job_config("unused", str(tmp_path / "out"))
    raw["server"] = {"urls": [served.url], "api_key_env": KEY_ENV, "tokenizers": {"smollm2-135m": "embedded:smollm2-135m"}}
    raw["harm"] = {"backend": "guard", "guard_model": "server:smollm2-135m", "guard_format": "llama_guard_3"}
    raw["metrics"] = {"helpfulness": "judge", "judge_model": "server:smollm2-135m"}
    cfg = C.from_dict(raw)
    guard, judge = load_guard(cfg), load_or_serve(cfg, "judge")
    assert isinstance(guard, ServedModel) and isinstance(judge, ServedModel)
    rows = jobdata.GOOD[:3] + jobdata.HARMFUL[:2] + jobdata.SAFE[:1]  # each full-vocabulary answer is ~1 MB of JSON
    queries, responses = [q for _, q, _ in rows], [r for _, _, r in rows]

    lm = load(cfg, "lm")
    fmt = guard_format(cfg.harm)
    local = guard_batch(lm.model, lm.tokenizer, fmt, queries, responses)
    assert local.error.isna().all()
    # SmolLM2 is no guard: its verdict tokens rank past 10,000th, outside the 20 log-probabilities asked by
    # default, so a served row gets the documented error (the screen quarantines it) ...
    top20 = guard_batch_served(guard.client, guard.tokenizer, fmt, queries, responses, guard.top_logprobs)
    assert top20.harm.isna().all() and top20.error.str.startswith("guard_unscored: neither verdict").all()
    # ... and asked for the whole vocabulary (49,152 tokens), the served score is the in-process one
    remote = guard_batch_served(guard.client, guard.tokenizer, fmt, queries, responses, 49152)
    assert remote.error.isna().all() and ((remote.harm >= 0) & (remote.harm <= 1)).all()
    gap = (remote.harm - local.harm).abs()
    assert gap.max() < GUARD_TOLERANCE, gap.round(4).tolist()

    m = cfg.metrics
    local_j = judge_batch(lm.model, lm.tokenizer, queries[:4], responses[:4], template=m.judge_prompt,
                          rubrics=m.judge_rubrics, min_digit_mass=0.0)
    for k, tolerance in ((49152, JUDGE_TOLERANCE), (judge.top_logprobs, JUDGE_TOLERANCE_TOP20)):
        remote_j = judge_batch_served(judge.client, judge.tokenizer, queries[:4], responses[:4],
                                      template=m.judge_prompt, rubrics=m.judge_rubrics, min_digit_mass=0.0, k=k)
        assert remote_j.error.isna().all() and ((remote_j.helpfulness >= 0) & (remote_j.helpfulness <= 5)).all()
        gap_j = (remote_j.helpfulness - local_j.helpfulness).abs()
        assert not any(math.isnan(x) for x in gap_j) and gap_j.max() < tolerance, (k, gap_j.round(4).tolist())
