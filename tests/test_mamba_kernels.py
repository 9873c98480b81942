"""The Mamba drafter's step on the GPU path: batches padded to buckets (what CUDA graphs replay), and the mamba_ssm /
causal_conv1d kernels where they import: the same drafts, and output identical to the target's own generate."""

import pytest
import torch

from mambaspec import MambaDrafter, SpeculativeGenerator
from mambaspec.drafters.mamba import MambaState
from mambaspec.drafters.mamba_step import BatchedStep, _import_kernels, mamba2_step
from mambaspec.hf_compat import with_cache
from tiny import prompts, reference_greedy, tiny_mamba2

PROMPTS = prompts(8)


def _tree(shape: str):
    try:
        from mambaspec.loading.trees import resolve_tree
    except ImportError:  # before the engine took policy objects only
        return shape
    return resolve_tree(shape)
MAX_NEW = 24


def _states(model, batch: int, device="cpu") -> MambaState:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([PROMPTS[5]], device=device), **with_cache(model, cache), use_cache=True)
    return MambaState.read(cache).select([0] * batch)


@pytest.mark.parametrize("batch", [1, 3, 5, 17, 64, 70])
def test_padded_batched_step_matches_the_plain_step(batch):
    model = tiny_mamba2(2)
    state = _states(model, batch)
    tokens = torch.arange(batch) % 90 + 4
    with torch.inference_mode():
        ref = mamba2_step(model, state.conv, state.ssm, tokens)
        got = BatchedStep(model, graphs=False)(state.conv, state.ssm, tokens)
    for a, b in zip([ref[0], *ref[1], *ref[2]], [got[0], *got[1], *got[2]]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(ref[0].argmax(-1), got[0].argmax(-1))


@pytest.mark.parametrize("shape", ["1,1,1,1", "3,2,2,1,1", "dynamic"])
def test_padded_steps_are_lossless_and_draft_the_same(tiny_target, shape):
    plain = SpeculativeGenerator(tiny_target, MambaDrafter(tiny_mamba2(2), padded_steps=False))
    padded = SpeculativeGenerator(tiny_target, MambaDrafter(tiny_mamba2(2), padded_steps=True), static_kv=True,
                                  cuda_graphs=False)
    step = padded.drafter.batched_step
    assert step is not None and not step.graphs
    for prompt in PROMPTS:
        ref = reference_greedy(tiny_target, prompt, MAX_NEW)
        a = plain.generate(prompt, MAX_NEW, tree=_tree(shape))
        b = padded.generate(prompt, MAX_NEW, tree=_tree(shape))
        assert a.new_token_ids == b.new_token_ids == ref
        if shape != "dynamic":  # (a dynamic tree also follows measured times)
            assert a.stats.mean_accept_len == b.stats.mean_accept_len


KERNELS = _import_kernels()


@pytest.mark.skipif(KERNELS[0] is None or not torch.cuda.is_available(),
                    reason="mamba_ssm's selective_state_update (the cuda extra) and a GPU")
def test_the_cuda_kernels_step_as_the_torch_path_does():
    model = tiny_mamba2(2).cuda()
    state = _states(model, 7, "cuda")
    tokens = torch.arange(7, device="cuda") + 4
    conv, ssm = state.conv, state.ssm
    conv_k, ssm_k = conv, ssm
    with torch.inference_mode():
        for _ in range(4):  # several steps: the kernels' states feed the next step
            ref, conv, ssm = mamba2_step(model, conv, ssm, tokens, use_kernels=False)
            got, conv_k, ssm_k = mamba2_step(model, conv_k, ssm_k, tokens, use_kernels=True)
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
            assert torch.equal(got.argmax(-1), ref.argmax(-1))
            tokens = ref.argmax(-1)
    for a, b in zip(conv + ssm, conv_k + ssm_k):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(KERNELS[0] is None or not torch.cuda.is_available(),
                    reason="mamba_ssm's selective_state_update (the cuda extra) and a GPU")
def test_the_cuda_kernels_and_graphs_draft_the_same_and_stay_lossless():
    from tiny import tiny_llama

    target = tiny_llama(0).cuda()
    torch_path = MambaDrafter(tiny_mamba2(2).cuda(), padded_steps=False)
    graphed = MambaDrafter(tiny_mamba2(2).cuda())  # CUDA: kernels, padded, CUDA graphs
    assert graphed.batched_step is not None and graphed.batched_step.graphs
    a_gen, b_gen = SpeculativeGenerator(target, torch_path), SpeculativeGenerator(target, graphed)
    for prompt in PROMPTS:
        ref = reference_greedy(target.cpu(), prompt, MAX_NEW)
        target.cuda()
        a = a_gen.generate(prompt, MAX_NEW, tree="3,2,2,1,1")
        b = b_gen.generate(prompt, MAX_NEW, tree="3,2,2,1,1")
        assert a.new_token_ids == b.new_token_ids == ref
        assert a.stats.mean_accept_len == b.stats.mean_accept_len  # the same drafts
