"""A static KV cache and CUDA-graphed target forwards: the decode step at the speed of a GPU.

On a GPU a small target's step is launch overhead, not arithmetic (SmolLM2-135M: ~21 ms a token eager on an
H200, whose memory reads its weights in ~0.1 ms). The cure is the one every serving engine uses: keys and
values in buffers of a fixed capacity at fixed addresses, every forward of a given size the same kernels on
the same tensors, captured once in a CUDA graph and replayed (vLLM, SGLang, gpt-fast).

``StaticKVCache`` holds each layer's keys and values in one buffer of ``capacity`` slots (plus ``pad`` scratch
slots for padded rows). A forward writes its tokens at slots given by a device tensor and attends over the
whole buffer under an explicit mask: the committed prefix, then the tree's own visibility; empty slots are
masked. Node counts are padded up to a bucket (1, 2, 4, ... 64): padded rows write into the scratch slots, see
only their own, and their logits are dropped. Compaction to the accepted path (``keep``) moves entries in place
between forwards. The host keeps the committed length; nothing in a forward reads it back from the device.

``graphs=True`` (CUDA) captures one graph per bucket on first use and replays it: a replay copies one small host
tensor of token ids, positions and parent pointers, and the mask and write slots are computed from it on the device,
inside the graph. ``graphs=False`` runs the same padded forwards eagerly, on any device: that is how the CPU tests
prove the path lossless. A tree of more nodes than the largest bucket, a long prompt, or a forward whose visibility
is not a tree's, runs eagerly through the same buffers under a mask built on the host, over the slots written so far.
An engine keeps caches of a few sizes (``CAPACITIES``) and puts each sequence in the smallest that holds it, since a
graphed step attends over its whole buffer.

Models with a sliding window (Gemma 3) are not handled here: ``supports(model)`` says no, and the engine keeps
its dynamic cache for them.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..errors import MambaspecError
from ..hf_compat import with_cache

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Sizes of the static caches an engine keeps: a forward attends over its cache's whole buffer (empty slots masked),
# so a short sequence goes into a small cache (with graphs of its own) instead of paying attention over 8,192 slots.
# Each is allocated on its first use: a mix of lengths holds at most about twice the largest.
CAPACITIES = (1024, 2048, 4096, 8192)
T = TypeVar("T")


# Attention that takes the cache's boolean 4-D mask as it is: SDPA, and its packed form (``cpu.attention.NAME``).
# Eager attention adds a mask to the scores (a boolean one would mask nothing); flash kernels take none.
MASKED_ATTENTION = ("sdpa", "mambaspec_sdpa")


def capacities(model, largest: int) -> tuple[int, ...]:
    """The static caches' sizes for ``model``, smallest first: up to its context length and ``largest``."""
    cfg = model.config.get_text_config(decoder=True)
    limit = min(int(getattr(cfg, "max_position_embeddings", 0) or largest), largest)
    return tuple(c for c in CAPACITIES if c < limit) + (limit,)


def supports(model) -> bool:
    """A causal LM whose every layer attends over the full context (no sliding window, no recurrent layers) through
    attention that takes an explicit mask, with a rotary embedding that stays fixed (a dynamic or LongRoPE one
    reads the largest position back to the host at each forward, which a CUDA graph cannot capture)."""
    cfg = model.config.get_text_config(decoder=True)
    types = getattr(cfg, "layer_types", None) or []
    return (all(t == "full_attention" for t in types) and not getattr(cfg, "sliding_window", None)
            and model.config.model_type not in ("mamba", "mamba2")
            and getattr(model.config, "_attn_implementation", "sdpa") in MASKED_ATTENTION
            and not any("dynamic" in r or r == "longrope" for r in _rope_types(model)))


def _rope_types(model) -> set[str]:
    """The rotary embeddings' types (transformers keeps one per module, or one per layer type)."""
    found: set[str] = set()
    for module in model.modules():
        kind = getattr(module, "rope_type", None)
        if isinstance(kind, str):
            found.add(kind)
        elif isinstance(kind, dict):
            found |= {v for v in kind.values() if isinstance(v, str)}
    return found


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
        width = self.owner.width
        return (self.keys, self.values) if width is None else (self.keys[:, :, :width], self.values[:, :, :width])

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.owner.width or self.owner.capacity + self.owner.pad, 0


class StaticKVCache(DynamicCache):
    """Fixed-capacity KV buffers at fixed addresses; ``length`` committed slots, tracked on the host."""

    def __init__(self, capacity: int, pad: int = BUCKETS[-1], graphs: bool = False) -> None:
        super().__init__()
        self.capacity, self.pad, self.graphs = capacity, pad, graphs
        self.layer_class_to_replicate = lambda: _StaticLayer(self)
        self.length = 0
        self.write_index: torch.Tensor | None = None
        self.width: int | None = None  # an eager forward attends over the first ``width`` slots; None: all of them
        self._graphs: dict[int, _BucketStep] = {}

    @property
    def buckets_built(self) -> frozenset[int]:
        """The node-count buckets whose padded step has run (captured as CUDA graphs when ``graphs``)."""
        return frozenset(self._graphs)

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
        parents = tree_parents(visible) if bucket is not None and m == n else None
        if embeds is not None or parents is None or not self.layers or not self.layers[0].is_initialized:
            # prompts, embeddings, trees past the largest bucket or over cached slots, the first forward: eager,
            # unpadded, the mask built here
            logits = self._eager(model, tokens, positions[-n:], visible, embeds, start, last_only)
        else:  # padded to the bucket; the mask is built on the device from a few ints (in the graph on CUDA)
            assert bucket is not None and tokens is not None
            args = torch.tensor(list(tokens) + [0] * (bucket - n) + list(positions[-n:]) +
                                [positions[-1]] * (bucket - n) + parents.tolist() + [-1] * (bucket - n) + [start, n])
            step = self._graphs.get(bucket)
            if step is None:
                step = self._graphs[bucket] = _BucketStep(model, self, bucket, capture=self.graphs)
            logits = step.run(model, self, args)[n - 1 if last_only else 0:n].clone()  # (replays overwrite it)
        self.length = end
        return logits.float()

    def _eager(self, model, tokens, positions, visible, embeds, start: int, last_only: bool) -> torch.Tensor:
        """An unpadded forward of the ``n`` new tokens, its mask built on the host."""
        n, end = len(positions), self.length + len(positions)
        device = model.device
        mask = torch.zeros(n, end, dtype=torch.bool)  # over the slots written so far only (a prompt of 8k tokens:
        mask[:, :start] = True                        # not a mask and an attention over the whole buffer)
        mask[:, start:end] = visible.to(torch.bool).cpu()
        self.write_index = torch.arange(self.length, end, device=device)
        inputs = ({"inputs_embeds": embeds} if embeds is not None
                  else {"input_ids": torch.tensor([tokens], device=device)})
        self.width = end
        try:
            logits = model(**inputs, position_ids=torch.tensor([positions], device=device),
                           attention_mask=mask[None, None].to(device), **with_cache(model, self), use_cache=True,
                           logits_to_keep=1 if last_only else 0).logits[0]
        finally:
            self.width = None
        return logits


def tree_parents(visible: torch.Tensor) -> torch.Tensor | None:
    """Each node's parent (-1: none) when ``visible`` (n x n) is a tree's ancestor-or-self mask with parents before
    children, which is what every verification and chain is; None otherwise."""
    v = visible.to(torch.bool).cpu()
    n = v.shape[0]
    if v.dim() != 2 or v.shape[1] != n:
        return None
    idx = torch.arange(n)
    parents = torch.where(v & (idx[None, :] < idx[:, None]), idx[None, :], -1).amax(1)
    expect = torch.eye(n, dtype=torch.bool) | (v[parents.clamp(min=0)] & (parents >= 0)[:, None])
    return parents if torch.equal(expect, v) else None


_CAPTURE_S = [0.0]  # seconds this process has spent in capture_graph


def capture_seconds() -> float:
    """Seconds this process has spent capturing CUDA graphs so far. A round that captures one (the first use of a
    bucket) leaves that time out of what the tree policies learn from (``engine``): else one inflated sample could
    price a tree size out of use for good."""
    return _CAPTURE_S[0]


def capture_graph(fn: Callable[[], T], device: torch.device) -> tuple[torch.cuda.CUDAGraph, T]:
    """``fn`` captured as a CUDA graph, after two warm-up runs on a side stream (kernel selection, lazy allocations,
    Triton compilation); returns the graph and ``fn``'s outputs, which every replay overwrites."""
    t0 = time.perf_counter()
    with torch.cuda.device(device):  # the model's GPU, whichever is current in this thread (e.g. a server's worker)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        torch.cuda.synchronize(device)
    _CAPTURE_S[0] += time.perf_counter() - t0
    return graph, out


class _BucketStep:
    """One forward of ``bucket`` tokens over the cache's buffers, its inputs in static device tensors filled from one
    host tensor of ``3 * bucket + 2`` ints (token ids, positions, parents, then the first tree slot and the number
    of real nodes): the write slots and the attention mask are computed from them on the device. ``capture``
    (CUDA): captured once as a CUDA graph and replayed; otherwise run eagerly, the same code (how the CPU tests
    prove the graphed path lossless)."""

    def __init__(self, model, cache: StaticKVCache, bucket: int, capture: bool) -> None:
        device = model.device
        self.bucket, self.capture = bucket, capture
        self.args = torch.zeros(3 * bucket + 2, dtype=torch.long, device=device)
        self.args[2 * bucket:3 * bucket] = -1  # while capturing: no real rows, every row into its scratch slot
        self.rows = torch.arange(bucket, device=device)
        self.cols = torch.arange(cache.capacity + cache.pad, device=device)
        self.closure_steps = (bucket - 1).bit_length()  # squarings that reach every ancestor of a depth < bucket
        if capture:
            self._capture(model, cache)

    def _forward(self, model, cache: StaticKVCache) -> torch.Tensor:
        b = self.bucket
        ids, pos, parents = self.args[:b], self.args[b:2 * b], self.args[2 * b:3 * b]
        start, n = self.args[3 * b], self.args[3 * b + 1]
        real = (self.rows < n)[:, None]
        cache.write_index = torch.where(real[:, 0], start + self.rows, cache.capacity + self.rows)
        mask = build_mask(parents, start, real, self.rows, self.cols, cache.capacity, self.closure_steps)
        return model(input_ids=ids[None], position_ids=pos[None], attention_mask=mask[None, None], use_cache=True,
                     **with_cache(model, cache)).logits[0]

    def _capture(self, model, cache: StaticKVCache) -> None:
        self.graph, self.logits = capture_graph(lambda: self._forward(model, cache), model.device)

    def run(self, model, cache: StaticKVCache, args: torch.Tensor) -> torch.Tensor:
        self.args.copy_(args, non_blocking=True)
        if not self.capture:
            return self._forward(model, cache)
        self.graph.replay()
        return self.logits


def build_mask(parents: torch.Tensor, start: torch.Tensor, real: torch.Tensor, rows: torch.Tensor,
               cols: torch.Tensor, capacity: int, closure_steps: int) -> torch.Tensor:
    """The (bucket, slots) attention mask of a padded tree forward, on the device, from the nodes' ``parents``: a
    real row sees the slots before the tree (``< start``) and its ancestors and itself in the tree; a padded row
    sees its own scratch slot only."""
    anc = (rows[:, None] == rows[None, :]) | (parents[:, None] == rows[None, :])
    anc_f = anc.float()
    for _ in range(closure_steps):  # ancestor-or-self: paths of length <= 2^k after k squarings (sums stay exact)
        anc_f = (anc_f @ anc_f).clamp(max=1.0)
    rel = cols[None, :] - start
    in_tree = (rel >= 0) & (rel < rows.shape[0])
    tree = torch.gather(anc_f > 0, 1, rel.clamp(0, rows.shape[0] - 1).expand(rows.shape[0], -1)) & in_tree
    return (real & ((cols[None, :] < start) | tree)) | (~real & (cols[None, :] == capacity + rows[:, None]))
