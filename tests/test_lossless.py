"""Greedy speculative output equals the target's own greedy `generate`, for every drafter and tree."""

import pytest
import torch

from mambaspec import MambaDrafter, SpeculativeGenerator, TransformerDrafter, TreeShape
from mambaspec.loading.trees import resolve_tree
from tiny import prompts, reference_greedy, tiny_llama, tiny_mamba, tiny_mamba2

SHAPES = ["1", "1,1,1,1", "2,2,1", "3,2,2,1,1"]
MAX_NEW = 24
PROMPTS = prompts(20)

DRAFTERS = {
    "mamba1": lambda: MambaDrafter(tiny_mamba(1)),
    "mamba2": lambda: MambaDrafter(tiny_mamba2(2)),
    "mamba2-module-steps": lambda: _module_steps(MambaDrafter(tiny_mamba2(2))),
    "llama": lambda: TransformerDrafter(tiny_llama(3, layers=1, hidden=32)),
    "oracle": lambda: TransformerDrafter(tiny_llama(0)),  # the target itself: drafts are mostly accepted
}


def _module_steps(drafter: MambaDrafter) -> MambaDrafter:
    drafter.fast_steps = False  # every step through the model's own forward
    return drafter


@pytest.fixture(scope="module")
def references(tiny_target):
    return [reference_greedy(tiny_target, p, MAX_NEW) for p in PROMPTS]


@pytest.mark.parametrize("drafter_name", list(DRAFTERS))
@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_matches_target_generate(tiny_target, references, drafter_name, shape):
    gen = SpeculativeGenerator(tiny_target, DRAFTERS[drafter_name]())
    accept = []
    for prompt, ref in zip(PROMPTS, references):
        result = gen.generate(prompt, max_new_tokens=MAX_NEW, tree=resolve_tree(shape))
        assert result.new_token_ids == ref, f"prompt {prompt[:8]}..."
        accept.append(result.stats.mean_accept_len)
    if drafter_name == "oracle":  # the loop really does accept deep paths
        assert sum(accept) / len(accept) > TreeShape.parse(shape).depth * 0.6 + 1


def test_plain_decoding_matches(tiny_target, references):
    gen = SpeculativeGenerator(tiny_target, None)
    for prompt, ref in zip(PROMPTS, references):
        assert gen.generate(prompt, max_new_tokens=MAX_NEW).new_token_ids == ref


def test_max_new_tokens_is_exact_and_eos_stops(tiny_target, references):
    gen = SpeculativeGenerator(tiny_target, TransformerDrafter(tiny_llama(0)))
    for n in (1, 2, 3, 5, 7):
        res = gen.generate(PROMPTS[0], max_new_tokens=n, tree="3,2,2,1,1")
        assert res.new_token_ids == references[0][:n]
    # EOS inside an accepted path ends generation there, EOS included, as generate() does
    eos_refs = [r for r in references if r and r[-1] == 3]
    assert eos_refs, "fixture should contain a prompt whose greedy output hits EOS"
    for prompt, ref in zip(PROMPTS, references):
        if ref[-1] == 3:
            res = gen.generate(prompt, max_new_tokens=MAX_NEW, tree="1,1,1,1")
            assert res.new_token_ids == ref and res.stats.stopped == "eos"


@pytest.mark.parametrize("make", [lambda: tiny_mamba(1), lambda: tiny_mamba2(2)], ids=["mamba1", "mamba2"])
def test_mamba_state_follows_any_accepted_path(make):
    """After commit, the drafter's state equals a fresh prefill of the committed text, whatever path won."""
    model = make()
    drafter = MambaDrafter(model)
    fresh = MambaDrafter(model)
    from mambaspec import SamplingConfig

    committed = [5, 17, 40, 8, 9, 22]
    drafter.prefill(committed)
    for path_depth in [0, 1, 2, 3, 4, 2, 4, 0]:
        tree = drafter.draft(committed[-1], TreeShape((3, 2, 1, 1)), SamplingConfig())
        # choose the last node at path_depth (a non-first branch where there is one)
        node = max(i for i, d in enumerate(tree.depths) if d == path_depth) if path_depth else 0
        path = tree.path_to(node)
        bonus = 11 + path_depth
        drafter.commit(tree, path, bonus)
        committed += [tree.tokens[i] for i in path] + [bonus]
        fresh.prefill(committed)
        torch.testing.assert_close(drafter.root_logits, fresh.root_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(drafter.state.ssm[0], fresh.state.ssm[0], rtol=1e-4, atol=1e-4)
    assert drafter.state_bytes() == fresh.state_bytes() > 0  # fixed size, whatever the length


def test_fast_mamba2_step_equals_the_model_forward():
    """mamba_step.mamba2_step: same logits and states as the model's forward from the same state."""
    from transformers import DynamicCache

    from mambaspec.drafters.mamba import MambaState
    from mambaspec.drafters.mamba_step import mamba2_step
    from mambaspec.hf_compat import with_cache

    model = tiny_mamba2(2)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([PROMPTS[0]]), **with_cache(model, cache), use_cache=True)
        state = MambaState.read(cache).select([0, 0, 0])
        tokens = torch.tensor([5, 17, 40])
        logits, conv, ssm = mamba2_step(model, state.conv, state.ssm, tokens)
        state.select([0, 1, 2]).install(cache)
        ref = model(input_ids=tokens[:, None], **with_cache(model, cache), use_cache=True).logits[:, -1]
    after = MambaState.read(cache)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(conv + ssm, after.conv + after.ssm):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("drafter_name", ["none", "mamba2", "llama", "oracle"])
@pytest.mark.parametrize("shape", ["1,1,1,1", "3,2,2,1,1", "dynamic"])
def test_static_kv_cache_matches_target_generate(tiny_target, references, drafter_name, shape):
    """The GPU's path (core.static: fixed buffers, node counts padded to buckets, explicit masks, scratch slots)
    run eagerly on the CPU: greedy output still equals transformers' own generate, generation after generation in
    one cache; a 3,2,2,1,1 tree (45 nodes) is padded to 64, a dynamic tree to whatever it grows."""
    drafter = None if drafter_name == "none" else DRAFTERS[drafter_name]()
    gen = SpeculativeGenerator(tiny_target, drafter, static_kv=True, cuda_graphs=False, static_capacity=640)
    assert [c.capacity for c in gen.static_caches] == [512] and not gen.static_caches[0].graphs  # the tiny context
    for prompt, ref in zip(PROMPTS, references):
        result = gen.generate(prompt, max_new_tokens=MAX_NEW, tree=resolve_tree(shape))
        assert gen.static_cache is gen.static_caches[0]
        assert result.new_token_ids == ref, f"prompt {prompt[:8]}..."
        assert result.stats.target_kv_bytes == (len(prompt) - 1) * 2 * 2 * 2 * 16 * 4  # layers, k+v, kv heads, dim
    assert gen.static_cache.length > 0


def test_static_kv_cache_falls_back_when_the_sequence_does_not_fit(tiny_target, references):
    gen = SpeculativeGenerator(tiny_target, DRAFTERS["mamba2"](), static_kv=True, cuda_graphs=False,
                               static_capacity=150)
    result = gen.generate(PROMPTS[5], max_new_tokens=MAX_NEW, tree="2,2,1")  # 33 + 24 + 128 > 150: dynamic cache
    assert result.new_token_ids == references[5] and gen.static_cache is None
    assert gen.static_caches[0].length == 0


def test_each_sequence_goes_into_the_smallest_static_cache_that_holds_it(tiny_target, references, monkeypatch):
    """A forward attends over its cache's whole buffer, so short sequences get a small cache: every output still
    transformers' own, whichever cache (and buffers, and buckets) it went through, one after another."""
    import mambaspec.core.static as static

    room = 128  # the engine's room for a round's tree (STATIC_TREE_ROOM) with a small fixed tree
    sizes = sorted(len(p) + MAX_NEW + room for p in PROMPTS)
    small = sizes[len(sizes) // 2]
    monkeypatch.setattr(static, "CAPACITIES", (small,))
    gen = SpeculativeGenerator(tiny_target, DRAFTERS["mamba2"](), static_kv=True, cuda_graphs=False)
    assert [c.capacity for c in gen.static_caches] == [small, 512]
    used = []
    for prompt, ref in zip(PROMPTS, references):
        result = gen.generate(prompt, max_new_tokens=MAX_NEW, tree="2,1,1")
        assert result.new_token_ids == ref, f"prompt {prompt[:8]}..."
        expected = 0 if len(prompt) + MAX_NEW + room <= small else 1
        assert gen.static_cache is gen.static_caches[expected]
        used.append(expected)
    assert set(used) == {0, 1}


def test_a_round_that_captures_a_cuda_graph_teaches_the_policy_its_cost_without_the_capture(
        tiny_target, references, monkeypatch):
    """A bucket's first use captures its CUDA graph inside a round; that time is left out of what the policy learns
    (one inflated sample could price a tree size out of use) and shows in the stats as ``other_s``. Simulated on the
    CPU: each draft "captures" for 0.2 s."""
    import time

    import mambaspec.core.static as static

    drafter = DRAFTERS["mamba2"]()
    draft = drafter.draft

    def capturing_draft(*args, **kwargs):
        time.sleep(0.2)
        static._CAPTURE_S[0] += 0.2
        return draft(*args, **kwargs)

    monkeypatch.setattr(drafter, "draft", capturing_draft)
    gen = SpeculativeGenerator(tiny_target, drafter)
    policy, seen = resolve_tree("2,1"), []
    observe = policy.observe
    monkeypatch.setattr(policy, "observe", lambda outcome: (seen.append(outcome), observe(outcome)))
    result = gen.generate(PROMPTS[0], max_new_tokens=8, tree=policy)
    assert result.new_token_ids == references[0][:8] and seen
    assert all(o.draft_s < 0.1 and o.seconds < 0.15 for o in seen), [(o.draft_s, o.seconds) for o in seen]
    assert result.stats.draft_s < 0.1 * len(seen) and result.stats.other_s >= 0.19 * len(seen)
