"""UCB over tree shapes: concentrates on the best arm, sub-linear regret, arms files, tune end to end."""

import csv
import json
import os
import random
import subprocess
import sys

import pytest

from mambaspec import MambaDrafter, MambaspecError, SpeculativeGenerator, TransformerDrafter, TreeShape
from mambaspec.bench.tune import tune, write_tune_outputs
from mambaspec.config import recipes_dir
from mambaspec.core.bandit import Arm, UCBPolicy, replayed_round
from mambaspec.loading.trees import load_arms, save_arms
from tiny import prompts, reference_greedy, tiny_llama, tiny_mamba2

MEANS = [0.50, 0.62, 0.80, 0.55, 0.70]  # arm 2 is best


def run_synthetic(steps, seed=0, c=1.0):
    rng = random.Random(seed)
    arms = [Arm(f"a{i}", TreeShape((1,) * (i + 1))) for i in range(len(MEANS))]
    policy = UCBPolicy(arms, c=c)
    regret = []
    total = 0.0
    for _ in range(steps):
        policy.choose()
        k = policy.current
        # reward as tokens/second of a round: noisy around the arm's mean
        tokens = max(1, round(rng.gauss(MEANS[k] * 10, 2.0)))
        policy.record(tokens, 1.0)
        total += max(MEANS) - MEANS[k]
        regret.append(total)
    return policy, regret


def test_pulls_concentrate_on_best_arm():
    policy, _ = run_synthetic(3000)
    pulls = [a.pulls for a in policy.arms]
    assert pulls.index(max(pulls)) == 2 and pulls[2] > 0.5 * sum(pulls)
    assert policy.best.name == "a2"


def test_regret_grows_sublinearly():
    _, regret = run_synthetic(8000, seed=1)
    r1, r2 = regret[1999], regret[7999]
    assert r2 < 2.5 * r1  # linear regret would give 4x
    assert r2 / 8000 < 0.05


@pytest.mark.parametrize("reward,first", [("measured", 1), ("replayed", 2)])
def test_each_arm_tried_first_round_robin_and_ties_prefer_earlier(reward, first):
    arms = [Arm(str(i), TreeShape((1,))) for i in range(3)]
    policy = UCBPolicy(arms, reward=reward)
    order = []
    for _ in range(3 * first):
        policy.choose()
        order.append(policy.current)
        policy.record(5, 1.0)
    assert order == [0, 1, 2] * first
    policy.choose()
    assert policy.current == 0  # all equal: the earliest arm


def test_single_arm_and_modeled_reward():
    policy = UCBPolicy([Arm("only", TreeShape((1, 1)))], reward="modeled")
    for _ in range(5):
        assert policy.choose() == TreeShape((1, 1))
        r = policy.record(3, 0.1, depth=2, draft_s=0.02, forward_s=0.1)
        assert r < 0
    assert policy.arms[0].pulls == 5


@pytest.mark.parametrize("content,needle", [
    ("- {name: a}", "needs a `tree:`"),
    ("- {name: a, tree: '0,2'}", "entry 1: invalid tree shape"),
    ("- {name: a, tree: '1'}\n- {name: a, tree: '2'}", "duplicate arm name"),
    ("arms: []", "non-empty list"),
    ("- {tree: [1, x]}", "invalid tree shape"),
    ("- {name: a, tree: '1,1', pulls: -1}", "whole numbers >= 0"),
    ("- {name: a, tree: '1,1', pulls: 2.7}", "whole numbers >= 0"),
    ("- {name: a, tree: '1,1', round_seconds: [0.1, -1]}", ">= 0"),
    ("- {name: a, tree: '1,1'}\n- {name: b tree: 1}", "line 2"),
    (": : :", "not valid YAML"),
    ("- {name: a, tree: '0'}", "invalid tree shape '0'"),
    ("- {name: a, tree: ''}", "at least one draft level"),
])
def test_arms_file_errors(tmp_path, content, needle):
    path = tmp_path / "arms.yaml"
    path.write_text(content)
    with pytest.raises(MambaspecError, match=needle.replace("(", r"\(").replace("`", "`")):
        load_arms(path)


def test_shipped_arms_file_loads():
    arms = load_arms(recipes_dir() / "trees.yaml")
    shapes = {a.shape.branching for a in arms}
    assert {(1, 1), (1, 1, 1, 1, 1, 1), (3, 2, 2, 1, 1), (3, 3, 2, 1), (2, 2, 2, 1, 1, 1)} <= shapes


def test_auto_tree_is_lossless(tiny_target):
    gen = SpeculativeGenerator(tiny_target, TransformerDrafter(tiny_llama(0)))
    policy = UCBPolicy(load_arms(recipes_dir() / "trees.yaml"))
    for p in prompts(8):
        res = gen.generate(p, max_new_tokens=20, tree=policy)
        assert res.new_token_ids == reference_greedy(tiny_target, p, 20)
        assert res.stats.tree == "auto" and res.stats.policy_report["arms"]
    assert sum(a.pulls for a in policy.arms) == policy.t > len(policy.arms)


@pytest.mark.parametrize("policy_name", ["ucb", "fixed"])
def test_tune_writes_csv_and_a_tuned_file_that_loads(tmp_path, tiny_target, policy_name):
    gen = SpeculativeGenerator(tiny_target, MambaDrafter(tiny_mamba2(2)))
    arms = [Arm("c2", TreeShape((1, 1))), Arm("t", TreeShape((2, 1)))]
    result = tune(gen, prompts(4), arms, policy=policy_name, max_new_tokens=12)
    csv_path, yaml_path = write_tune_outputs(result, tmp_path)
    header = csv_path.read_text().splitlines()[0]
    assert "pulls" in header and "mean_reward" in header and "tokens_per_s" in header
    warm = load_arms(yaml_path)
    assert [a.name for a in warm] == ["c2", "t"] and sum(a.pulls for a in warm) > 0
    assert UCBPolicy(warm).t == sum(a.pulls for a in warm)  # a warm start
    assert result.best.name in ("c2", "t")
    save_arms(warm, tmp_path / "again.yaml")
    assert load_arms(tmp_path / "again.yaml")[0].pulls == warm[0].pulls


def test_generate_cli_with_auto_tree_and_tuned_arms(tmp_path, tiny_dir):
    arms = [Arm("c2", TreeShape((1, 1)), pulls=3, reward_sum=30.0, tokens=6, seconds=0.3),
            Arm("t", TreeShape((2, 1)), pulls=1, reward_sum=5.0, tokens=2, seconds=0.4)]
    save_arms(arms, tmp_path / "tuned.yaml")
    cmd = [sys.executable, "-m", "mambaspec", "generate", "Hello", "--raw", "--target", tiny_dir["target"],
           "--drafter", tiny_dir["mamba2"], "-n", "12", "--tree", "auto", "--arms", str(tmp_path / "tuned.yaml"),
           "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["stats"]
    arms = stats["policy_report"]["arms"]
    assert stats["tree"] == "auto" and sum(a["pulls"] for a in arms) > 4
    assert sum(a["run_pulls"] for a in arms) == stats["rounds"]  # this call's rounds, apart from the file's
    assert "replayed reward" in stats["tree_policy"] and all("value" in a for a in arms)


def test_tune_cli_end_to_end(tmp_path, tiny_dir):
    """`mambaspec tune` on a jsonl file: table, best arm, arms.csv and a tuned file that generate accepts."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"def f{i}(x):"}) for i in range(3)))
    arms = tmp_path / "arms.yaml"
    arms.write_text("- {name: chain2, tree: '1,1'}\n- {name: fork, tree: '2,1'}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    base = [sys.executable, "-m", "mambaspec"]
    proc = subprocess.run([*base, "tune", "--arms", str(arms), "--dataset", "jsonl", "--data", str(data),
                           "--target", tiny_dir["target"], "--drafter", tiny_dir["mamba2"], "-n", "10",
                           "--out", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "best arm by value:" in proc.stdout and "chain2" in proc.stdout
    rows = list(csv.DictReader(open(tmp_path / "out" / "arms.csv")))
    assert [r["name"] for r in rows] == ["chain2", "fork"] and sum(int(r["pulls"]) for r in rows) > 2
    gen = subprocess.run([*base, "generate", "def g(y):", "--raw", "--target", tiny_dir["target"], "--drafter",
                          tiny_dir["mamba2"], "-n", "8", "--tree", "auto", "--arms",
                          str(tmp_path / "out" / "tuned_arms.yaml"), "--json"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert gen.returncode == 0, gen.stderr
    bad = subprocess.run([*base, "tune", "--arms", str(tmp_path / "missing.yaml"), "--target", tiny_dir["target"]],
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode != 0 and "arms file not found" in bad.stderr and "Traceback" not in bad.stderr


def test_tune_dynamic_cli(tmp_path, tiny_dir):
    """`mambaspec tune --policy dynamic`: a summary of what dynamic trees drafted, dynamic.csv, and the measured
    costs kept for generate."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"def f{i}(x):"}) for i in range(3)))
    costs = tmp_path / "costs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "MAMBASPEC_COSTS": str(costs)}
    proc = subprocess.run([sys.executable, "-m", "mambaspec", "tune", "--policy", "dynamic", "--dataset", "jsonl",
                           "--data", str(data), "--target", tiny_dir["target"], "--drafter", tiny_dir["mamba2"],
                           "-n", "10", "--out", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "dynamic trees" in proc.stdout and "predicted / measured" in proc.stdout
    row = next(csv.DictReader(open(tmp_path / "out" / "dynamic.csv")))
    assert int(row["prompts"]) == 3 and int(row["new_tokens"]) == 30 and float(row["tokens_per_s"]) > 0
    assert len(list(costs.glob("*.json"))) == 1


class RecordRanks:
    """A fixed shape (a tree policy) that records each round's committed tokens and the drafter's ranks of them."""

    wants_ranks = True
    name = "record"

    def __init__(self, shape):
        self.shape, self.rounds, self.ranks = TreeShape.parse(shape), [], []

    def begin_sequence(self, drafter):
        self.rounds, self.ranks = [], []

    def choose(self, drafter, context, remaining):
        confidence = drafter.root_confidence()
        assert confidence is not None and 0 < confidence <= 1
        return self.shape.truncated(remaining - 1)

    def observe(self, outcome):
        assert len(outcome.confidences) == len(outcome.ranks) and all(0 < p <= 1 for p in outcome.confidences)
        self.rounds.append(outcome.tokens)
        self.ranks.extend(outcome.ranks)

    def describe(self):
        return "record"

    def report(self):
        return {}


def drafter_ranks(model, ids, start, n):
    """Ranks of ``ids[start:start + n]`` under ``model`` run over the whole sequence at once."""
    import torch

    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    out = []
    for pos in range(start, start + n):
        row = logits[pos - 1]
        out.append(int((row > row[ids[pos]]).sum()))
    return out


@pytest.mark.parametrize("drafter_name", ["mamba2", "mamba", "llama", "oracle"])
@pytest.mark.parametrize("shape", ["1,1,1,1", "2,2,1", "3,1"])
def test_committed_ranks_replay_every_round(tiny_target, drafter_name, shape):
    """The ranks the engine hands the policy are the drafter's ranks of the committed text, and replaying
    the shape on them gives back exactly the tokens each real round committed (greedy)."""
    from tiny import tiny_mamba

    model = {"mamba2": lambda: tiny_mamba2(2), "mamba": lambda: tiny_mamba(1),
             "llama": lambda: tiny_llama(3, layers=1, hidden=32), "oracle": lambda: tiny_target}[drafter_name]()
    drafter = (MambaDrafter if drafter_name.startswith("mamba") else TransformerDrafter)(model)
    gen = SpeculativeGenerator(tiny_target, drafter)
    rec = RecordRanks(shape)
    full_rounds = 0
    for p in prompts(6):
        res = gen.generate(p, max_new_tokens=40, tree=rec)
        out = res.new_token_ids
        assert res.new_token_ids == reference_greedy(tiny_target, p, 40)
        assert rec.ranks == drafter_ranks(model, p + out, len(p), len(rec.ranks))
        assert len(out) - len(rec.ranks) <= 1  # only an uncommitted last round may miss its bonus's rank
        pos = 0
        for tokens in rec.rounds[:-1]:  # the last round may be cut short by the token budget
            assert replayed_round(rec.shape.branching, rec.ranks, pos) == tokens
            full_rounds += tokens == rec.shape.depth + 1
            pos += tokens
    if drafter_name == "oracle":
        assert full_rounds > 0  # the bonus after a fully accepted tree is ranked too


def test_replayed_reward_learns_the_best_arm_per_context():
    """Synthetic text: where the drafter is confident it is always right (deep chains pay), elsewhere it is
    right one time in five (the cheap short chain pays). Costs grow with depth. The replayed bandit
    picks per context, and judges every arm on all the text, not only on its own rounds."""
    rng = random.Random(0)
    arms = [Arm("chain1", TreeShape((1,))), Arm("chain2", TreeShape((1, 1))), Arm("chain6", TreeShape((1,) * 6))]
    cost = {"chain1": 1.0, "chain2": 1.15, "chain6": 1.6}
    policy = UCBPolicy(arms, c=0.1, edges="0.5")
    picks = {True: [], False: []}
    for _ in range(30):  # sequences
        confident = [i // 40 % 2 == 0 for i in range(400)]  # runs of 40 easy then 40 hard tokens
        ranks = [0 if easy or rng.random() < 0.2 else 5 for easy in confident]
        conf = [0.95 if easy else 0.2 for easy in confident]
        policy.begin_sequence()
        pos = 0
        while pos < len(ranks):
            shape = policy.pick(conf[pos])
            n = replayed_round(shape.branching, ranks, pos) or len(ranks) - pos
            name = policy.arms[policy.current].name
            policy.record(n, cost[name] * rng.uniform(0.9, 1.1), ranks=ranks[pos:pos + n],
                           confidences=conf[pos:pos + n])
            picks[conf[pos] > 0.5].append(name)
            pos += n
    late = {k: v[len(v) // 2:] for k, v in picks.items()}
    assert late[True].count("chain6") > 0.8 * len(late[True])
    assert late[False].count("chain1") > 0.8 * len(late[False])
    chain6 = policy.arms[2]
    assert sum(chain6.replay_rounds) > 3 * chain6.pulls  # judged on far more rounds than it ran


def test_replayed_stats_round_trip_and_bucket_mismatch(tmp_path):
    arm = Arm("c2", TreeShape((1, 1)), pulls=2, tokens=5, seconds=0.2, replay_tokens=[3.0, 4.0, 9.0],
              replay_rounds=[2.0, 2.0, 3.0])
    save_arms([arm], tmp_path / "t.yaml")
    back = load_arms(tmp_path / "t.yaml")[0]
    assert back.replay_rounds == [2.0, 2.0, 3.0] and back.replay_accept_len() == 16 / 7
    policy = UCBPolicy([back])  # default: two edges, three buckets
    assert policy.value(back, 2) == pytest.approx(back.replay_accept_len() * 2 / 0.2)  # 3 rounds < minimum
    with pytest.raises(MambaspecError, match="confidence buckets"):
        UCBPolicy(load_arms(tmp_path / "t.yaml"), edges="none")


def test_round_cost_ignores_a_one_off_slow_round():
    arm = Arm("a", TreeShape((1,)))
    policy = UCBPolicy([arm])
    for seconds in (0.3, 0.05):  # the first try hit a busy moment
        policy.choose()
        policy.record(2, seconds)
    assert arm.round_cost == 0.05
    for seconds in (0.224, 0.248, 0.04, 0.05, 0.045):  # a busy spell: three slow rounds out of seven
        policy.choose()
        policy.record(2, seconds)
    assert arm.round_cost == pytest.approx(0.0475)  # the lower quartile


@pytest.mark.parametrize("edges", ["0.9,0.5", "1.5", "a", "0.5,0.5"])
def test_bad_confidence_buckets(edges):
    with pytest.raises(MambaspecError, match="invalid confidence buckets"):
        UCBPolicy([Arm("a", TreeShape((1,)))], edges=edges)


def test_auto_tree_with_sampling_falls_back_to_measured(tiny_target):
    gen = SpeculativeGenerator(tiny_target, MambaDrafter(tiny_mamba2(2)))
    from mambaspec.core.sampling import SamplingConfig

    policy = UCBPolicy([Arm("c2", TreeShape((1, 1))), Arm("f", TreeShape((2, 1)))])
    for i, p in enumerate(prompts(3)):
        gen.generate(p, max_new_tokens=12, tree=policy, sampling=SamplingConfig(temperature=0.8), seed=i)
    assert all(sum(a.replay_rounds) == 0 for a in policy.arms) and policy.t > 2
    assert policy.value(policy.arms[0]) == policy.arms[0].mean_reward
