"""A static KV cache and CUDA-graphed target forwards: the decode step at the speed of a GPU.

On a GPU a small target's step is launch overhead, not arithmetic (SmolLM2-135M: ~21 ms a token eager on an
H200, whose memory reads its weights in ~0.1 ms). The cure is the one every serving engine uses: keys and
values in buffers of a fixed capacity at fixed addresses, every forward of a given size the same kernels on
the same tensors, captured once in a CUDA graph and replayed (vLLM, SGLang, gpt-fast).

``StaticKVCache`` holds each layer's keys and values in one buffer of ``capacity`` slots (plus ``pad`` scratch
slots for padded rows). A forward writes its tokens at slots given by a device tensor and attends over the
whole buffer under an explicit mask: the committed prefix, then the tree's own visibility; empty slots are
masked. Node counts are padded up to a bucket (1, 2, 4, ... 64): padded rows write into the scratch slots, see
only slot 0, and their logits are dropped. Compaction to the accepted path (``keep``) moves entries in place
between forwards. The host keeps the committed length; nothing in a forward reads it back from the device.

``graphs=True`` (CUDA) captures one graph per bucket on first use and replays it; ``graphs=False`` runs the
same padded forwards eagerly, on any device: that is how the CPU tests prove the path lossless. A tree of more
nodes than the largest bucket, or a long prompt, runs eagerly through the same buffers.

Models with a sliding window (Gemma 3) are not handled here: ``supports(model)`` says no, and the engine keeps
its dynamic cache for them.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..errors import MambaspecError
from ..hf_compat import with_cache

BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def supports(model) -> bool:
    """A causal LM whose every layer attends over the full context (no sliding window, no recurrent layers)."""
    cfg = model.config.get_text_config(decoder=True)
    types = getattr(cfg, "layer_types", None) or []
    return all(t == "full_attention" for t in types) and not getattr(cfg, "sliding_window", None) \
        and model.config.model_type not in ("mamba", "mamba2")


class _StaticLayer(DynamicLayer):
    """One layer's keys and values in buffers of the cache's full size; a forward writes at ``owner.write_index``."""

    def __init__(self, owner: StaticKVCache) -> None:
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        size = self.owner.capacity + self.owner.pad
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(*key_states.shape[:-2], size, key_states.shape[-1])
        self.values = value_states.new_zeros(*value_states.shape[:-2], size, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        index = self.owner.write_index
        self.keys.index_copy_(2, index, key_states.to(self.keys.dtype))
        self.values.index_copy_(2, index, value_states.to(self.values.dtype))
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.keys.shape[-2] if self.is_initialized else self.owner.capacity + self.owner.pad, 0


class StaticKVCache(DynamicCache):
    """Fixed-capacity KV buffers at fixed addresses; ``length`` committed slots, tracked on the host."""

    def __init__(self, capacity: int, pad: int = BUCKETS[-1], graphs: bool = False) -> None:
        super().__init__()
        self.capacity, self.pad, self.graphs = capacity, pad, graphs
        self.layer_class_to_replicate = lambda: _StaticLayer(self)
        self.length = 0
        self.write_index: torch.Tensor | None = None
        self._graphs: dict[int, _Graph] = {}

    def reset(self) -> None:
        """Empty (the buffers and graphs stay: the next sequence reuses them)."""
        self.length = 0

    def nbytes(self) -> int:
        """Bytes of the committed keys and values (what a dynamic cache of this length would hold)."""
        return sum(2 * layer.keys[:, :, : self.length].numel() * layer.keys.element_size()
                   for layer in self.layers if layer.is_initialized)

    def keep(self, prefix_len: int, slots: list[int]) -> None:
        """Keep slots ``[0, prefix_len)`` and then ``slots`` (ascending, all >= prefix_len)."""
        k = len(slots)
        if slots != list(range(prefix_len, prefix_len + k)):
            idx = torch.tensor(slots, device=self.layers[0].keys.device)
            for layer in self.layers:
                layer.keys[:, :, prefix_len:prefix_len + k] = layer.keys.index_select(2, idx)
                layer.values[:, :, prefix_len:prefix_len + k] = layer.values.index_select(2, idx)
        self.length = prefix_len + k

    def forward(self, model, tokens: list[int] | None, positions: list[int], visible: torch.Tensor,
                embeds: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (float32, one row per token; ``last_only``: of the last token) of ``tokens`` appended after the
        cache: the last ``m`` slots (cached, then new) are a tree whose node i sees tree slot j when
        ``visible[i, j]``; every node sees the slots before the tree. ``positions``: of the ``m`` tree slots."""
        n, m = (len(tokens) if embeds is None else embeds.shape[1]), visible.shape[1]
        start, end = self.length + n - m, self.length + n
        if end > self.capacity:
            raise MambaspecError(f"a forward of {n} tokens after {self.length} does not fit the static KV cache of "
                                 f"{self.capacity} slots; use a smaller tree, or the dynamic cache (static_kv=False)")
        bucket = next((b for b in BUCKETS if b >= n), None)
        if embeds is not None or bucket is None or not self.layers or not self.layers[0].is_initialized:
            bucket = None  # prompts, embeddings, trees past the largest bucket, the first forward: eager, unpadded
        size = n if bucket is None else bucket
        device = model.device
        mask = torch.zeros(size, self.capacity + self.pad, dtype=torch.bool)
        mask[:n, :start] = True
        mask[:n, start:end] = visible.to(torch.bool).cpu()
        rows = torch.arange(n, size)
        mask[rows, self.capacity + rows] = True  # a padded row sees its own scratch slot only
        write = torch.cat([torch.arange(self.length, end), self.capacity + rows])
        ids = list(tokens or []) + [0] * (size - n)
        pos = list(positions[-n:]) + [positions[-1]] * (size - n)
        if bucket is not None and self.graphs:
            graph = self._graphs.get(bucket)
            if graph is None:
                graph = self._graphs[bucket] = _Graph(model, self, bucket)
            logits = graph.run(ids, pos, mask, write)[n - 1 if last_only else 0:n].clone()  # (replays overwrite it)
        else:
            self.write_index = write.to(device)
            inputs = {"inputs_embeds": embeds} if embeds is not None else {
                "input_ids": torch.tensor([ids], device=device)}
            keep = size - n + 1 if last_only else 0  # logits of the rows from the last real one on, or of all
            logits = model(**inputs, position_ids=torch.tensor([pos], device=device),
                           attention_mask=mask[None, None].to(device), **with_cache(model, self), use_cache=True,
                           logits_to_keep=keep).logits[0]
            logits = logits[:1] if last_only else logits[:n]
        self.length = end
        return logits.float()


class _Graph:
    """One captured forward of ``bucket`` tokens over the cache's buffers; inputs copied into static tensors."""

    def __init__(self, model, cache: StaticKVCache, bucket: int) -> None:
        device = model.device
        self.ids = torch.zeros(1, bucket, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, bucket, dtype=torch.long, device=device)
        self.mask = torch.zeros(1, 1, bucket, cache.capacity + cache.pad, dtype=torch.bool, device=device)
        self.mask[..., 0] = True
        self.write = torch.arange(cache.capacity, cache.capacity + bucket, device=device)  # scratch while capturing
        cache.write_index = self.write
        kwargs = dict(input_ids=self.ids, position_ids=self.pos, attention_mask=self.mask, use_cache=True,
                      **with_cache(model, cache))
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (kernel selection, lazy allocations)
                model(**kwargs)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model(**kwargs).logits[0]

    def run(self, ids: list[int], pos: list[int], mask: torch.Tensor, write: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(torch.tensor([ids]))
        self.pos.copy_(torch.tensor([pos]))
        self.mask.copy_(mask[None, None])
        self.write.copy_(write)
        self.graph.replay()
        return self.logits
