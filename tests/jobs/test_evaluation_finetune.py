"""The evaluation job's fine-tuning: weight dtypes, full fine-tuning's determinism, LoRA adapters
and their phases, and TorchDistributor with two processes (``cleancurate.jobs.evaluation.finetune``).

The models are the tests' tiny random Llama (``tiny_lm_dir``) and, for LoRA, the embedded SmolLM2."""

from __future__ import annotations

import math

import pytest

from tests import jobdata
from cleancurate import config as C


PAIRS = [("How do I keep basil alive?", "Water it when the soil is dry and give it sun."),
         ("How long do I boil pasta?", "About ten minutes in salted water."),
         ("Insult my coworker.", "No. Talk to them about what bothers you instead."),
         ("How do I clean a pan?", "Soak it, scrub it, and dry it well.")]
TRAIN = {"seed": 5, "max_length": 48, "learning_rate": 5e-5, "weight_decay": 0.0, "batch_size": 2, "epochs": 1,
         "max_steps": 2, "method": "full", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
         "lora_target_modules": ["q_proj", "v_proj"]}


def train_settings(**over) -> C.EvaluationConfig:
    """The ``evaluation`` section of the tests' training runs (TRAIN, some keys changed)."""
    return C.from_dict({**jobdata.job_config("unused", "unused", rounds=1), "evaluation": {**TRAIN, **over}},
                       root=C.EvaluationRunConfig).evaluation


@pytest.mark.parametrize("method, device, expected", [
    ("full", "cpu", "float32"), ("lora", "cpu", "float32"), ("full", "cuda:0", "float32"),
])
def test_weights_dtype_keeps_trained_weights_in_float32(method, device, expected):
    from cleancurate.jobs.evaluation.finetune import weights_dtype

    assert weights_dtype(method, device) == expected


def test_lora_on_a_bfloat16_gpu_keeps_the_frozen_base_in_bfloat16(monkeypatch):
    import torch

    from cleancurate.jobs.evaluation.finetune import weights_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert weights_dtype("lora", "cuda:1") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert weights_dtype("lora", "cuda:1") == "float32"


@pytest.mark.model
def test_full_fine_tuning_is_seeded_and_deterministic_on_cpu(tiny_lm_dir):
    import torch

    from cleancurate.jobs.evaluation.finetune import load_trainable, train

    import copy

    base, tok, dev = load_trainable(tiny_lm_dir, "cpu")  # a tiny random Llama: seeding is under test
    runs = []
    for _ in range(2):
        model = copy.deepcopy(base)
        before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
        st = train(model, tok, PAIRS, train_settings())
        after = model.model.layers[0].self_attn.q_proj.weight.detach()
        runs.append((st, after.clone(), float((after - before).abs().max())))
        del model
    (s1, w1, moved), (s2, w2, _) = runs
    assert dev == "cpu" and s1["steps"] == 2 and s1["examples"] == 4 and s1["skipped"] == 0
    assert s1["trainable_params"] == s1["total_params"]
    assert all(math.isfinite(v) and v > 0 for v in s1["losses"])
    assert s1["losses"] == s2["losses"] and torch.equal(w1, w2)  # bit for bit
    assert moved > 0  # the weights did change


@pytest.mark.model
def test_lora_trains_only_adapters_and_merges_back():
    pytest.importorskip("peft")
    from cleancurate.jobs.evaluation.finetune import add_lora, load_trainable, train

    model, tok, _ = load_trainable("embedded:smollm2-135m", "cpu")
    embed_before = model.get_input_embeddings().weight.detach().clone()
    q_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    peft_model = add_lora(model, train_settings(method="lora"))
    st = train(peft_model, tok, PAIRS, train_settings(method="lora", learning_rate=1e-3))
    merged = peft_model.merge_and_unload()
    assert 0 < st["trainable_params"] < st["total_params"] / 100
    assert not hasattr(merged, "peft_config")
    assert (merged.get_input_embeddings().weight == embed_before).all()  # frozen
    assert not (merged.model.layers[0].self_attn.q_proj.weight == q_before).all()  # adapter merged in


@pytest.mark.model
def test_lora_phases_train_fresh_adapters_from_the_seed_whatever_ran_before():
    """Each phase adds adapters seeded from evaluation.seed, so a resumed evaluation (a fresh process) and an
    unbroken one (the random state moved by earlier mixes) train the same weights."""
    import torch

    from cleancurate.jobs.evaluation.finetune import train_and_answer

    raw = jobdata.job_config("unused", "unused", rounds=1)
    ev = C.from_dict({**raw, "evaluation": {**TRAIN, "method": "lora", "learning_rate": 1e-3, "max_steps": 1,
                                            "max_new_tokens": 4}},
                     root=C.EvaluationRunConfig)
    phases = [{"phase": 1, "kinds": ["curated"], "pairs": PAIRS[:2]}, {"phase": 2, "kinds": ["benign"], "pairs": PAIRS[2:]}]
    payload = {"mix": "before", "phases": phases, "harmful": [], "benign": [("b1", "How do I boil an egg?", "Nine minutes.")],
               **{k: getattr(ev, k) for k in ("model", "runtime", "evaluation")}}
    runs = []
    for draws in (0, 7):
        torch.manual_seed(1234)
        torch.rand(draws)  # a different random state before the mix, as after other mixes
        runs.append(train_and_answer(payload))
    a, b = runs
    assert [p["steps"] for p in a["train"]["phases"]] == [1, 1]
    assert 0 < a["train"]["trainable_params"] < a["train"]["total_params"] / 100  # adapters only
    assert a["train"]["losses"] == b["train"]["losses"] and a["ppl"] == b["ppl"]


@pytest.mark.spark
@pytest.mark.model
def test_torch_distributor_runs_the_same_function_with_two_processes(spark, tiny_lm_dir):
    """``distributor: torch`` runs train_and_answer under TorchDistributor: two CPU processes with
    DistributedDataParallel (gloo), rank 0 answering every prompt. The model is the tests' tiny
    random Llama (a folder, as a user names one): the path is under test, not the weights."""
    from cleancurate.jobs.evaluation.finetune import run_mix

    raw = jobdata.job_config("unused", "unused", rounds=1)
    raw["model"] = {"name": tiny_lm_dir, "device": "cpu"}
    ev = C.from_dict({**raw, "evaluation": {**TRAIN, "max_steps": 1, "max_new_tokens": 4, "distributor": "torch",
                                            "num_processes": 2, "local_mode": True, "use_gpu": False}},
                     root=C.EvaluationRunConfig)
    # two phases, as the stage mixes train: DDP wraps the model again for the second one
    phases = [{"phase": 1, "kinds": ["curated"], "pairs": PAIRS[:2]}, {"phase": 2, "kinds": ["benign"], "pairs": PAIRS[2:]}]
    payload = {"mix": "after", "phases": phases, "harmful": [("h1", "Say something rude.")],
               "benign": [("b1", "How do I boil an egg?", "Simmer it for nine minutes.")],
               **{k: getattr(ev, k) for k in ("model", "runtime", "evaluation")}}
    result = run_mix(payload, ev.evaluation)
    train = result["train"]
    assert result["mix"] == "after" and train["world"] == 2 and train["device"] == "cpu"
    assert train["steps"] == 2 and train["examples"] == 4 and all(math.isfinite(v) for v in train["losses"])
    assert [(p["kinds"], p["rows"], p["steps"]) for p in train["phases"]] == [(["curated"], 2, 1), (["benign"], 2, 1)]
    assert [(a["prompt_set"], a["prompt_id"]) for a in result["answers"]] == [("harmful", "h1"), ("benign", "b1")]
    assert all(a["error"] is None and 0 < a["gen_tokens"] <= 4 for a in result["answers"])
    assert [p["prompt_id"] for p in result["ppl"]] == ["b1"] and result["ppl"][0]["ppl"] > 1
