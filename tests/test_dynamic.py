"""Dynamic trees (core.dynamic) and lookup drafting (drafters.lookup, drafters.hybrid): lossless whatever they
decide, for every drafter; sampled output follows the target; the cost model and calibration learn."""

import json

import pytest
import torch

from mambaspec import MambaDrafter, SamplingConfig, SpeculativeGenerator, TransformerDrafter
from mambaspec.core.dynamic import (KEPT_COUNTS, WIDE_NODES, AcceptanceModel, CostModel, DynamicPlan,
                                    DynamicTreePolicy)
from mambaspec.core.stats import RoundOutcome
from mambaspec.core.tree import DraftTree
from mambaspec.drafters.crosstok import CrossTokenizerDrafter
from mambaspec.drafters.step import StepDrafter
from mambaspec.drafters.hybrid import HybridDrafter
from mambaspec.drafters.lookup import LookupDrafter, SuffixIndex
from test_sampling import ALPHA, _exact_two_token_joint, _joint_counts, _pvalue, small_vocab_target, tiny_llama_like
from tiny import char_tokenizer, prompts, reference_greedy, tiny_llama, tiny_mamba, tiny_mamba2, trained_tokenizer

MAX_NEW = 24
PROMPTS = prompts(14)


class FixedCosts(CostModel):
    """Verification nearly free per node: the policy drafts deep trees (what the tests want to exercise)."""

    step, read, overhead = 2e-4, 0.0, 0.0

    def __init__(self, per_node: float = 1e-4, base: float = 0.01) -> None:
        super().__init__()
        self.per_node, self.base = per_node, base

    def verify(self, nodes, context):
        return self.base + self.per_node * nodes

    def observe(self, outcome, steps, read_s=0.0):
        pass

    def measured_near(self, context):
        return True, True


def policy(kind: str) -> DynamicTreePolicy:
    if kind == "measured":  # the real cost model, fitted on this machine
        return DynamicTreePolicy()
    return DynamicTreePolicy(costs=FixedCosts(), max_nodes=24)


DRAFTERS = {
    "mamba2": lambda: MambaDrafter(tiny_mamba2(2)),
    "mamba1": lambda: MambaDrafter(tiny_mamba(1)),
    "llama": lambda: TransformerDrafter(tiny_llama(3, layers=1, hidden=32)),
    "oracle": lambda: TransformerDrafter(tiny_llama(0)),
    "lookup": lambda: LookupDrafter(max_tokens=5),
    "mamba2+lookup": lambda: HybridDrafter(MambaDrafter(tiny_mamba2(2)), LookupDrafter(max_tokens=5)),
    "oracle+lookup": lambda: HybridDrafter(TransformerDrafter(tiny_llama(0)), LookupDrafter(max_tokens=5)),
}


@pytest.fixture(scope="module")
def references(tiny_target):
    return [reference_greedy(tiny_target, p, MAX_NEW) for p in PROMPTS]


@pytest.mark.parametrize("kind", ["generous", "measured"])
@pytest.mark.parametrize("drafter_name", list(DRAFTERS))
def test_dynamic_trees_are_lossless(tiny_target, references, drafter_name, kind):
    gen = SpeculativeGenerator(tiny_target, DRAFTERS[drafter_name]())
    pol = policy(kind)
    nodes = []
    for prompt, ref in zip(PROMPTS, references):
        result = gen.generate(prompt, max_new_tokens=MAX_NEW, tree=pol)
        assert result.new_token_ids == ref, (drafter_name, prompt[:6])
        nodes.append(result.stats.mean_tree_nodes)
        assert result.stats.tree == "dynamic" and "predicted_accept_len" in result.stats.policy_report
    if kind == "generous" and drafter_name.startswith("oracle"):
        assert max(nodes) > 3  # deep trees were really drafted and verified


@pytest.mark.parametrize("drafter_name", ["lookup", "mamba2+lookup", "oracle+lookup"])
@pytest.mark.parametrize("shape", ["1", "2,1,1", "3,2,2,1,1"])
def test_lookup_with_fixed_trees_is_lossless(tiny_target, references, drafter_name, shape):
    gen = SpeculativeGenerator(tiny_target, DRAFTERS[drafter_name]())
    for prompt, ref in zip(PROMPTS, references):
        assert gen.generate(prompt, max_new_tokens=MAX_NEW, tree=shape).new_token_ids == ref


def test_suffix_index_finds_the_longest_match_and_its_branches():
    index = SuffixIndex(3)
    index.extend([1, 2, 3, 4, 1, 2, 3, 5, 1, 2])
    assert index.continuations([1, 2], 3, 2) == [([3, 5, 1], 2, 1.0)]  # the most recent occurrence, all agree
    assert index.continuations([9], 3, 2) == []
    index.extend([3])
    found = index.continuations(index.tokens[-3:], 2, 2)  # "1 2 3" was followed by 4 once and by 5 once
    assert {tuple(f[0]) for f in found} == {(4, 1), (5, 1)} and all(f[1] == 3 and f[2] == 0.5 for f in found)


def test_lookup_accepts_copied_text():
    """A target that repeats its prompt: copied chains are accepted deep (an oracle-free check of the plumbing)."""
    target = tiny_llama(0)
    prompt = PROMPTS[2] * 3
    ref = reference_greedy(target, prompt, 40)
    text = prompt + ref
    drafter = LookupDrafter(max_tokens=8)
    result = SpeculativeGenerator(target, drafter).generate(prompt, max_new_tokens=40, tree="1")
    assert result.new_token_ids == ref
    repeats = sum(text[i:i + 4] in [text[j:j + 4] for j in range(i)] for i in range(len(prompt), len(text) - 4))
    if repeats > 20:  # the greedy output repeats itself: the lookup must have profited
        assert result.stats.mean_accept_len > 1.5


def test_cross_tokenizer_drafter_with_dynamic_trees():
    tt, dt = trained_tokenizer("metaspace"), trained_tokenizer("bytelevel")
    target = tiny_llama(0, vocab=len(tt))
    gen = SpeculativeGenerator(target, CrossTokenizerDrafter(MambaDrafter(tiny_mamba2(2, vocab=len(dt)), dt), tt))
    pol = policy("generous")
    for text in ["def add(a, b):\n    return a + b\n", "The quick brown fox", "Grüße aus Köln"]:
        ids = tt(text)["input_ids"]
        assert gen.generate(ids, max_new_tokens=MAX_NEW, tree=pol).new_token_ids == reference_greedy(target, ids,
                                                                                                      MAX_NEW)


SAMPLING_DRAFTERS = {
    "mamba2": lambda: MambaDrafter(_confident(tiny_llama_like(12), mamba=True)),
    "llama+lookup": lambda: HybridDrafter(TransformerDrafter(_confident(tiny_llama_like(12))),
                                          LookupDrafter(max_tokens=3)),
    "lookup": lambda: LookupDrafter(max_tokens=3),
}
TREES = {  # generous: nearly every candidate pays; tight: the budget cuts children; or a fixed shape
    "generous": lambda: policy("generous"),
    "tight": lambda: DynamicTreePolicy(costs=FixedCosts(per_node=4e-3, base=0.01), max_nodes=4),
    "2,1": lambda: "2,1",
}


@pytest.mark.parametrize("drafter_name,tree,acceptance", [
    ("mamba2", "generous", "rejection"), ("llama+lookup", "generous", "rejection"), ("lookup", "generous", "rejection"),
    ("mamba2", "tight", "rejection"), ("llama+lookup", "tight", "rejection"), ("llama+lookup", "2,1", "rejection"),
    ("lookup", "2,1", "rejection"), ("llama+lookup", "tight", "gumbel")])
def test_sampling_with_dynamic_and_lookup_trees_follows_target(drafter_name, tree, acceptance):
    target = small_vocab_target()
    gen = SpeculativeGenerator(target, SAMPLING_DRAFTERS[drafter_name](), eos_token_ids=[])
    sampling = SamplingConfig(temperature=1.0, acceptance=acceptance)
    prompt = [3, 7, 1, 3, 7, 1, 3, 7]  # repeats: the lookup proposes copied tokens too
    exact = _exact_two_token_joint(target, prompt, sampling)
    counts = _joint_counts(gen, prompt, sampling, 2500, TREES[tree](), 12)
    assert _pvalue(counts, exact) > ALPHA


def _confident(model, mamba=False):
    if mamba:
        from transformers import Mamba2Config, Mamba2ForCausalLM

        torch.manual_seed(5)
        model = Mamba2ForCausalLM(Mamba2Config(vocab_size=12, hidden_size=32, num_hidden_layers=1, state_size=8,
                                               expand=2, num_heads=4, head_dim=16, n_groups=1, chunk_size=8)).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(3.0)
    return model


def test_no_draft_when_nothing_pays(tiny_target, references):
    """Drafted nodes made expensive (and a plain step cheaper than any real round): the policy verifies the pending
    token alone, and, since engaging the drafter never pays, leaves the drafter alone."""
    drafter = MambaDrafter(tiny_mamba2(2))
    calls = []
    real = drafter.advance
    drafter.advance = lambda *a: (calls.append(len(a[2])), real(*a))[1]
    pol = DynamicTreePolicy(costs=FixedCosts(per_node=1.0, base=1e-6))
    gen = SpeculativeGenerator(tiny_target, drafter)
    result = gen.generate(PROMPTS[5], max_new_tokens=MAX_NEW, tree=pol)
    assert result.new_token_ids == references[5]
    assert result.stats.mean_tree_nodes == 0 and result.stats.no_draft_rounds == 1.0
    assert len(calls) < MAX_NEW / 2 and max(calls) > 1  # skipped rounds were read later, several tokens at once


def test_calibration_and_cost_fit():
    acc = AcceptanceModel()
    tree = DraftTree.root_only(0)
    a = tree.add(5, 0, prob=0.9)
    tree.add(6, 0, prob=0.05)
    tree.add(7, a, prob=0.8)
    for _ in range(200):
        acc.update(tree, [a])  # the 0.9 node always accepted, the 0.05 sibling never, the 0.8 child never
    assert acc.accept_rate(0.9) > 0.95 and acc.accept_rate(0.05) < 0.05 and acc.accept_rate(0.8) < 0.05
    assert acc.predicted_tokens(tree) == pytest.approx(1 + acc.accept_rate(0.9) + acc.accept_rate(0.05)
                                                       + acc.accept_rate(0.9) * acc.accept_rate(0.8))
    costs = CostModel()
    for n in range(0, 17):
        for ctx in (100, 2000, 4000):
            costs.observe(RoundOutcome(tokens=1, seconds=0.0, draft_s=0.0, forward_s=0.02 + 0.001 * n + 2e-6 * ctx
                                       + 1e-6 * n * ctx, nodes=n, depth=1, context=ctx), steps=0)
    assert costs.verify(6, 4000) == pytest.approx(0.02 + 0.006 + 0.008 + 0.024, rel=1e-3)


def test_cost_model_stays_local():
    """Rounds from one context (a few hundred tokens of growth, noisy) predict that context, and known samples from
    another context do not pull the prediction away from this run's own rounds."""
    g = torch.Generator().manual_seed(0)
    def truth(n, ctx):
        return 0.02 + 0.001 * n + 2e-6 * ctx + 1e-6 * n * ctx
    known = [(n, 500, truth(n, 500)) for n in (0, 1, 3, 7, 15)]
    costs = CostModel(known=known)
    assert costs.measured_near(8000) == (False, False) and costs.measured_near(550) == (True, True)
    for i in range(60):
        n, ctx = i % 5, 8000 + 2 * i
        noise = 1 + 0.05 * float(torch.randn((), generator=g))
        costs.observe(RoundOutcome(tokens=1, seconds=0.0, draft_s=0.0, forward_s=truth(n, ctx) * noise, nodes=n,
                                   depth=1, context=ctx), steps=0)
    for n in (0, 4, 8, 16):  # 16 is beyond the rounds' sizes: the known slope and the rounds' agree closely enough
        assert costs.verify(n, 8100) == pytest.approx(truth(n, 8100), rel=0.1), n
    assert costs.verify(3, 500) == pytest.approx(truth(3, 500), rel=0.1)


def test_dynamic_policy_measures_a_new_context_with_real_rounds(tiny_target, references):
    """No probe: the first round at a new context is a plain step, the next ones draft at most 3 nodes until a
    drafted round was measured; then the full budget."""
    pol = DynamicTreePolicy()
    gen = SpeculativeGenerator(tiny_target, TransformerDrafter(tiny_llama(0)))
    sizes = []
    real = pol.observe
    pol.observe = lambda outcome: (sizes.append(outcome.nodes), real(outcome))
    assert gen.generate(PROMPTS[3], max_new_tokens=MAX_NEW, tree=pol).new_token_ids == references[3]
    first = next(i for i, n in enumerate(sizes) if n)
    assert sizes[0] == 0 and sizes[first] <= 3
    pol.begin_sequence(None)  # a new sequence: no back-off pending
    context = len(PROMPTS[3]) + MAX_NEW  # the full budget, or the wide one where a tiny model's trees measured flat
    full = WIDE_NODES if pol.costs.flat(context) else pol.max_nodes
    assert pol.choose(None, context, MAX_NEW).max_nodes == full


def test_costs_carry_over_between_processes(tiny_target, references, tmp_path, monkeypatch):
    """The pipeline saves its dynamic policy's cost samples per machine and target, and a new pipeline (a new
    process) starts from them; a damaged file is ignored."""
    from mambaspec.loading.costs import cost_store
    from mambaspec.loading.models import LoadedModel
    from mambaspec.loading.pipeline import Pipeline

    monkeypatch.setenv("MAMBASPEC_COSTS", str(tmp_path))
    target = LoadedModel(tiny_target, char_tokenizer(), "tiny-llama", "tests")
    drafter = TransformerDrafter(tiny_llama(0))

    def pipeline():
        return Pipeline(target, drafter, SpeculativeGenerator(tiny_target, drafter))

    first = pipeline()
    assert first.generate(PROMPTS[2], max_new_tokens=MAX_NEW, tree="dynamic").new_token_ids == references[2]
    saved = cost_store(target).load()
    assert saved and all(n >= 0 and c > 0 and s > 0 for n, c, s in saved)
    second = pipeline()
    assert second.policy("dynamic").costs.known == saved and second.policy("dynamic") is second.policy("dynamic")
    kept = second.policy("dynamic").acceptance  # the drafter's calibration too, capped at KEPT_COUNTS a bin
    learnt = first.policy("dynamic").acceptance
    assert sum(kept.seen) > 0 and all(k <= KEPT_COUNTS + 1e-9 and k <= n + 1e-9 for k, n in zip(kept.seen, learnt.seen))
    assert all(abs(kept.accept_rate(q) - learnt.accept_rate(q)) < 0.15 for q in (0.05, 0.5, 0.95))
    assert second.generate(PROMPTS[2], max_new_tokens=MAX_NEW, tree="dynamic").new_token_ids == references[2]
    assert len(cost_store(target).load()) > len(saved)
    cost_store(target).path.write_text("{not json")
    assert cost_store(target).load() == [] and pipeline().policy("dynamic").costs.known == []
    cost_store(target).path.write_text('{"samples": [[1, "x"]], "calibration": {"' + drafter.name + '": {"hits": 3}}}')
    fresh = pipeline().policy("dynamic")
    assert fresh.costs.known == [] and sum(fresh.acceptance.seen) == 0


def test_calibration_is_kept_per_drafter_weights(tiny_dir, tmp_path):
    """A drafter retrained under the same name or folder does not inherit its predecessor's calibration."""
    import shutil

    from mambaspec.loading.pipeline import calibration_key

    folder = tmp_path / "drafter"
    shutil.copytree(tiny_dir["mamba2"], folder)
    key = calibration_key(f"{folder}+lookup", f"{folder}+lookup")
    assert key.startswith(f"{folder}+lookup@") and calibration_key("lookup", "lookup") == "lookup"
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + bytes(4))  # other weights, same size
    assert calibration_key(f"{folder}+lookup", f"{folder}+lookup") != key


def test_calibration_round_trips_and_is_capped():
    acc = AcceptanceModel()
    tree = DraftTree.root_only(0)
    a = tree.add(5, 0, prob=0.9)
    tree.add(6, 0, prob=0.05, drawn=False, feature=(3, 1.0))
    for _ in range(100):
        acc.update(tree, [a])
    back = AcceptanceModel.from_dict(json.loads(json.dumps(acc.as_dict())))
    assert max(back.seen) == KEPT_COUNTS and back.accept_rate(0.9) == pytest.approx(acc.accept_rate(0.9), abs=0.05)
    assert (back.copy_accept_rate((3, 1.0)) == pytest.approx(acc.copy_accept_rate((3, 1.0)), abs=0.05)
            and back.copied[(3, 1.0)][1] == KEPT_COUNTS)
    assert sum(AcceptanceModel.from_dict({"hits": [1], "seen": "x"}).seen) == 0


def test_a_slow_spell_does_not_price_the_drafter_out():
    """The drafter's step, read and a round's overhead keep their price against the target's forward through a slow
    spell of the machine (every part 5x slower) and after it, even when the rounds after the spell take no drafter
    step to time (a running mean of raw step times stayed at the spell's price then, 5x). The prices are relative to
    the fit, which follows the spell over its window of rounds: within 25 % while it does."""
    costs = CostModel()

    def round_(speed: float, steps: int) -> None:
        read, step = 0.003 * speed, 0.003 * speed
        costs.observe(RoundOutcome(tokens=2, seconds=0.05 * speed + read + steps * step, draft_s=read + steps * step,
                                   forward_s=0.045 * speed, nodes=4, depth=2, context=100), steps=steps, read_s=read)

    def prices() -> tuple[float, float, float]:
        """The drafter's step and read and a round's overhead, in forwards of the target."""
        forward = costs.verify(4, 100)
        return costs.step / forward, costs.read / forward, costs.overhead / forward

    expected = (0.003 / 0.045, 0.003 / 0.045, 0.005 / 0.045)
    for _ in range(40):
        round_(1.0, 2)
    assert costs.speed == pytest.approx(1.0) and prices() == pytest.approx(expected)
    for i in range(40):  # one round in four 5x slower
        round_(5.0 if i % 4 == 0 else 1.0, 2)
    assert prices() == pytest.approx(expected, rel=0.25)
    for i in range(40):  # a long slow spell: the machine is slower, and the speed says so
        round_(5.0, 2)
        if i == 7:
            assert costs.speed > 2
    assert prices() == pytest.approx(expected, rel=0.25)
    for _ in range(40):  # back to speed, in rounds that take no drafter step
        round_(1.0, 0)
    assert costs.speed < 1 and prices() == pytest.approx(expected, rel=0.25)


def test_a_slow_round_is_not_a_lost_round():
    """The backoff judges a round's time at the machine's speed lately: rounds that gain at any speed do not back
    off, however slow the machine became (once the machine is slow for a few rounds, not one round)."""
    pol = DynamicTreePolicy()
    pol.begin_sequence(None)
    for n in (0, 1, 2, 3, 4) * 4:  # the costs measured at normal speed: a plain step 10 ms, 1 ms more a node
        pol.costs.observe(RoundOutcome(tokens=1, seconds=0.011 + 0.001 * n, draft_s=0.0, forward_s=0.010 + 0.001 * n,
                                       nodes=n, depth=n, context=100), steps=0)
    tree = DraftTree.root_only(0)
    tree.add(1, 0, prob=0.9)
    for i, speed in enumerate([1.0] * 8 + [3.0] * 40):  # 2 tokens a round, in 1.4-1.7 plain steps at that speed
        n = 1 + i % 4
        assert isinstance(pol.choose(None, 100, 50), DynamicPlan)
        pol.observe(RoundOutcome(tokens=2, seconds=(0.013 + 0.001 * n) * speed, draft_s=0.001 * speed,
                                 forward_s=(0.010 + 0.001 * n) * speed, nodes=n, depth=1, context=100, accepted=1,
                                 tree=tree, path=[1]))
        assert not pol.skipping, i


def test_backoff_follows_what_drafting_really_gained():
    """Rounds that commit enough tokens for their time keep the drafter engaged, through runs of rejections too
    when it pays on average; rounds that keep losing leave it alone for 1, 2, 4 ... rounds; a good round later it
    drafts every round again."""
    pol = DynamicTreePolicy(costs=FixedCosts(per_node=1e-3, base=0.01))
    pol.begin_sequence(None)
    tree = DraftTree.root_only(0)
    tree.add(1, 0, prob=0.9)

    def round_(tokens: int, seconds: float) -> int:
        """Choose (a plan), observe the outcome; how many plain rounds follow."""
        assert pol.choose(None, 100, 50) is not None
        pol.observe(RoundOutcome(tokens=tokens, seconds=seconds, draft_s=0.001, forward_s=0.011, nodes=1, depth=1,
                                 context=100, accepted=tokens - 1, tree=tree, path=[1][:tokens - 1]))
        skipped = 0
        while pol.skipping:
            assert pol.choose(None, 100, 50).depth == 0
            skipped += 1
        return skipped

    assert [round_(2, 0.013) for _ in range(5)] == [0] * 5  # 2 tokens in 1.3 plain steps: pays
    # three rejections (1 token in 1.3 plain steps) to one success of 3 tokens: a gain on average, never a skip
    assert [round_(t, 0.013) for _ in range(6) for t in (1, 1, 1, 3)] == [0] * 24
    pol = DynamicTreePolicy(costs=FixedCosts(per_node=1e-3, base=0.01))  # afresh: no gains remembered
    pol.begin_sequence(None)
    assert [round_(1, 0.013) for _ in range(6)] == [0, 1, 2, 4, 8, 8]  # nothing but losses: back off, doubling
    assert round_(3, 0.013) == 0  # one good round and it drafts every round again


class _FixedRoot(StepDrafter):
    """A drafter whose root distribution is fixed (no model): for the keep rule of dynamic trees alone."""

    def __init__(self, q: torch.Tensor) -> None:
        super().__init__(model=None)
        self.q = q
        self.bind(len(q))
        self.prefill([])

    own_width = property(lambda self: len(self.q))

    def start(self, ids):
        return self.q.log()[None]

    def begin_tree(self):
        pass

    def expand(self, *args):
        raise AssertionError("one level only")

    def advance(self, *args):
        pass

    def state_bytes(self):
        return 0


class _LinearCosts(FixedCosts):
    def __init__(self, per_node: float) -> None:
        super().__init__(per_node=per_node, base=0.01)
        self.step = 0.0


@pytest.mark.parametrize("q,p,per_node,children", [
    ([0.9, 0.1], [0.5, 0.5], 0.005, 1),  # keeping a draw only when its own q is high gave 0.55 / 0.45
    ([0.6, 0.3, 0.1], [0.2, 0.3, 0.5], 0.004, 2),
])
def test_dynamic_keep_rule_does_not_bias_sampling(q, p, per_node, children):
    """Whether a drawn child is kept may depend on q, never on which token it drew: the first token out follows p
    exactly while the budget cuts children."""
    from mambaspec.core.dynamic import DynamicPlan
    from mambaspec.core.verify import walk_tree
    from mambaspec.drafters.growth import grow_dynamic

    q, p = torch.tensor(q), torch.tensor(p)
    drafter, g = _FixedRoot(q), torch.Generator().manual_seed(0)
    sampling = SamplingConfig(temperature=1.0, acceptance="rejection")  # under the gumbel rule any keep rule is exact
    counts, sizes = torch.zeros(len(p)), set()
    for _ in range(20000):
        plan = DynamicPlan(AcceptanceModel(), _LinearCosts(per_node), 100, max_depth=1, max_nodes=children,
                           max_children=children, top_accept=0.5)
        tree = grow_dynamic(drafter, 0, plan, sampling, g)
        sizes.add(len(tree) - 1)
        path, bonus = walk_tree(p.log()[None].expand(len(tree), -1), tree, sampling, g)
        counts[tree.tokens[path[0]] if path else bonus] += 1
    assert sizes - {0}, "the tree drafted nothing: the test would not exercise the keep rule"
    assert _pvalue(counts, p) > ALPHA, (counts / counts.sum()).tolist()


def test_a_cold_first_step_does_not_keep_trees_shallow():
    """The first drafter step of a run pays one-time costs (here 6x a warm one). Priced from it alone, a step would
    never pay again and never be timed again (seen on the chat mix: every later tree one level deep). Until a few
    steps are timed a step costs at most the drafter's read; then their median, where the cold one is outvoted."""
    costs = CostModel()

    def round_(steps: int, step: float) -> None:
        read = 0.003
        costs.observe(RoundOutcome(tokens=2, seconds=0.05 + read + steps * step, draft_s=read + steps * step,
                                   forward_s=0.045, nodes=3, depth=max(steps, 1), context=100),
                      steps=steps, read_s=read)

    round_(1, 0.018)  # cold
    for _ in range(10):  # one level, no step to time
        round_(0, 0.0)
    assert costs.step == pytest.approx(0.003)
    for _ in range(3):
        round_(2, 0.003)
    assert costs.step == pytest.approx(0.003)
    for _ in range(4):  # steps that really are dear are priced as such once timed
        round_(2, 0.02)
    assert costs.step == pytest.approx(0.02)
