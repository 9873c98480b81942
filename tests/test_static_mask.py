"""core.static's device-built mask (what a CUDA graph replays from a few ints): the same logits as the dynamic
cache's host-built mask over random trees, chains, compactions and a visibility that is no tree's."""

import pytest
import torch

from mambaspec.core.kv import forward_chain, forward_tree, keep_slots, new_kv_cache
from mambaspec.core.static import BUCKETS, StaticKVCache, build_mask, tree_parents
from tiny import VOCAB, tiny_llama


def _ancestor_mask(parents: list[int]) -> torch.Tensor:
    n = len(parents)
    v = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            v[i] |= v[p]
    return v


def _random_tree(n: int, g: torch.Generator) -> list[int]:
    return [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]


def _depths(parents: list[int]) -> list[int]:
    d: list[int] = []
    for p in parents:
        d.append(0 if p < 0 else d[p] + 1)
    return d


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 31, 64])
def test_tree_parents_and_the_device_mask_match_the_host_mask(n):
    g = torch.Generator().manual_seed(n)
    parents = _random_tree(n, g)
    visible = _ancestor_mask(parents)
    assert tree_parents(visible).tolist() == parents
    bucket = next(b for b in BUCKETS if b >= n)
    capacity, pad, start = 200, 64, 37
    rows, cols = torch.arange(bucket), torch.arange(capacity + pad)
    padded = torch.tensor(parents + [-1] * (bucket - n))
    mask = build_mask(padded, torch.tensor(start), (rows < n)[:, None], rows, cols, capacity, (bucket - 1).bit_length())
    host = torch.zeros(bucket, capacity + pad, dtype=torch.bool)
    host[:n, :start] = True
    host[:n, start:start + n] = visible
    host[torch.arange(n, bucket), capacity + torch.arange(n, bucket)] = True
    assert torch.equal(mask, host)


def test_a_visibility_that_is_no_tree_has_no_parents():
    v = _ancestor_mask([-1, 0, 1])
    v[2, 0] = False  # sees its parent but not its grandparent
    assert tree_parents(v) is None
    assert tree_parents(torch.ones(2, 3, dtype=torch.bool)) is None


@torch.inference_mode()
def test_static_bucketed_forwards_match_the_dynamic_cache_over_random_trees():
    model = tiny_llama(0)
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(4, VOCAB, (30,), generator=g).tolist()
    static, dynamic = StaticKVCache(400), new_kv_cache()
    for cache in (static, dynamic):
        forward_chain(model, cache, prompt)
    length = len(prompt)
    for n in (1, 3, 7, 16, 40, 64, 5, 2):
        parents = _random_tree(n, g)
        tokens = torch.randint(4, VOCAB, (n,), generator=g).tolist()
        positions = [length + d for d in _depths(parents)]
        visible = _ancestor_mask(parents)
        a = forward_tree(model, static, tokens, positions, visible)
        b = forward_tree(model, dynamic, tokens, positions, visible)
        assert a.shape == b.shape == (n, VOCAB)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4) and torch.equal(a.argmax(-1), b.argmax(-1))
        path = [0]  # keep the root and one chain down the tree
        while (kids := [i for i, p in enumerate(parents) if p == path[-1]]):
            path.append(kids[0])
        for cache in (static, dynamic):
            keep_slots(cache, length, [length + i for i in path])
        length += len(path)
    assert static.buckets_built >= {1, 4, 8, 16, 64}  # the bucketed path ran (eagerly, not captured, on the CPU)
    a = forward_chain(model, static, [5, 6, 7])
    b = forward_chain(model, dynamic, [5, 6, 7])
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_a_forward_whose_visibility_is_no_tree_runs_eagerly_and_matches():
    model = tiny_llama(0)
    prompt = list(range(4, 24))
    static, dynamic = StaticKVCache(200), new_kv_cache()
    for cache in (static, dynamic):
        forward_chain(model, cache, prompt)
    v = _ancestor_mask([-1, 0, 1])
    v[2, 0] = False
    a = forward_tree(model, static, [7, 8, 9], [20, 21, 22], v)
    b = forward_tree(model, dynamic, [7, 8, 9], [20, 21, 22], v)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_the_static_cache_takes_only_models_whose_forward_it_can_mask_and_capture():
    """SDPA (plain or packed) takes the boolean mask as it is; eager attention would add it to the scores, a flash
    kernel takes none; a dynamic or LongRoPE rotary embedding reads positions back to the host (no CUDA graph)."""
    from mambaspec.core.static import supports
    from mambaspec.cpu.attention import NAME, use_packed_attention

    model = tiny_llama(0)
    assert supports(model)
    assert use_packed_attention(model) and model.config._attn_implementation == NAME and supports(model)
    model.config._attn_implementation = "eager"
    assert not supports(model)
    model.config._attn_implementation = "sdpa"
    model.model.rotary_emb.rope_type = "dynamic"
    assert not supports(model)
    model.model.rotary_emb.rope_type = {"full_attention": "longrope"}
    assert not supports(model)
