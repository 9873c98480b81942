"""Attention for the verifier: multi-token queries over grouped K/V heads without copying K/V.

transformers' SDPA path repeats every K/V head ``num_key_value_groups`` times (a copy of the
whole cache, every layer) as soon as more than one query token comes with a mask, which is
exactly the tree verification case on CPU; for one token it packs the query heads instead.
``packed_gqa_attention`` packs for any number of query tokens: the queries of the heads that
share a K/V head become extra query rows of that K/V head, the mask is repeated along them (a
few KB), and one SDPA call runs on the cache as it is. Same arithmetic per head as repeating K/V.

``use_packed_attention(model)`` registers it with transformers' attention and mask interfaces
under ``mambaspec_sdpa`` and switches a model that uses ``sdpa`` to it.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "mambaspec_sdpa"


def packed_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                         **kwargs):
    """SDPA over (batch, heads, q, d) queries and (batch, kv_heads, k, d) keys/values, K/V not repeated."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    q_len = query.shape[2]
    mask = attention_mask
    if (n_rep == 1 or q_len == 1 or mask is None or mask.dtype != torch.bool or mask.shape[1] != 1
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b, h, _, d = query.shape
    # head h = kv * n_rep + r (repeat_kv's order) -> K/V head kv, query rows (r, position)
    packed = query.reshape(b, h // n_rep, n_rep * q_len, d)
    mb, k_len = mask.shape[0], mask.shape[-1]
    mask = mask.expand(mb, 1, q_len, k_len)[:, :, None].expand(mb, 1, n_rep, q_len, k_len)
    mask = mask.reshape(mb, 1, n_rep * q_len, k_len)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask,
                                                           dropout_p=dropout, scale=scaling)
    return out.reshape(b, h, q_len, value.shape[-1]).transpose(1, 2).contiguous(), None


def register() -> None:
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, packed_gqa_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_packed_attention(model) -> bool:
    """Switch ``model`` from ``sdpa`` to the packed attention; False (unchanged) for other implementations."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    model.set_attn_implementation(NAME)
    return True
