"""The inference-server client's retries, timeouts and errors, against a small hand-written HTTP server.

A real server (llama.cpp's) is used by tests/e2e/test_served_run.py; here a scripted one
answers each request as a test says, so the retry and failure paths are exact.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from cleancurate import config as C
from cleancurate.engine.served import (
    RequestError, ServerClient, ServerError, generate_batch_served, preflight,
)


class Scripted:
    """A local HTTP server answering from a script: a list of (status, body, delay) per request, the last repeated."""

    def __init__(self, script):
        self.script, self.seen = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                outer.seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, payload, delay = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                time.sleep(delay)
                if callable(payload):
                    payload = payload(body)
                if isinstance(payload, tuple):  # (status, body) chosen by the request
                    status, payload = payload
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(body):
    return {"choices": [{"text": f" revised at {body['temperature']}", "finish_reason": "stop"}],
            "usage": {"completion_tokens": 4, "prompt_tokens": 10}}


def client(url, **kw):
    return ServerClient((url,), "served-model", **{"in_flight": 2, "timeout": 2.0, "retries": 2, "backoff": 0.01, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_429_and_503_are_retried_then_the_answer_is_used():
    srv = Scripted([(429, {"error": "slow down"}, 0), (503, {"error": "busy"}, 0), (200, completion, 0)])
    try:
        df = generate_batch_served(client(srv.url), ["p"], [0.5], [0.9], [7], max_new_tokens=8, stops=["<|im_end|>"])
        assert df.to_dict("records") == [{"text": "revised at 0.5", "gen_tokens": 4, "error": None}]
        posts = [s for s in srv.seen if s["path"] == "/v1/completions"]
        assert len(posts) == 3  # two refusals, then the answer
        assert posts[-1]["body"] == {"model": "served-model", "prompt": "p", "max_tokens": 8, "temperature": 0.5,
                                     "top_p": 0.9, "seed": 7, "stop": ["<|im_end|>"]}
    finally:
        srv.close()


def test_a_request_the_server_refuses_gives_its_row_an_error_and_the_others_their_text():
    def answer(body):  # a 400 is the request's own fault: never retried
        return (400, {"error": "prompt too long"}) if body["temperature"] == 0.7 else completion(body)

    srv = Scripted([(200, answer, 0)])
    try:
        df = generate_batch_served(client(srv.url), ["a", "b", "c"], [0.5, 0.7, 0.9], [1.0] * 3, [1, 2, 3],
                                   max_new_tokens=8, stops=[])
        assert (df.text[0], df.text[2]) == ("revised at 0.5", "revised at 0.9") and pd.isna(df.text[1])
        assert df.error[1].endswith('answered 400: {"error": "prompt too long"}') and df.gen_tokens[1] == 0
        assert pd.isna(df.error[0]) and pd.isna(df.error[2])
        assert len(srv.seen) == 3
    finally:
        srv.close()


def test_persistent_5xx_is_a_row_error_after_the_retries():
    srv = Scripted([(500, {"error": "internal"}, 0)])
    try:
        df = generate_batch_served(client(srv.url), ["p"], [0.5], [1.0], [1], max_new_tokens=8, stops=[])
        assert pd.isna(df.text[0]) and "answered 500" in df.error[0]
        assert len(srv.seen) == 3  # the first try and two retries
    finally:
        srv.close()


def test_a_server_that_does_not_answer_fails_the_batch_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(ServerError, match=rf"inference server {url}/completions did not answer .* after 3 tries"):
        generate_batch_served(client(url), ["p"], [0.5], [1.0], [1], max_new_tokens=8, stops=[])


def test_a_request_over_its_timeout_is_retried_then_fails_the_batch():
    srv = Scripted([(200, completion, 1.5)])
    try:
        t0 = time.time()
        with pytest.raises(ServerError, match="did not answer"):
            client(srv.url, timeout=0.5, retries=1).complete("p", max_tokens=1)
        assert time.time() - t0 < 3.0
    finally:
        srv.close()


def test_requests_run_in_flight_together_and_keep_input_order():
    srv = Scripted([(200, completion, 0.3)])
    try:
        t0 = time.time()
        temps = [0.1 * i for i in range(8)]
        df = generate_batch_served(client(srv.url, in_flight=8), [f"p{i}" for i in range(8)], temps, [1.0] * 8,
                                   list(range(8)), max_new_tokens=8, stops=[])
        assert time.time() - t0 < 8 * 0.3  # not one after another
        assert list(df.text) == [f"revised at {t}" for t in temps]
    finally:
        srv.close()


def test_the_api_key_is_read_from_the_environment_and_sent_only_as_a_header(monkeypatch):
    srv = Scripted([(200, {"data": [{"id": "served-model"}]}, 0)])
    try:
        monkeypatch.setenv("CC_TEST_KEY", "sk-secret-123")
        cfg = C.load("demo", ["model.backend=server", f"server.urls=[{srv.url}]", "server.model=served-model",
                              "server.api_key_env=CC_TEST_KEY"])
        preflight(cfg.server)
        assert srv.seen[0]["auth"] == "Bearer sk-secret-123" and srv.seen[0]["path"] == "/v1/models"
        cl = ServerClient.from_config(cfg.server)
        assert "sk-secret" not in repr(cl) and "sk-secret" not in json.dumps(cfg.to_dict())
        monkeypatch.delenv("CC_TEST_KEY")
        with pytest.raises(ServerError, match="server.api_key_env names CC_TEST_KEY, which is not set"):
            ServerClient.from_config(cfg.server)
    finally:
        srv.close()


def test_preflight_stops_on_a_server_serving_another_model_or_none():
    srv = Scripted([(200, {"data": [{"id": "other-model"}]}, 0)])
    try:
        cfg = C.load("demo", ["model.backend=server", f"server.urls=[{srv.url}]", "server.model=served-model"])
        with pytest.raises(ServerError, match=rf"{srv.url} serves \[.other-model.\], not .served-model."):
            preflight(cfg.server)
    finally:
        srv.close()
    down = f"http://127.0.0.1:{free_port()}/v1"
    cfg = C.load("demo", ["model.backend=server", f"server.urls=[{down}]", "server.model=m", "server.retries=0"])
    with pytest.raises(ServerError, match=rf"served models: inference server {down}/models did not answer"):
        preflight(cfg.server)


def test_server_settings_outside_the_served_model_leave_the_hash_alone():
    base = ["model.backend=server", "server.urls=[http://a:8000/v1]", "server.model=m"]
    h = C.load("demo", base).hash
    assert C.load("demo", base + ["server.urls=[http://b:8000/v1, http://c:8000/v1]", "server.in_flight=16",
                                  "server.api_key_env=KEY", "server.retries=9"]).hash == h
    assert C.load("demo", base + ["server.model=n"]).hash != h
    assert C.load("demo").hash == C.load("demo", ["server.model=ignored"]).hash  # not served: no part of the hash
    with pytest.raises(C.ConfigError, match="model.backend server needs server.model"):
        C.load("demo", ["model.backend=server", "server.urls=[http://a:8000/v1]"])
    with pytest.raises(C.ConfigError, match="server.urls must be http"):
        C.load("demo", ["model.backend=server", "server.urls=[a:8000]", "server.model=m"])
    with pytest.raises(C.ConfigError, match="server.urls must be http"):  # a served guard alone is checked the same
        C.load("demo", ["harm.backend=guard", "harm.guard_model=server:g", "server.urls=[a:8000]",
                        "server.tokenizers={g: embedded:smollm2-135m}"])


def test_verdict_scores_from_top_logprobs_and_a_missing_verdict_at_its_bound():
    import math

    from cleancurate.engine.served_scoring import verdict_score

    ln = math.log
    top = {" safe": ln(0.7), " unsafe": ln(0.2), " maybe": ln(0.1)}
    assert verdict_score(top, {" unsafe"}, {" safe"}) == pytest.approx((0.2 / 0.9, None))
    # unsafe outside the top k: at most as likely as the least likely listed token -> an upper bound of harm
    score, err = verdict_score({" safe": ln(0.9), " a": ln(0.05)}, {" unsafe"}, {" safe"})
    assert err is None and score == pytest.approx(0.05 / 0.95)
    # safe outside the top k: harm is at least this, near 1
    score, err = verdict_score({" unsafe": ln(0.95), " a": ln(0.01)}, {" unsafe"}, {" safe"})
    assert err is None and score == pytest.approx(0.95 / 0.96)
    score, err = verdict_score({" a": ln(0.5), " b": ln(0.4)}, {" unsafe"}, {" safe"})
    assert math.isnan(score) and err.startswith("guard_unscored: neither verdict") and "server.top_logprobs" in err


def test_next_token_logprobs_asks_one_token_at_temperature_0_and_reports_a_server_without_logprobs():
    from cleancurate.engine.served_scoring import next_token_logprobs

    def answer(body):
        if body["prompt"] == "bare":
            return {"choices": [{"text": "x", "finish_reason": "length", "logprobs": None}]}
        return {"choices": [{"text": "1", "finish_reason": "length",
                             "logprobs": {"top_logprobs": [{"1": -0.1, "2": -2.5}]}}]}

    srv = Scripted([(200, answer, 0)])
    try:
        got = next_token_logprobs(client(srv.url), ["judge me", "bare"], k=5)
        assert got[0] == {"1": -0.1, "2": -2.5} and got[1].startswith("server_no_logprobs")
        body = srv.seen[0]["body"]
        assert (body["max_tokens"], body["temperature"], body["logprobs"]) == (1, 0.0, 5)
    finally:
        srv.close()
