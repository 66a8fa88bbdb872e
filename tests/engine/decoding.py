"""What the decode engine's tests share: a scripted model and the prompt grids they run.

``ScriptLM`` writes a known text per row through a real transformers cache, so a test controls
exactly when each row ends; ``grid_rows`` and ``ragged_rows`` are rows for the tiny random Llama
(``tiny_llama`` in tests/conftest.py) with mixed settings and seeds."""

from types import SimpleNamespace

import torch

from tests.fakes import CharTokenizer

EOS = CharTokenizer.eos_token_id
SCRIPTS = {  # the last character of a prompt picks what the model writes
    "1": "Hi there.",
    "2": "One two three four five. Six seven eight nine ten",
    "3": "",
}


class ScriptLM(torch.nn.Module):
    """Next-token logits that spell each row's script, then end-of-sequence; '!' in a prompt fails.

    Its KV cache is a real transformers ``DynamicCache`` with one layer whose every column
    holds (script, position where generation started) for its row, so the decode loops can
    reorder, grow and merge it like a model's; the last column tells a step what to write.
    """

    vocab = 128

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(vocab_size=self.vocab)
        self.fed_after_done: list[int] = []
        self.decode_rows: list[int] = []  # rows in each decode step's batch
        self.prefill_rows: list[int] = []  # prompts in each prefill

    def _logits(self, tokens):
        out = torch.full((len(tokens), 1, self.vocab), -1e4)
        for r, t in enumerate(tokens):
            out[r, 0, t] = 0.0
        return out

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=1):
        from transformers import DynamicCache

        if past_key_values is None:  # prefill: one row per distinct prompt
            state = []
            for r, (seq, m) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
                text = "".join(chr((t - 3) % 97) for t, keep in zip(seq, m) if keep)
                if "!" in text:
                    raise RuntimeError("this prompt breaks the model")
                state.append([float(text[-1]), float(position_ids[r, -1])])
            cols = torch.tensor(state)[:, None, None, :].expand(-1, 1, input_ids.shape[1], 2).contiguous()
            cache = DynamicCache()
            cache.update(cols, cols.clone(), 0)
            self.prefill_rows.append(len(state))
        else:
            cache = past_key_values
            self.decode_rows.append(len(input_ids))
            last = cache.layers[0].keys[:, :, -1:].clone()
            cache.update(last, last.clone(), 0)
        state = cache.layers[0].keys[:, 0, -1]
        nxt = []
        for r in range(len(state)):
            # CharTokenizer.decode maps an id to chr(id): write the script's code points
            script = [ord(ch) for ch in SCRIPTS[str(int(state[r, 0]))]] + [EOS]
            k = int(position_ids[r, -1]) - int(state[r, 1])
            nxt.append(script[k] if k < len(script) else EOS)
            if past_key_values is not None and k > len(script):
                self.fed_after_done.append(int(input_ids[r, -1]))
        return SimpleNamespace(logits=self._logits(nxt), past_key_values=cache)


def grid_rows(n_docs: int):
    """``n_docs`` prompts of growing length x four (temperature, top_p) settings, one seed per row."""
    settings = [(0.0, 1.0), (0.6, 0.8), (1.0, 1.0), (1.0, 0.3)]
    prompts, temps, tops, seeds = [], [], [], []
    for d in range(n_docs):
        for t, p in settings:
            prompts.append(f"Revise: response number {d} " + "x" * (3 * d))
            temps.append(t)
            tops.append(p)
            seeds.append(500 + len(seeds))
    return prompts, temps, tops, seeds


def ragged_rows(n: int):
    """Prompts of many lengths (a few shared) and mixed settings: rows end at many different steps."""
    settings = [(0.0, 1.0), (0.9, 0.9), (1.0, 1.0), (0.5, 0.3), (1.2, 1.0)]
    prompts = [f"Revise {i % 7}: " + "ab" * (i % 7) * 3 for i in range(n)]
    return prompts, [settings[i % 5][0] for i in range(n)], [settings[i % 5][1] for i in range(n)], \
        [77 + 3 * i for i in range(n)]
