"""Forwards of a KV-cache causal LM over a committed prefix and over a draft tree.

Used by the target (verification), by the Transformer drafter, and by data generation's batched decoding
(whose ended rows leave the batch: ``batch_select_indices`` keeps the kept rows' room). The cache is a plain
``DynamicCache`` whose slots hold, in order, the committed tokens and then the tree nodes of
the current forward; ``keep_slots`` compacts it back to the committed prefix plus the accepted
path (SpecInfer, arXiv 2305.09781, §4: tree attention and KV-cache pruning).

Each layer keeps its keys and values in a preallocated buffer (``PreallocatedLayer``): a forward
writes only its new tokens, compaction moves the accepted entries in place, and the buffer
doubles when full, instead of concatenating the whole cache at every step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..hf_compat import with_cache
from .static import StaticKVCache

MIN_CAPACITY = 256


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of buffers with room to grow. An operation of
    transformers' that replaces ``keys``/``values`` (batch selection, repetition, beam reordering) keeps the two in
    step: the selection keeps its rows' room, the others let the next update regrow it."""

    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        end = n + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            capacity = max(end + MIN_CAPACITY, 2 * n)
            self.key_buffer = self._grow(self.keys, key_states, n, capacity)
            self.value_buffer = self._grow(self.values, value_states, n, capacity)
        self.key_buffer[:, :, n:end] = key_states
        self.value_buffer[:, :, n:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    @staticmethod
    def _grow(old: torch.Tensor, new: torch.Tensor, n: int, capacity: int) -> torch.Tensor:
        buffer = new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
        if n:
            buffer[:, :, :n] = old
        return buffer

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        super().reset()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.key_buffer is None:
            return super().batch_select_indices(indices)
        n = self.get_seq_length()  # the kept rows keep their room: one copy
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys, self.values = self.key_buffer[:, :, :n], self.value_buffer[:, :, :n]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.key_buffer = self.value_buffer = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.key_buffer = self.value_buffer = None


def new_kv_cache() -> DynamicCache:
    # No config: every layer is a full-length layer, so slots line up across layers and the
    # sliding window of models such as Gemma 3 is applied through the mask instead.
    cache = DynamicCache()
    cache.layer_class_to_replicate = PreallocatedLayer
    return cache


def kv_length(cache: DynamicCache) -> int:
    if isinstance(cache, StaticKVCache):
        return cache.length
    return cache.get_seq_length() if len(cache.layers) else 0


def kv_bytes(cache: DynamicCache) -> int:
    """Bytes of the keys and values the cache holds (comparable across caches; a preallocated
    layer's spare room, up to as much again, shows in the peak memory instead)."""
    if isinstance(cache, StaticKVCache):
        return cache.nbytes()
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@contextmanager
def final_hidden(model) -> Iterator[list[torch.Tensor]]:
    """The decoder's last hidden states (the output layer's input, after the final norm) of every forward run
    inside the block, appended to the list it yields."""
    captured: list[torch.Tensor] = []
    handle = model.get_decoder().norm.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        yield captured
    finally:
        handle.remove()


def _inputs(tokens: list[int] | None, embeds: torch.Tensor | None, device) -> dict:
    return {"inputs_embeds": embeds} if embeds is not None else {"input_ids": torch.tensor([tokens], device=device)}


@torch.inference_mode()
def forward_chain(model, cache: DynamicCache, tokens: list[int] | None, all_logits: bool = False,
                  embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Feed ``tokens`` (or input ``embeds``, (1, n, hidden)) after the cached prefix; logits of the last token (or
    of all), float32."""
    device = model.device
    past = kv_length(cache)
    n = len(tokens) if embeds is None else embeds.shape[1]
    if isinstance(cache, StaticKVCache):
        return cache.forward(model, tokens, list(range(past, past + n)), torch.ones(n, n, dtype=torch.bool).tril(),
                             embeds, last_only=not all_logits)
    pos = torch.arange(past, past + n, device=device)[None]
    out = model(**_inputs(tokens, embeds, device), position_ids=pos, **with_cache(model, cache), use_cache=True,
                logits_to_keep=0 if all_logits else 1)
    return out.logits[0].float()


@torch.inference_mode()
def forward_tree(
    model,
    cache: DynamicCache,
    tokens: list[int] | None,
    positions: list[int],
    visible: torch.Tensor,
    embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward over ``tokens``, tree nodes appended after the cache.

    The last ``m = visible.shape[1]`` slots (cached ones, then the ``n`` new ones) are this
    tree's nodes, at ``positions`` (length m); ``visible[i, j]`` says new node i may attend to
    tree slot j (its ancestors and itself). Every node sees all slots before the tree.
    Returns float32 logits, one row per new node.
    """
    if isinstance(cache, StaticKVCache):
        return cache.forward(model, tokens, positions, visible, embeds)
    device = model.device
    n, m = len(tokens) if embeds is None else embeds.shape[1], visible.shape[1]
    past = kv_length(cache)
    start = past + n - m  # first tree slot
    pos = torch.tensor(positions, device=device)
    allowed = torch.ones(n, past + n, dtype=torch.bool, device=device)
    allowed[:, start:] = visible.to(device)
    mask: torch.Tensor | dict[str, torch.Tensor] = _attention_mask(model, allowed)
    window = _sliding_window(model)
    if window is not None:
        key_pos = torch.cat([torch.arange(start, device=device), pos])
        in_window = (pos[-n:, None] - key_pos[None, :]) < window
        mask = {"full_attention": mask, "sliding_attention": _attention_mask(model, allowed & in_window)}
    out = model(**_inputs(tokens, embeds, device), position_ids=pos[None, -n:], attention_mask=mask,
                **with_cache(model, cache), use_cache=True)
    return out.logits[0].float()


def keep_slots(cache: DynamicCache, prefix_len: int, slots: list[int]) -> None:
    """Keep cache slots ``[0, prefix_len)`` followed by ``slots`` (ascending, all >= prefix_len)."""
    if isinstance(cache, StaticKVCache):
        return cache.keep(prefix_len, slots)
    k = len(slots)
    contiguous = slots == list(range(prefix_len, prefix_len + k))
    idx = None if contiguous else torch.tensor(slots, device=cache.layers[0].keys.device)
    for layer in cache.layers:
        if idx is not None:
            layer.keys[:, :, prefix_len:prefix_len + k] = layer.keys.index_select(2, idx)
            layer.values[:, :, prefix_len:prefix_len + k] = layer.values.index_select(2, idx)
        layer.keys = layer.keys[:, :, : prefix_len + k]
        layer.values = layer.values[:, :, : prefix_len + k]


def _attention_mask(model, allowed: torch.Tensor) -> torch.Tensor:
    """A (1, 1, q, kv) mask in the form the model's attention implementation expects."""
    mask = allowed[None, None]
    if getattr(model.config, "_attn_implementation", "sdpa") == "eager":
        dtype = model.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _sliding_window(model) -> int | None:
    cfg = model.config.get_text_config(decoder=True)
    types = getattr(cfg, "layer_types", None) or []
    if "sliding_attention" in types and getattr(cfg, "sliding_window", None):
        return int(cfg.sliding_window)
    return None
