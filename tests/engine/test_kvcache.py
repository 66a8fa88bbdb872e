"""The KV cache grown in place (``cleancurate.engine.kvcache``): the same logits as transformers'
concatenating ``DynamicCache``, bit for bit."""

import torch

from cleancurate.engine import kvcache


def test_grow_in_place_cache_gives_the_dynamic_cache_logits(tiny_llama):
    """Same keys and values, seen through views of a larger buffer: the same logits, bit for bit."""
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 0, 0, 9, 8]])
    mask = (torch.arange(5)[None, :] >= torch.tensor([[2], [0], [3]])).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    def steps(grow: bool):
        logits, kw = [], kvcache._cache_kw(tiny_llama)
        with torch.inference_mode():
            out = tiny_llama(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            cache = getattr(out, kw)
            if grow:
                assert kvcache._grow_cache(cache, None, 5 + 8)
            m, p = mask, pos[:, -1:]
            for step in range(8):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                if step == 4:  # a row leaves the batch
                    keep = torch.tensor([0, 2])
                    cache.reorder_cache(keep)
                    m, p, nxt = m[keep], p[keep], nxt[keep]
                m, p = torch.cat([m, torch.ones_like(nxt)], dim=1), p + 1
                out = tiny_llama(input_ids=nxt, attention_mask=m, position_ids=p, use_cache=True, logits_to_keep=1,
                                 **{kw: cache})
                cache = getattr(out, kw)
                logits.append(out.logits[:, -1])
        return logits

    for a, b in zip(steps(False), steps(True)):
        assert torch.equal(a, b)
