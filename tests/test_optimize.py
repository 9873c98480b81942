"""The cheap verification path: packed-GQA attention, oneDNN linears, int8, preallocated KV cache,
`--compile` — each equal to what it replaces, and greedy decoding lossless with each option on."""

import json

import pytest
import torch
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mambaspec import MambaDrafter, MambaspecError, SpeculativeGenerator, TransformerDrafter
from mambaspec.core.kv import PreallocatedLayer, keep_slots, new_kv_cache
from mambaspec.cpu.attention import packed_gqa_attention, use_packed_attention
from mambaspec.cpu.linears import OneDNNLinear, onednn_usable, optimize_model
from conftest import run_cli
from tiny import prompts, reference_greedy, tiny_llama, tiny_mamba2


class _Module:
    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("q", [1, 2, 5, 17])
def test_packed_gqa_attention_equals_sdpa(q):
    torch.manual_seed(q)
    b, kv_heads, k_len, d = 1, 2, 40, 16
    query = torch.randn(b, kv_heads * 3, q, d)
    key, value = torch.randn(b, kv_heads, k_len, d), torch.randn(b, kv_heads, k_len, d)
    mask = torch.rand(1, 1, q, k_len) > 0.3
    mask[..., 0] = True  # every query sees something
    ours, _ = packed_gqa_attention(_Module(), query, key, value, mask, scaling=0.25)
    ref, _ = sdpa_attention_forward(_Module(), query, key, value, mask, scaling=0.25)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not onednn_usable(torch.nn.Linear(2, 2)), reason="no oneDNN in this torch build")
@pytest.mark.parametrize("rows", [1, 5, 64, 300])
def test_onednn_linear_equals_linear(rows):
    torch.manual_seed(rows)
    lin = torch.nn.Linear(48, 80)
    x = torch.randn(1, rows, 48)
    torch.testing.assert_close(OneDNNLinear(lin)(x), lin(x), rtol=1e-4, atol=1e-4)


def test_preallocated_cache_matches_dynamic_layers():
    torch.manual_seed(0)
    ours, ref = PreallocatedLayer(), DynamicLayer()
    chunks = [torch.randn(1, 2, n, 4) for n in (300, 5, 1, 260)]
    for i, c in enumerate(chunks):
        ka, va = ours.update(c, c * 2)
        kb, vb = ref.update(c, c * 2)
        assert torch.equal(ka, kb) and torch.equal(va, vb)
    cache = new_kv_cache()
    cache.update(chunks[0], chunks[0], 0)
    cache.update(chunks[1], chunks[1], 0)
    keep_slots(cache, 300, [301, 303])
    assert cache.get_seq_length() == 302
    assert torch.equal(cache.layers[0].keys[:, :, 300:], chunks[1][:, :, [1, 3]])
    assert cache.layers[0].key_buffer.shape[-2] >= 302  # the buffer is kept; only the view shrinks


OPTIONS = {
    "onednn": dict(linear="onednn"),
    "int8": dict(linear="torch", quantize="int8"),
    "compile": dict(compile=True),
}


@pytest.mark.parametrize("option", [
    "onednn", "int8", pytest.param("compile", marks=pytest.mark.slow)])
def test_greedy_is_lossless_with_each_option(option):
    if option == "onednn" and not onednn_usable(torch.nn.Linear(2, 2)):
        pytest.skip("no oneDNN in this torch build")
    target = tiny_llama(0)
    done = optimize_model(target, **OPTIONS[option])
    ps = prompts(8)
    refs = [reference_greedy(target, p, 20) for p in ps]  # the optimized model's own greedy output
    assert use_packed_attention(target)  # the engine's tree attention, as the loader switches it
    for make in (lambda: MambaDrafter(tiny_mamba2(2)), lambda: TransformerDrafter(tiny_llama(3, layers=1, hidden=32))):
        drafter = make()
        if option == "onednn":
            optimize_model(drafter.model, linear="onednn")
        gen = SpeculativeGenerator(target, drafter, target_options=done)
        for shape in ("1,1,1,1", "3,2,2,1,1"):
            for p, ref in zip(ps, refs):
                assert gen.generate(p, max_new_tokens=20, tree=shape).new_token_ids == ref, (option, shape)
    assert gen.generate(ps[0], max_new_tokens=4).stats.target_options != "stock"


def test_bad_options():
    with pytest.raises(MambaspecError, match="unknown quantization"):
        optimize_model(tiny_llama(0), quantize="int4")
    with pytest.raises(MambaspecError, match="unknown linear backend"):
        optimize_model(tiny_llama(0), linear="mkl")


def test_verify_cost_cli(tiny_dir, tmp_path, monkeypatch):
    from mambaspec.loading.costs import costs_dir

    monkeypatch.setenv("MAMBASPEC_COSTS", str(tmp_path / "costs"))
    args = ["verify-cost", "--target", tiny_dir["target"], "--prefix", "64,200", "--nodes", "1,2,5", "--repeats", "2"]
    res = run_cli(*args, "--out", tmp_path, "--no-save-costs")
    assert res.exit_code == 0, res.stderr
    assert "engine ms" in res.stdout and "floor ms" in res.stdout and "prefill s" in res.stdout
    lines = (tmp_path / "verify_cost.csv").read_text().splitlines()
    assert lines[0].startswith("prefix,nodes,engine_ms,plain_ms") and len(lines) == 7
    assert "engine_prefill_s" in lines[0] and not costs_dir().exists()
    assert run_cli(*args, "--out", tmp_path).exit_code == 0  # the engine's timings go to the cost store
    [store] = costs_dir().glob("*.json")
    samples = json.loads(store.read_text())["samples"]
    assert sorted((n, c) for n, c, _ in samples) == [(0, 64), (0, 200), (1, 64), (1, 200), (4, 64), (4, 200)]
    bad = run_cli(*args[:5], "--nodes", "a,b")
    assert bad.exit_code != 0 and "--nodes" in bad.stderr and bad.exception is None or isinstance(
        bad.exception, SystemExit)


@pytest.mark.parametrize("q,prefix,tree", [(1, 3000, 1), (6, 4000, 6), (16, 1100, 16), (5, 2049, 5)])
def test_shared_prefix_attention_equals_sdpa(q, prefix, tree):
    """The long-cache path (split prefix without a mask + masked tree, merged by log-sum-exp) equals SDPA."""
    from mambaspec.cpu import attention

    torch.manual_seed(q)
    heads, n_rep, d = 3, 3, 16
    query = torch.randn(1, heads * n_rep, q, d)
    key, value = torch.randn(1, heads, prefix + tree, d), torch.randn(1, heads, prefix + tree, d)
    mask = torch.ones(1, 1, q, prefix + tree, dtype=torch.bool)
    mask[0, 0, :, prefix:] = (torch.rand(q, tree) > 0.4).tril()  # a node sees some of the earlier nodes ...
    mask[0, 0, :, prefix:].fill_diagonal_(True)  # ... and itself
    ours, _ = packed_gqa_attention(_Module(), query, key, value, mask, scaling=0.25)
    ref, _ = sdpa_attention_forward(_Module(), query, key, value, mask, scaling=0.25)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    alone, _ = packed_gqa_attention(_Module(), query[:, :, :1], key[:, :, :prefix + 1], value[:, :, :prefix + 1],
                                    mask[..., :1, :prefix + 1], scaling=0.25)
    torch.testing.assert_close(ours[:, :1], alone, rtol=1e-6, atol=1e-6)  # a row as if it came alone
    assert attention._shared_prefix(query, key, mask, {}) == prefix


def test_greedy_is_lossless_on_the_shared_prefix_path(monkeypatch):
    """Tiny models have short contexts: lower the threshold so that every verification takes the long-cache path."""
    from mambaspec.cpu import attention

    monkeypatch.setattr(attention, "LONG_PREFIX", 8)
    monkeypatch.setattr(attention, "SPLIT_KEYS", 4)
    target = tiny_llama(0)
    use_packed_attention(target)
    ps = [p for p in prompts(14) if len(p) > 12]
    refs = [reference_greedy(target, p, 20) for p in ps]
    gen = SpeculativeGenerator(target, MambaDrafter(tiny_mamba2(2)))
    for shape in ("1", "2,2,1"):
        for p, ref in zip(ps, refs):
            assert gen.generate(p, max_new_tokens=20, tree=shape).new_token_ids == ref
