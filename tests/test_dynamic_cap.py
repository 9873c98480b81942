"""The dynamic tree's node cap rises to 64 where verification is flat (a GPU), and stays where it is on a CPU."""

import torch

from mambaspec.core.dynamic import WIDE_NODES, CostModel, DynamicTreePolicy
from mambaspec.core.tree import DraftTree


def _policy(step_s: float, per_node_s: float, nodes=(0, 1, 2, 4, 8, 16)) -> DynamicTreePolicy:
    known = [(n, 500 + 10 * i, step_s + per_node_s * n) for i in range(3) for n in nodes]
    return DynamicTreePolicy(costs=CostModel(known=known))


def test_flat_verification_raises_the_node_cap_to_64():
    policy = _policy(0.004, 0.000005)  # a GPU: 4 ms a step, 64 nodes +8%
    policy.begin_sequence(None)
    plan = policy.choose(None, 520, 200)
    assert policy.costs.flat(520) and plan.max_nodes == WIDE_NODES == 64
    assert policy.max_nodes == 16  # the setting itself is left as it is


def test_cpu_like_costs_keep_the_cap():
    policy = _policy(0.020, 0.001)  # a CPU: every node costs a twentieth of a step
    policy.begin_sequence(None)
    plan = policy.choose(None, 520, 200)
    assert not policy.costs.flat(520) and plan.max_nodes == 16


def test_flat_small_trees_alone_do_not_raise_it():
    policy = _policy(0.004, 0.0, nodes=(0, 1, 2))  # flat, but only trees of 2 nodes measured: no extrapolating
    policy.begin_sequence(None)
    assert policy.choose(None, 520, 200).max_nodes == 16


def _grown(policy: DynamicTreePolicy) -> DraftTree:
    from mambaspec import MambaDrafter
    from mambaspec.core.sampling import SamplingConfig
    from tiny import tiny_mamba2

    model = tiny_mamba2(2)
    with torch.no_grad():  # a drafter confident enough that deep, wide trees are worth their nodes
        model.lm_head.weight.mul_(10.0)
    drafter = MambaDrafter(model)
    drafter.bind(96)
    drafter.prefill([5, 6, 7, 8, 9])
    policy.begin_sequence(drafter)
    return drafter.draft(9, policy.choose(drafter, 520, 200), SamplingConfig(), None)


def test_a_dynamic_tree_grows_past_16_nodes_only_where_verification_is_flat():
    from mambaspec.core.shape import TreeShape

    assert TreeShape.parse("3,2,2,1,1").num_nodes == 45 <= WIDE_NODES
    wide, capped = _grown(_policy(0.004, 0.000005)), _grown(_policy(0.004, 0.0002))
    assert 16 < len(wide) - 1 <= WIDE_NODES
    assert len(capped) - 1 <= 16
