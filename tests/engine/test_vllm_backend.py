"""The vLLM backend (through the rewrite factory) against a fake engine: prompts, per-row settings and seeds,
order, errors."""

import dataclasses
import sys
from types import ModuleType, SimpleNamespace

import pandas as pd
import pytest

from cleancurate import config as C
from tests.fakes import CharTokenizer


def vllm_cfg(model_dir, dtype="bfloat16", max_new_tokens=32) -> C.Config:
    """The demo configuration with the vLLM backend on a local model folder and a short prompt."""
    cfg = C.load("demo", [f"model.name={model_dir}", "model.backend=vllm", f"model.dtype={dtype}"])
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, max_context=None),
        curation=dataclasses.replace(cfg.curation, prompt="Revise the response.", system_prompt=None,
                                     max_new_tokens=max_new_tokens))


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeLLM:
    """Records every call; answers each prompt with a text derived from the prompt and its settings."""

    instances: list = []

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.calls: list[tuple[list[str], list]] = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return CharTokenizer()

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((list(prompts), list(params)))
        if any("BOOM" in p for p in prompts):
            raise ValueError("prompt is longer than the maximum model length")
        outs = []
        for p, sp in zip(prompts, params):
            doc = p.split("<response>")[-1].split("</response>")[0].strip() if "<response>" in p else p[-12:]
            if "CUT" in p:  # ran out of tokens mid-sentence
                comp = SimpleNamespace(text=" One full sentence here is kept. And then a half",
                                       token_ids=[5] * sp.max_tokens, finish_reason="length")
            elif "ABORT" in p:
                comp = SimpleNamespace(text="", token_ids=[], finish_reason="abort")
            else:
                text = f" {doc} t={sp.temperature} p={sp.top_p} s={sp.seed} "
                comp = SimpleNamespace(text=text, token_ids=[7, 8, 9, CharTokenizer.eos_token_id], finish_reason="stop")
            outs.append(SimpleNamespace(outputs=[comp], prompt=p))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    mod = ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    from cleancurate.engine import vllm_backend
    from cleancurate.udfs.rewrite import make_rewrite_fn

    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    FakeLLM.instances.clear()
    (tmp_path / "config.json").write_text("{}")
    return make_rewrite_fn, vllm_cfg(tmp_path)


def _series(*cols):
    return [pd.Series(c) for c in cols]


def test_requests_carry_each_rows_prompt_settings_and_seed_in_order(fake_vllm):
    make_rewrite_fn, cfg = fake_vllm
    fn = make_rewrite_fn(cfg)
    queries = ["How do I boil an egg?", "Best beach gear?", "Name a fruit."]
    parents = ["Boil it.", "Sunscreen.", "Apple."]
    seeds = [12, 2**40 + 5, 7]
    out = fn(*_series(queries, parents, [0.2, 1.0, 0.0], [0.5, 1.0, 0.8], seeds))
    llm = FakeLLM.instances[-1]
    assert llm.init_kwargs["model"] == cfg.model.name
    assert llm.init_kwargs["enable_prefix_caching"] is True and llm.init_kwargs["trust_remote_code"] is False
    assert llm.init_kwargs["dtype"] == "bfloat16"
    prompts, params = llm.calls[-1]
    assert len(prompts) == 3
    for p, q, r in zip(prompts, queries, parents):
        assert q in p and r in p and p.startswith("Revise the response.")
    assert [(sp.temperature, sp.top_p, sp.seed, sp.max_tokens) for sp in params] == [
        (0.2, 0.5, 12, 32), (1.0, 1.0, (2**40 + 5) % 2**31, 32), (0.0, 0.8, 7, 32)]
    assert all(sp.stop_token_ids == [CharTokenizer.eos_token_id] for sp in params)
    # output order is input order; the stop token is not counted
    assert out["text"].tolist() == [
        "Boil it. t=0.2 p=0.5 s=12", f"Sunscreen. t=1.0 p=1.0 s={(2**40 + 5) % 2**31}", "Apple. t=0.0 p=0.8 s=7"]
    assert out["gen_tokens"].tolist() == [3, 3, 3]
    assert out["error"].isna().all()
    assert list(out.columns) == ["text", "gen_tokens", "error"]
    assert str(out["gen_tokens"].dtype) == "int32"


def test_one_rejected_request_gives_that_row_an_error_and_the_rest_run(fake_vllm):
    make_rewrite_fn, cfg = fake_vllm
    fn = make_rewrite_fn(cfg)
    parents = ["A.", "B.", "BOOM far too long", "D."]
    out = fn(*_series(["q"] * 4, parents, [1.0] * 4, [1.0] * 4, [1, 2, 3, 4]))
    assert out["error"].isna().tolist() == [True, True, False, True]
    assert out["error"][2].startswith("ValueError: prompt is longer")
    assert pd.isna(out["text"][2]) and out["gen_tokens"][2] == 0
    assert [t.split()[0] for i, t in enumerate(out["text"]) if i != 2] == ["A.", "B.", "D."]


def test_aborted_request_is_a_row_error_and_length_stops_are_trimmed(fake_vllm):
    make_rewrite_fn, cfg = fake_vllm
    fn = make_rewrite_fn(cfg)
    out = fn(*_series(["q"] * 3, ["ok.", "ABORT", "CUT"], [1.0] * 3, [1.0] * 3, [1, 2, 3]))
    assert pd.isna(out["error"][0]) and out["error"][1] == "vllm: request ended with finish_reason='abort'"
    # ran out of tokens: cut back to the last complete sentence, every token counted
    assert out["text"][2] == "One full sentence here is kept."
    assert out["gen_tokens"][2] == 32


def test_one_engine_per_worker(fake_vllm):
    make_rewrite_fn, cfg = fake_vllm
    make_rewrite_fn(cfg)
    make_rewrite_fn(cfg)
    assert len(FakeLLM.instances) == 1


def test_missing_vllm_names_the_fix(monkeypatch, tmp_path):
    from cleancurate.engine import vllm_backend
    from cleancurate.models import ModelError
    from cleancurate.udfs.rewrite import make_rewrite_fn

    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails
    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="model.backend: transformers"):
        make_rewrite_fn(vllm_cfg(tmp_path, dtype="auto", max_new_tokens=8))
