"""The grouped-query decode attention (``cleancurate.attention``): the logits of transformers' SDPA
attention, on the tiny random Llama."""

import torch


def _decode_step_logits(model, ids, mask):
    """Logits of one decode step after a left-padded prefill (a mask in every call)."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values if hasattr(out, "past_key_values") else out.cache
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask2 = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        kw = {"cache" if "cache" in __import__("inspect").signature(model.forward).parameters else "past_key_values": cache}
        return model(input_ids=nxt, attention_mask=mask2, use_cache=True, logits_to_keep=1, **kw).logits[:, -1]


def test_grouped_query_decode_attention_gives_the_sdpa_logits(tiny_llama):
    from transformers import AutoModelForCausalLM

    from cleancurate.attention import NAME, use_gqa_decode

    model = AutoModelForCausalLM.from_config(tiny_llama.config, dtype=torch.float32).eval()
    model.config._attn_implementation = "sdpa"
    model.load_state_dict(tiny_llama.state_dict())
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 0, 0, 9, 8]])
    mask = (torch.arange(5)[None, :] >= torch.tensor([[2], [0], [3]])).long()
    stock = _decode_step_logits(model, ids, mask)
    assert use_gqa_decode(model) and model.config._attn_implementation == NAME
    ours = _decode_step_logits(model, ids, mask)
    assert torch.allclose(stock, ours, atol=1e-5), (stock - ours).abs().max()
    assert use_gqa_decode(model)  # idempotent
    model.config._attn_implementation = "eager"
    assert not use_gqa_decode(model)  # other implementations are left alone
