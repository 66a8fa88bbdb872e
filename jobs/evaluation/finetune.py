"""Fine-tune the base model on one training mix, then answer the held-out prompts with it.

:func:`train_and_answer` is the one function that does a mix's model work: load a
fresh copy of the configured base model (never the worker's shared cached copy),
fine-tune it (all weights, or LoRA adapters when ``evaluation.method: lora`` and
``peft`` is installed), phase after phase for the stage mixes (``before``: the
curated texts, then A's rows; ``after``: the reverse), then generate answers to the held-out prompts and score the
benign reference answers' perplexity with the tuned weights. It takes and returns
plain Python data, so the same function runs

- in this process (:func:`run_mix` with ``evaluation.distributor: none``), or
- through pyspark's ``TorchDistributor`` (``distributor: torch``): on the driver
  (``local_mode: true``) or on executors, one process per GPU with ``use_gpu``. With
  several processes each rank trains on its share of every batch under
  ``DistributedDataParallel``; rank 0 answers the prompts and its result is returned.

Training follows the papers: AdamW at ``evaluation.learning_rate`` (5e-5 by default),
batch ``evaluation.batch_size`` (10), the loss on response tokens only (the prompt is
the model's chat template around the query, exactly as perplexity scoring and
generation see it), gradients clipped at norm 1.0. Everything that draws a random
number is seeded from ``evaluation.seed``: with the same machine, threads and software
a CPU run repeats bit for bit.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from cleancurate.configsections import EvaluationConfig

MAX_GRAD_NORM = 1.0
IGNORE = -100


class FineTuneError(RuntimeError):
    """Fine-tuning cannot run as configured (e.g. LoRA without peft)."""


def peft_available() -> bool:
    """True when the optional ``peft`` package (LoRA) is importable."""
    return importlib.util.find_spec("peft") is not None


def weights_dtype(method: str, device: str) -> str:
    """The dtype the model is loaded in for fine-tuning.

    Full fine-tuning trains every weight: float32. LoRA trains only adapters (created in
    float32 by peft), so on a GPU with bfloat16 the frozen base is kept in bfloat16: 2
    bytes per parameter instead of 4 (16 GB instead of 32 GB for an 8B model), the
    matmuls run in bfloat16 under autocast either way.
    """
    if method == "lora" and device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return "bfloat16"
    return "float32"


def load_trainable(spec: str, device: str = "auto", allow_network: bool = False, method: str = "full"):
    """A fresh copy of the model (dtype from :func:`weights_dtype`) and its tokenizer on ``device``
    (nothing downloaded, no remote code).

    Returns:
        (model, tokenizer, device string).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cleancurate.models import pick_device, resolve

    if not allow_network:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    dev = pick_device(device)
    path, _ = resolve(spec)
    opts = dict(trust_remote_code=False, local_files_only=not allow_network)
    tokenizer = AutoTokenizer.from_pretrained(path, **opts)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = getattr(torch, weights_dtype(method, dev))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **opts)
    return model.to(dev), tokenizer, dev


def encode_examples(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> tuple[list[tuple[list[int], int]], int]:
    """Token ids of chat prompt + response + end of turn, and where the response starts.

    A pair longer than ``max_length`` is cut at the end; one with no response token
    left is skipped. Returns (examples, skipped).
    """
    from cleancurate.prompts import scoring_context
    from cleancurate.engine.prompting import stop_token_ids

    stops = stop_token_ids(tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = end if isinstance(end, int) and end in stops else tokenizer.eos_token_id
    out, skipped = [], 0
    for query, response in pairs:
        ctx = tokenizer(scoring_context(tokenizer, query or ""), add_special_tokens=False)["input_ids"]
        resp = tokenizer(response or "", add_special_tokens=False)["input_ids"] + ([eot] if eot is not None else [])
        ids = (list(ctx) + list(resp))[:max_length]
        if len(ids) <= len(ctx) or not (response or "").strip():
            skipped += 1
            continue
        out.append((ids, len(ctx)))
    return out, skipped


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (prompt and padding ignored)."""
    import torch

    longest = max(len(ids) for ids, _ in examples)
    ids_t = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    for i, (ids, start) in enumerate(examples):
        ids_t[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
        labels[i, start: len(ids)] = torch.tensor(ids[start:], dtype=torch.long)
    return ids_t, mask, labels


def add_lora(model, ev: EvaluationConfig):
    """Wrap the model with LoRA adapters (``peft``); only the adapters train."""
    if not peft_available():
        raise FineTuneError("evaluation.method 'lora' needs peft: pip install 'cleancurate[eval]' "
                            "(or set evaluation.method: full)")
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=ev.lora_r, lora_alpha=ev.lora_alpha, lora_dropout=ev.lora_dropout,
                     target_modules=list(ev.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def train(model, tokenizer, pairs: Sequence[tuple[str, str]], ev: EvaluationConfig, *, rank: int = 0, world: int = 1,
          on_step: Callable[[int, float], None] | None = None) -> dict:
    """Fine-tune ``model`` in place on (query, response) pairs; returns training statistics.

    Args:
        model: a causal LM in float32 (or a DDP / peft wrapper of one).
        pairs: the training mix.
        ev: the ``evaluation`` config section.
        rank, world: this process's share of every batch under ``DistributedDataParallel``.
        on_step: called with (step, loss) after every optimizer step.
    """
    import torch

    t0 = time.time()
    seed = int(ev.seed)
    torch.manual_seed(seed)
    examples, skipped = encode_examples(tokenizer, pairs, int(ev.max_length))
    params = [p for p in model.parameters() if p.requires_grad]
    stats = {"examples": len(examples), "skipped": skipped, "steps": 0, "losses": [],
             "trainable_params": sum(p.numel() for p in params),
             "total_params": sum(p.numel() for p in model.parameters())}
    if not examples:
        stats["seconds"] = time.time() - t0
        return stats
    opt = torch.optim.AdamW(params, lr=float(ev.learning_rate), weight_decay=float(ev.weight_decay))
    device = next(model.parameters()).device
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order_gen = torch.Generator().manual_seed(seed)
    bs, max_steps = int(ev.batch_size), ev.max_steps
    model.train()
    for _epoch in range(int(ev.epochs)):
        order = torch.randperm(len(examples), generator=order_gen).tolist()
        for start in range(0, len(order), bs):
            batch = [examples[i] for i in order[start:start + bs]]
            shard = batch[rank::world] or batch[:1]  # every rank must step; a short last batch repeats a row
            ids, mask, labels = collate(shard, pad)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss = float(out.loss.detach())
            stats["steps"] += 1
            stats["losses"].append(loss)
            if on_step:
                on_step(stats["steps"], loss)
            if max_steps and stats["steps"] >= max_steps:
                break
        if max_steps and stats["steps"] >= max_steps:
            break
    model.eval()
    stats["seconds"] = time.time() - t0
    return stats


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def training_phases(payload: dict) -> list[dict]:
    """The payload's training phases in order: ``phases`` [{"phase", "kinds", "pairs"}], or one
    phase of ``pairs``."""
    if payload.get("phases") is not None:
        return list(payload["phases"])
    return [{"phase": 1, "kinds": [], "pairs": payload.get("pairs") or []}]


def train_and_answer(payload: dict) -> dict:
    """Fine-tune on one mix and answer the held-out prompts: the model work of one mix.

    ``payload`` (picklable for ``TorchDistributor``): ``mix``, ``phases``
    (the training phases in order, each ``{"phase", "kinds", "pairs"}`` with (query,
    response) pairs; empty for ``base``; or a single list ``pairs``), ``harmful``
    [(id, prompt)], ``benign`` [(id, prompt, reference)], and the config sections
    ``model``, ``runtime``, ``evaluation`` (the frozen dataclasses); optional ``save_dir`` to keep the tuned model.

    Each phase is a fine-tuning run of its own (:func:`train`: a fresh optimizer, the
    same seed, ``evaluation.epochs`` epochs) on the weights the previous phase left;
    with LoRA each phase trains fresh adapters and merges them before the next.

    Returns (every rank: rank 0's, sent to the others): ``{"mix", "train": stats (summed over
    phases, with ``phases``: each phase's kinds, rows, steps and losses in order),
    "answers": [{"prompt_set", "prompt_id", "answer", "gen_tokens", "error"}], "ppl":
    [{"prompt_id", "ppl", "tokens", "error"}]}``.
    """
    import torch

    from cleancurate.batching import resolve_scoring_budget
    from cleancurate.jobs.evaluation.answer import generate_answers, reference_perplexity

    mc, rc, ev = payload["model"], payload["runtime"], payload["evaluation"]
    rank, world, local_rank = _dist_env()
    if rc.num_threads:
        torch.set_num_threads(int(rc.num_threads))
    device = mc.device
    if world > 1 or payload.get("distributed"):
        device = f"cuda:{local_rank}" if ev.use_gpu and torch.cuda.is_available() else "cpu"
    model, tokenizer, dev = load_trainable(mc.name, device, mc.allow_network, method=ev.method)
    stats = {"examples": 0, "skipped": 0, "steps": 0, "losses": [], "seconds": 0.0, "trainable_params": 0,
             "total_params": sum(p.numel() for p in model.parameters()), "phases": []}
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # every mix, base too: the barrier below needs the group
            # the other ranks wait while rank 0 answers every prompt, which may take long
            dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo", timeout=timedelta(hours=12))
    for index, phase in enumerate(training_phases(payload)):
        record = {"phase": phase.get("phase", index + 1), "kinds": list(phase.get("kinds", [])),
                  "rows": len(phase["pairs"]), "examples": 0, "skipped": 0, "steps": 0, "losses": [], "seconds": 0.0}
        if phase["pairs"]:
            if ev.method == "lora":
                # adapters start from the seed, not from whatever this process drew before
                torch.manual_seed(int(ev.seed) + index)
                model = add_lora(model, ev)  # fresh adapters per phase, merged after it
            net = model
            if world > 1:
                from torch.nn.parallel import DistributedDataParallel

                net = DistributedDataParallel(model, device_ids=[local_rank] if dev.startswith("cuda") else None)
            st = train(net, tokenizer, phase["pairs"], ev, rank=rank, world=world)
            del net
            if ev.method == "lora":
                model = model.merge_and_unload()  # plain weights: the next phase, scoring and generation run on them
            record.update({k: st[k] for k in ("examples", "skipped", "steps", "losses", "seconds")})
            stats["trainable_params"] = max(stats["trainable_params"], st["trainable_params"])
        for key in ("examples", "skipped", "steps", "seconds"):
            stats[key] += record[key]
        stats["losses"] += record["losses"]
        stats["phases"].append(record)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            del model
            gc.collect()
            return _result_of_rank_0(None, dev)
    model.eval()
    model.requires_grad_(False)
    stats["device"], stats["world"] = dev, world
    if payload.get("save_dir"):
        model.save_pretrained(payload["save_dir"])
        tokenizer.save_pretrained(payload["save_dir"])
    t0 = time.time()
    harmful, benign = payload["harmful"], payload["benign"]
    prompts = [p for _, p in harmful] + [p for _, p, _ in benign]
    gen = generate_answers(model, tokenizer, prompts, max_new_tokens=int(ev.max_new_tokens),
                           temperature=float(ev.temperature), top_p=float(ev.top_p), seed=int(ev.seed),
                           batch_size=rc.gen_batch_size)
    keys = [("harmful", i) for i, _ in harmful] + [("benign", i) for i, _, _ in benign]
    answers = [{"prompt_set": s, "prompt_id": i, **g} for (s, i), g in zip(keys, gen)]
    ppl = reference_perplexity(model, tokenizer, [p for _, p, _ in benign], [r for _, _, r in benign],
                               token_budget=resolve_scoring_budget(model, rc.token_budget),
                               max_context=mc.max_context,
                               stride=int(rc.score_stride))
    ppl = [{"prompt_id": i, **row} for (i, _, _), row in zip(benign, ppl)]
    stats["answer_seconds"] = time.time() - t0
    del model
    gc.collect()
    result = {"mix": payload["mix"], "train": stats, "answers": answers, "ppl": ppl}
    return _result_of_rank_0(result, dev) if world > 1 else result


def _result_of_rank_0(result: dict | None, dev: str) -> dict:
    """Every rank returns rank 0's result.

    TorchDistributor's local mode has each process pickle what it returns to the same
    file, so the last process to finish decides the output: a rank that returned None
    after rank 0 finished would lose the mix's answers.
    """
    import torch
    import torch.distributed as dist

    box = [result]
    dist.broadcast_object_list(box, src=0, device=torch.device(dev) if dev.startswith("cuda") else None)
    return box[0]


def run_mix(payload: dict, ev: EvaluationConfig) -> dict:
    """Run :func:`train_and_answer` in this process, or through ``TorchDistributor`` when configured."""
    if ev.method == "lora" and any(p["pairs"] for p in training_phases(payload)) and not peft_available():
        raise FineTuneError("evaluation.method 'lora' needs peft: pip install 'cleancurate[eval]' "
                            "(or set evaluation.method: full)")
    if ev.distributor == "none":
        return train_and_answer(payload)
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=int(ev.num_processes), local_mode=bool(ev.local_mode),
                                   use_gpu=bool(ev.use_gpu))
    result = distributor.run(train_and_answer, {**payload, "distributed": True})
    if not isinstance(result, dict):
        raise FineTuneError(f"TorchDistributor returned {type(result).__name__}, not the mix's answers")
    return result
