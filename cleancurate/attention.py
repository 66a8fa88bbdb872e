"""Grouped-query attention for decode steps, without copying the KV cache per query head.

transformers' ``sdpa`` attention expands the keys and values of a grouped-query model
(Llama 3: 8 KV heads for 32 query heads) to one copy per query head whenever an attention
mask is given, because the fused kernels take ``enable_gqa`` only without a mask. A
decode step with left-padded prompts, or with a preallocated (static) KV cache, always
has a mask, so every step writes and reads the whole cache four times over: at 256 rows
of an 8B model that is ~100 GB of memory traffic per step, several times the weights.

For a decode step (one query position) the query heads that share a KV head can instead
be laid side by side as that head's query positions: ``(rows, kv_heads, group, dim)``
against ``(rows, kv_heads, length, dim)``, with the row's mask broadcast over the group.
Same products, same softmax, no copy. Prompt passes (more than one query position) go
to transformers' own ``sdpa`` unchanged, so scoring and prefill are not affected.
"""

from __future__ import annotations

NAME = "cleancurate_gqa_sdpa"
_registered = False


def gqa_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, **kwargs):
    """An attention function for transformers' ``AttentionInterface`` (see the module doc)."""
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, q_len, dim = query.shape
    if q_len != 1 or groups == 1 or dropout or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    kv_heads = key.shape[1]
    # query head h reads KV head h // groups (transformers' repeat_kv layout)
    q = query.reshape(b, kv_heads, groups, dim)
    mask = attention_mask
    if mask is not None and mask.dim() == 4 and mask.shape[2] == 1:
        mask = mask[:, :, :, : key.shape[2]]
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_gqa_decode(model) -> bool:
    """Switch ``model`` from ``sdpa`` to :data:`NAME` (same results; decode without KV copies).

    Returns True when the model now uses it; models on other attention implementations
    (eager, flash attention) are left as they are.
    """
    global _registered
    cfg = model.config
    current = getattr(cfg, "_attn_implementation", None)
    if current == NAME:
        return True
    if current != "sdpa":
        return False
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:
        return False
    if not _registered:
        AttentionInterface.register(NAME, gqa_decode_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
        _registered = True
    cfg._attn_implementation = NAME
    return True
