"""Revision prompts and the stop tokens of a chat model.

One concern: what a generation is asked and where it ends. Both generation backends
(:mod:`~cleancurate.engine.generate`, :mod:`~cleancurate.engine.vllm_backend`) and the
evaluation job's fine-tuning use these, so a model is prompted and stopped the same
way wherever it runs.
"""

from typing import Sequence

from cleancurate.prompts import chat_prompt, user_message


def build_prompts(tokenizer, instruction: str, system: str | None, queries: Sequence[str], texts: Sequence[str]) -> list[str]:
    """Chat-formatted revision prompts with the corpus text inside delimiters."""
    return [chat_prompt(tokenizer, user_message(instruction, q, t), system) for q, t in zip(queries, texts)]


def stop_token_ids(tokenizer) -> set[int]:
    """End-of-sequence ids, including the chat template's end-of-turn marker."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids
