"""Fake tokenizer and model for testing pure batch functions without weights."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class CharTokenizer:
    """One token per character (ids = code point % 97 + 3); digits are single tokens."""

    pad_token_id = 0
    eos_token_id = 1
    unk_token_id = 2
    chat_template = None
    pad_token = "<pad>"
    eos_token = "<eos>"

    def __call__(self, text, add_special_tokens=False, **_):
        return {"input_ids": [ord(c) % 97 + 3 for c in text]}

    def convert_tokens_to_ids(self, tok):
        return self.unk_token_id

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class DigitJudge(torch.nn.Module):
    """Returns fixed next-token logits: digit probabilities chosen per rubric keyword."""

    def __init__(self, tokenizer, digit_probs_by_rubric: dict[str, list[float]], vocab: int = 100):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok = tokenizer
        self.table = digit_probs_by_rubric
        self.vocab = vocab
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.prompts: list[list[int]] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=1, **_):
        rows = []
        for seq, m in zip(input_ids.tolist(), attention_mask.tolist()):
            text = "".join(chr((t - 3) % 97) for t, keep in zip(seq, m) if keep)
            probs = torch.full((self.vocab,), 1e-9)
            for rubric, digit_probs in self.table.items():
                key = "".join(chr((ord(c) % 97 + 3 - 3) % 97) for c in rubric)
                if key in text:
                    for d, p in enumerate(digit_probs):
                        probs[self.tok(str(d))["input_ids"][0]] = p
                    rest = max(1e-9, 1.0 - sum(digit_probs))
                    probs[50] += rest
            rows.append(torch.log(probs / probs.sum()))
        return SimpleNamespace(logits=torch.stack(rows)[:, None, :])
