"""Sampled speculative output follows the target's distribution (chi-square tests), under both acceptance rules;
under the gumbel rule a seed fixes the text whatever the tree and drafter."""

import pytest
import torch
from scipy.stats import chisquare

import mambaspec.core.verify as verify_mod
from mambaspec import MambaDrafter, SamplingConfig, SpeculativeGenerator, TransformerDrafter, warp
from mambaspec.core.sampling import GumbelNoise
from mambaspec.core.verify import accept_child_sampled
from mambaspec.loading.trees import resolve_tree
from conftest import run_cli
from tiny import prompts, tiny_llama, tiny_mamba2

ALPHA = 1e-3  # fixed seeds make each test deterministic; a correct rule passes, a wrong one is far below


def _pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum().item()
    expected = probs * n
    keep = expected >= 5  # merge sparse cells into one
    obs = torch.cat([counts[keep], counts[~keep].sum(0, keepdim=True)]).double()
    exp = torch.cat([expected[keep], expected[~keep].sum(0, keepdim=True)]).double()
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()
    return chisquare(obs.numpy(), exp.numpy()).pvalue


def _one_step_samples(rule, p, q, k, n, seed=0, fixed=()):
    """Draw k children from q (without replacement, after the deterministic proposals ``fixed`` are
    removed from q), try ``fixed`` then them with ``rule``; count the tokens that come out."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros_like(p)
    q = q.clone()
    q[list(fixed)] = 0
    q = q / q.sum()
    for _ in range(n):
        children = list(fixed) + (torch.multinomial(q, k, replacement=False, generator=g).tolist() if k else [])
        drawn = [False] * len(fixed) + [True] * k
        i, residual = rule(p, q, children, drawn, g)
        tok = children[i] if i is not None else int(torch.multinomial(residual, 1, generator=g))
        counts[tok] += 1
    return counts


P = torch.tensor([0.30, 0.25, 0.15, 0.12, 0.08, 0.05, 0.03, 0.02])
Q = torch.tensor([0.05, 0.10, 0.30, 0.05, 0.20, 0.10, 0.15, 0.05])


@pytest.mark.parametrize("k,fixed", [(1, ()), (2, ()), (3, ()), (0, (4,)), (2, (0,)), (1, (6, 2))],
                         ids=["1", "2", "3", "lookup-only", "lookup+2", "2-lookups+1"])
def test_acceptance_rule_reproduces_p(k, fixed):
    """Drawn children, deterministic proposals (e.g. copied from the context), and both mixed."""
    counts = _one_step_samples(accept_child_sampled, P, Q, k, 20000, fixed=fixed)
    assert _pvalue(counts, P) > ALPHA


def _broken_no_residual(p, q, children, drawn, g):
    """A classic bug: on rejection, sample the bonus from p instead of the residual."""
    for i, c in enumerate(children):
        if torch.rand((), generator=g) < min(1.0, float(p[c] / q[c])):
            return i, p
    return None, p


def _broken_keep_q(p, q, children, drawn, g):
    """Another: forget that later children were drawn without the rejected ones (q not renormalised)."""
    p = p.clone()
    for i, c in enumerate(children):
        if torch.rand((), generator=g) * q[c] < p[c]:
            return i, p
        r = torch.clamp(p - q, min=0)
        p = r / r.sum()
    return None, p


def _broken_lookup_as_drawn(p, q, children, drawn, g):
    """A mixed-proposal bug: judge a deterministic proposal as if drawn from q."""
    return accept_child_sampled(p, q, children, [True] * len(children), g)


@pytest.mark.parametrize("broken,k,fixed", [(_broken_no_residual, 1, ()), (_broken_keep_q, 3, ()),
                                            (_broken_lookup_as_drawn, 1, (0,))])
def test_broken_rules_are_caught(broken, k, fixed):
    counts = _one_step_samples(broken, P, Q, k, 20000, fixed=fixed)
    assert _pvalue(counts, P) < ALPHA


def _exact_two_token_joint(target, prompt, sampling):
    """p(x1, x2 | prompt) over the whole (small) vocabulary, flattened."""
    with torch.inference_mode():
        p1 = warp(target(torch.tensor([prompt])).logits[0, -1], sampling)
        v = p1.shape[0]
        batch = torch.tensor([prompt + [x] for x in range(v)])
        p2 = warp(target(batch).logits[:, -1], sampling)
    return (p1[:, None] * p2).flatten()


def _joint_counts(gen, prompt, sampling, n, tree, v, seed=0):
    counts = torch.zeros(v * v)
    torch.manual_seed(seed)
    for i in range(n):
        ids = gen.generate(prompt, max_new_tokens=2, tree=tree, sampling=sampling, seed=seed * 100000 + i).new_token_ids
        if len(ids) == 2:
            counts[ids[0] * v + ids[1]] += 1
        else:  # EOS first: count it in row x1 = EOS, column 0 is never used for it otherwise
            counts[ids[0] * v + 0] += 1
    return counts


def small_vocab_target():
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, eos_token_id=None)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(4.0)  # peaked enough that the draft is often right, not always
    return m


@pytest.mark.parametrize("drafter_kind,tree,acceptance", [
    ("mamba2", "1,1", "rejection"), ("mamba2", "3,2", "rejection"), ("llama", "1,1", "rejection"),
    ("llama", "3,2", "rejection"), ("mamba2", "3,2", "gumbel")])
def test_sampled_tokens_follow_target(tree, drafter_kind, acceptance):
    target = small_vocab_target()
    target.generation_config.eos_token_id = None
    from transformers import LlamaConfig, LlamaForCausalLM, Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(5)
    if drafter_kind == "mamba2":
        dm = Mamba2ForCausalLM(Mamba2Config(vocab_size=12, hidden_size=32, num_hidden_layers=1, state_size=8,
                                            expand=2, num_heads=4, head_dim=16, n_groups=1, chunk_size=8))
        drafter = MambaDrafter(dm.eval())
    else:
        dm = LlamaForCausalLM(LlamaConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
        drafter = TransformerDrafter(dm.eval())
    with torch.no_grad():
        dm.get_output_embeddings().weight.mul_(3.0)
    gen = SpeculativeGenerator(target, drafter, eos_token_ids=[])
    sampling = SamplingConfig(temperature=1.0, acceptance=acceptance)
    prompt = [3, 7, 1]
    exact = _exact_two_token_joint(target, prompt, sampling)
    counts = _joint_counts(gen, prompt, sampling, 2500, tree, 12)
    assert _pvalue(counts, exact) > ALPHA


@pytest.mark.parametrize("acceptance", ["rejection", "gumbel"])
def test_sampling_with_top_k_top_p_follows_warped_target(acceptance):
    target = small_vocab_target()
    drafter = TransformerDrafter(tiny_llama_like(12))
    gen = SpeculativeGenerator(target, drafter, eos_token_ids=[])
    sampling = SamplingConfig(temperature=0.8, top_k=6, top_p=0.9, acceptance=acceptance)
    exact = _exact_two_token_joint(target, [2, 5], sampling)
    counts = _joint_counts(gen, [2, 5], sampling, 2000, "2,2", 12, seed=3)
    assert _pvalue(counts, exact) > ALPHA


def tiny_llama_like(vocab):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(9)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=64)).eval()


@pytest.mark.parametrize("rule,correct", [(accept_child_sampled, True), (_broken_no_residual, False)],
                         ids=["correct", "broken"])
def test_end_to_end_has_the_power_to_catch_a_broken_rule(monkeypatch, rule, correct):
    """Same set-up, same samples: the right rule passes, a wrong one fails."""
    monkeypatch.setattr(verify_mod, "accept_child_sampled", rule)
    target = small_vocab_target()
    dm = tiny_llama_like(12)
    with torch.no_grad():
        dm.lm_head.weight.mul_(6.0)  # a confident drafter that disagrees with the target
    gen = SpeculativeGenerator(target, TransformerDrafter(dm), eos_token_ids=[])
    sampling = SamplingConfig(temperature=1.0, acceptance="rejection")
    exact = _exact_two_token_joint(target, [3, 7, 1], sampling)
    counts = _joint_counts(gen, [3, 7, 1], sampling, 2500, "3,2", 12)
    assert (_pvalue(counts, exact) > ALPHA) == correct


# The gumbel rule: the i-th new token is argmax(log p + G(seed, i)) whatever is drafted.

def test_gumbel_noise_is_standard_and_fixed_by_seed_and_position():
    a, b = GumbelNoise(5, 50000), GumbelNoise(5, 50000)
    assert torch.equal(a.at(3), b.at(3)) and not torch.equal(a.at(3), a.at(4))
    assert not torch.equal(a.at(0), GumbelNoise(6, 50000).at(0))
    a.offset = 2
    assert torch.equal(a.children(1), b.at(3))
    g = torch.cat([a.at(i) for i in range(8)]).double()
    assert abs(g.mean() - 0.5772) < 0.01 and abs(g.var() - torch.pi ** 2 / 6) < 0.03  # Gumbel(0, 1)
    assert abs(torch.corrcoef(torch.stack([a.at(0), a.at(1)]))[0, 1]) < 0.02


@pytest.mark.parametrize("shared,correct", [(False, True), (True, False)], ids=["correct", "noise-shared"])
def test_gumbel_sampling_follows_target_and_the_test_has_power(monkeypatch, shared, correct):
    """Plain sampling under the gumbel rule (what every tree reproduces, below) follows the target; noise shared
    between positions (a seed-only key) is caught."""
    if shared:
        at = GumbelNoise.at
        monkeypatch.setattr(GumbelNoise, "at", lambda self, position: at(self, 0))
    target = small_vocab_target()
    gen = SpeculativeGenerator(target, None, eos_token_ids=[])
    sampling = SamplingConfig(temperature=1.0)
    exact = _exact_two_token_joint(target, [3, 7, 1], sampling)
    counts = _joint_counts(gen, [3, 7, 1], sampling, 4000, "1", 12)
    assert (_pvalue(counts, exact) > ALPHA) == correct


def _drafters():
    from mambaspec.core.dynamic import DynamicTreePolicy
    from mambaspec.drafters.hybrid import HybridDrafter
    from mambaspec.drafters.lookup import LookupDrafter
    from test_dynamic import FixedCosts

    drafters = {"mamba2": lambda: MambaDrafter(tiny_mamba2(2)),
                "llama": lambda: TransformerDrafter(tiny_llama(3, 1, 32)),
                "oracle": lambda: TransformerDrafter(tiny_llama(0)), "lookup": lambda: LookupDrafter(max_tokens=5),
                "mamba2+lookup": lambda: HybridDrafter(MambaDrafter(tiny_mamba2(2)), LookupDrafter(max_tokens=5))}
    trees = {"1": lambda: "1", "2,1,1": lambda: "2,1,1", "3,2,2": lambda: "3,2,2",
             "dynamic": lambda: resolve_tree("dynamic"),
             "generous": lambda: DynamicTreePolicy(costs=FixedCosts(), max_nodes=24)}
    return drafters, trees


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0.8), SamplingConfig(temperature=1.0, top_k=20),
                                      SamplingConfig(temperature=0.7, top_p=0.9)], ids=["T0.8", "top-k", "top-p"])
def test_seed_fixes_the_text_whatever_the_tree_and_drafter(tiny_target, sampling):
    """Under the gumbel rule the text is plain sampling's with the same seed, token for token, for every drafter
    and tree (fixed, dynamic as measured, dynamic and generous); and it changes with the seed."""
    drafters, trees = _drafters()
    plain = SpeculativeGenerator(tiny_target, None)
    cases = [(p, seed, plain.generate(p, max_new_tokens=20, sampling=sampling, seed=seed).new_token_ids)
             for p, seed in zip(prompts(4, seed=7), (0, 1, 2, 3))]
    assert len({tuple(ref) for *_, ref in cases}) == len(cases)
    assert plain.generate(cases[0][0], max_new_tokens=20, sampling=sampling, seed=99).new_token_ids != cases[0][2]
    accepted = 0
    for name, make in drafters.items():
        gen = SpeculativeGenerator(tiny_target, make())
        for tree in trees.values():
            for prompt, seed, ref in cases:
                result = gen.generate(prompt, max_new_tokens=20, tree=tree(), sampling=sampling, seed=seed)
                assert result.new_token_ids == ref, (name, tree(), seed)
                accepted += result.stats.rounds < len(ref)
    assert accepted  # drafts were accepted: the trees mattered


def test_cli_seed_fixes_the_text(tiny_dir):
    """`generate --temperature 0.8 --seed N`: the same text on every run, with the default (dynamic) tree, a fixed
    one, and no drafter."""
    import json

    base = ["generate", "--raw", "--target", tiny_dir["target"], "-n", "16", "--temperature", "0.8", "--json",
            "Once upon a time"]
    runs = [[*base, "--drafter", tiny_dir["mamba2"], "--seed", "1"],
            [*base, "--drafter", tiny_dir["mamba2"], "--seed", "1"],
            [*base, "--drafter", tiny_dir["mamba2"], "--seed", "1", "--tree", "2,1,1"],
            [*base, "--drafter", tiny_dir["llama"] + "+lookup", "--seed", "1", "--tree", "3,2,1"],
            [*base, "--drafter", "none", "--seed", "1"]]
    texts = [json.loads(run_cli(*args).stdout)["new_token_ids"] for args in runs]
    assert all(t == texts[0] for t in texts), texts
    other = json.loads(run_cli(*base, "--drafter", "none", "--seed", "2").stdout)["new_token_ids"]
    assert other != texts[0]


def test_inverse_cdf_draws_follow_the_law_and_never_a_zero():
    """Data generation's draws (a CPU generator's uniforms against the running sums, on the probabilities' device)."""
    from mambaspec.core.sampling import inverse_cdf_draw

    p = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0])
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([inverse_cdf_draw(p.expand(1000, -1), gen) for _ in range(40)])
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    assert freq[[0, 2, 5]].sum() == 0
    assert torch.allclose(freq, p, atol=0.01), freq
    again = inverse_cdf_draw(p.expand(1000, -1), torch.Generator().manual_seed(0))
    assert torch.equal(again, draws[:1000])  # the generator fixes the draws
