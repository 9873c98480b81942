"""Attention for the verifier: multi-token queries over grouped K/V heads without copying K/V.

transformers' SDPA path repeats every K/V head ``num_key_value_groups`` times (a copy of the
whole cache, every layer) as soon as more than one query token comes with a mask, which is
exactly the tree verification case on CPU; for one token it packs the query heads instead.
``packed_gqa_attention`` packs for any number of query tokens: the queries of the heads that
share a K/V head become extra query rows of that K/V head, the mask is repeated along them (a
few KB), and one SDPA call runs on the cache as it is. Same arithmetic per head as repeating K/V.

Over a long cache (``LONG_PREFIX`` keys or more) the rows of a tree verification or of a decoding
step share the whole committed prefix, and only the last few keys (the tree) need a mask. There the
prefix is attended without a mask, cut into ``splits`` chunks of keys that run in parallel (flash-
decoding's split-K), and the tree part (with the prefix's few remaining keys) is one masked call of the
same fused kernel; the parts are merged by their log-sum-exp (FlashInfer's shared-prefix attention).
Each row's arithmetic does not depend on how many rows come with it, so a node gets what a one-token
step would.

``use_packed_attention(model)`` registers it with transformers' attention and mask interfaces
under ``mambaspec_sdpa`` and switches a model that uses ``sdpa`` to it.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "mambaspec_sdpa"
LONG_PREFIX = 1024  # keys from which the shared-prefix path pays (measured: verify-cost --prefix)
SPLIT_KEYS = 512  # keys per parallel chunk of the prefix, at least
MAX_SPLITS = 8
_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def packed_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                         **kwargs):
    """SDPA over (batch, heads, q, d) queries and (batch, kv_heads, k, d) keys/values, K/V not repeated."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    q_len = query.shape[2]
    mask = attention_mask
    prefix = _shared_prefix(query, key, mask, kwargs)
    if prefix >= LONG_PREFIX:
        tree = mask[0, 0, :, prefix:] if mask is not None else torch.ones(1, 1, dtype=torch.bool, device=key.device)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = shared_prefix_attention(_pack(query, n_rep), key, value, prefix, tree.repeat(n_rep, 1), scale)
        return out.reshape(1, query.shape[1], q_len, value.shape[-1]).transpose(1, 2).contiguous(), None
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


def _pack(query: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(1, heads, q, d) -> (1, kv_heads, n_rep * q, d): head h = kv * n_rep + r (repeat_kv's order)."""
    b, h, q, d = query.shape
    return query.reshape(b, h // n_rep, n_rep * q, d)


def _shared_prefix(query, key, mask, kwargs) -> int:
    """How many leading keys every query row sees (0 when the shared-prefix path does not apply)."""
    q_len, k_len = query.shape[2], key.shape[2]
    if query.shape[0] != 1 or k_len - q_len < LONG_PREFIX or not query.device.type == "cpu" \
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
        return 0
    if mask is None:
        return k_len - 1 if q_len == 1 else 0  # a decoding step sees everything; a prefill is causal
    if (mask.dtype != torch.bool or mask.shape[0] != 1 or mask.shape[1] != 1
            or not bool(mask[0, 0, :, :k_len - q_len].all())):
        return 0
    return k_len - q_len


def shared_prefix_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix: int,
                            tree: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of packed rows ``query`` (1, kv_heads, R, d) over ``key``/``value`` (1, kv_heads, L, d), where
    every row sees keys ``[0, prefix)`` and ``tree`` (R, L - prefix) says which of the rest it sees.

    Two calls of the fused kernel: the prefix's first ``splits * chunk`` keys without a mask, in ``splits`` chunks
    that run in parallel; the remainder and the tree with an additive mask. Their outputs are merged by log-sum-exp.
    """
    splits = max(1, min(MAX_SPLITS, prefix // SPLIT_KEYS))
    chunk = prefix // splits
    covered = splits * chunk
    heads, rows, d = query.shape[1], query.shape[2], query.shape[3]
    split_k = key[0, :, :covered].view(heads, splits, chunk, d).transpose(0, 1)  # views, no copy
    split_v = value[0, :, :covered].view(heads, splits, chunk, value.shape[-1]).transpose(0, 1)
    outs, lses = _flash(query.expand(splits, heads, rows, d), split_k, split_v, 0.0, False, scale=scale)[:2]
    rest = key.shape[2] - covered  # the prefix's remainder (fewer than ``splits`` keys), then the tree
    mask = None
    if not bool(tree.all()):
        mask = torch.zeros(rows, rest, dtype=query.dtype, device=query.device)
        mask[:, rest - tree.shape[1]:].masked_fill_(~tree, float("-inf"))
    out, lse = _flash(query, key[:, :, covered:], value[:, :, covered:], 0.0, False, attn_mask=mask, scale=scale)[:2]
    weight = torch.softmax(torch.cat([lses, lse]), dim=0)  # (splits + 1, kv_heads, R): each part's share
    return (torch.cat([outs, out]) * weight[..., None]).sum(0, keepdim=True)


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
