"""Growing draft trees one batched drafter step per depth: what Mamba, Transformer and EAGLE drafters share.

A ``step.StepDrafter`` can feed a batch of frontier nodes at once and return their next-token logits
(``expand``). ``grow_tree`` turns that into a tree:

- a fixed ``TreeShape`` (N1, ..., Nγ): every frontier node at depth i gets its N_i best (greedy)
  or N_i drawn (sampling, without replacement) children (Mamba Drafters, arXiv 2506.01206, §3.2);
- a dynamic plan (``core.dynamic.DynamicPlan``): children by path probability, each kept only while
  it raises the round's expected tokens per second (see ``grow_dynamic``).

``forced(tree, node)`` adds deterministic children (e.g. copied from the context by a lookup
drafter, ``drafters.lookup``): they come first, the drafter's own children exclude their tokens
(a sampled child is then drawn from q without them), and they may continue below the last level
the drafter steps, without any drafter step.

The drafter's logits stay in its own columns (a draft vocabulary of K tokens, ``vocab.Candidates``);
only trees sampled under the rejection rule carry a target-width distribution q, which verification needs.
Under the gumbel rule (``core.sampling.GumbelNoise``) a node's children are the n largest of log q + the
noise of their position: the first is the drafter's Gumbel-max draw with the very noise the target draws
with (so it is the target's token whenever the two agree), the next ones its following draws.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from ..core.drafter import DraftPlan
from ..core.dynamic import DynamicPlan
from ..core.sampling import GumbelNoise, SamplingConfig, warp
from ..core.shape import TreeShape
from ..core.tree import DraftTree

if TYPE_CHECKING:
    from .step import StepDrafter


Forced = Callable[[DraftTree, int], list[tuple[int, tuple]]]  # node -> deterministic children (token, feature)


def grow_tree(drafter: StepDrafter | None, root_token: int, plan: DraftPlan, sampling: SamplingConfig,
              generator: torch.Generator | GumbelNoise | None = None, forced: Forced | None = None,
              forced_depth: int = 0) -> DraftTree:
    """A draft tree below ``root_token`` as ``plan`` says: a ``TreeShape`` (forced chains may continue
    ``forced_depth`` levels in all), or a dynamic plan. ``generator``: the round's randomness (a ``GumbelNoise``
    under the gumbel rule)."""
    if sampling.gumbel and not isinstance(generator, GumbelNoise):
        raise ValueError("the gumbel acceptance rule drafts with the round's GumbelNoise, not a torch generator")
    if isinstance(plan, TreeShape):
        return grow_fixed(drafter, root_token, plan, sampling, generator, forced, forced_depth)
    return grow_dynamic(drafter, root_token, plan, sampling, generator, forced)


def pick_children(scores: torch.Tensor, n: int, sampling: SamplingConfig, generator: torch.Generator | None,
                  exclude: list[list[int]] | None = None, noise: torch.Tensor | None = None
                  ) -> tuple[list[list[int]], list[list[float]], torch.Tensor]:
    """``n`` children per row of ``scores`` (B, C), never the columns ``exclude[row]``: top-n when greedy; when
    sampling, drawn from q (with the excluded columns removed) without replacement, with ``generator`` (rejection
    rule) or as the n largest of log q + ``noise`` (gumbel rule; ``noise``: (C,), the columns' Gumbel noise).

    Returns the children's columns per row, their drafter probabilities (softmax of the scores when
    greedy; q when sampling) and the distribution each row's children came from. A row with fewer than
    ``n`` possible tokens gets only those.
    """
    masked = scores
    if exclude and any(exclude):
        masked = scores.clone()
        for row, cols in enumerate(exclude):
            masked[row, cols] = float("-inf")
    if sampling.gumbel and noise is None:
        raise ValueError("the gumbel acceptance rule draws children with the noise of their position")
    if sampling.greedy or sampling.gumbel:
        dist = torch.softmax(scores.float(), dim=-1) if sampling.greedy else warp(masked, sampling)
        keys = masked if sampling.greedy else dist.log() + noise
        n = min(n, keys.shape[-1])
        top = torch.topk(keys, n, dim=-1)
        kids = [[c for c, v in zip(cols, vals) if v != float("-inf")]
                for cols, vals in zip(top.indices.tolist(), top.values.tolist())]
        return kids, [[float(dist[r, c]) for c in row] for r, row in enumerate(kids)], dist
    q = warp(masked, sampling)
    kids = draw_without_replacement(q, n, generator)
    return kids, [[float(q[r, c]) for c in row] for r, row in enumerate(kids)], q


def draw_without_replacement(q: torch.Tensor, n: int, generator: torch.Generator | None) -> list[list[int]]:
    """``n`` columns per row of ``q`` (B, C) drawn without replacement, in the order drawn (fewer where a row has
    fewer possible tokens): the rejection rule's draws, which verification assumes come from q."""
    support = (q > 0).sum(dim=-1)
    if bool((support >= n).all()):
        return torch.multinomial(q, n, replacement=False, generator=generator).tolist()
    return [torch.multinomial(row, min(n, int(s)), replacement=False, generator=generator).tolist() if s else []
            for row, s in zip(q, support)]


def _record(tree: DraftTree, drafter: StepDrafter, node: int, scores: torch.Tensor, dist: torch.Tensor,
            sampling: SamplingConfig) -> None:
    """What verification (rejection rule: q) and rank replay (greedy: the logits) need of an expanded node."""
    if sampling.greedy:
        tree.logits[node] = scores
    elif not sampling.gumbel:
        tree.q[node] = drafter.candidates.to_target_width(dist[None])[0]


def _noise(drafter: StepDrafter | None, generator, depth: int) -> torch.Tensor | None:
    """Under the gumbel rule, the noise of the children of a node at ``depth``, in the drafter's columns."""
    if drafter is None or not isinstance(generator, GumbelNoise):
        return None
    return drafter.candidates.columns(generator.children(depth))


def _forced_children(tree: DraftTree, node: int, forced: Forced | None, drafter: StepDrafter | None,
                     probs: torch.Tensor | None) -> list[tuple[int, tuple, float, int | None]]:
    """(token, feature, drafter probability, column) of the deterministic children of ``node``."""
    if forced is None:
        return []
    out = []
    for tok, feature in forced(tree, node):
        col = drafter.candidates.column(tok) if drafter is not None else None
        prob = float(probs[col]) if probs is not None and col is not None else 1.0
        out.append((tok, feature, prob, col))
    return out


def grow_fixed(drafter: StepDrafter | None, root_token: int, shape: TreeShape, sampling: SamplingConfig,
               generator: torch.Generator | GumbelNoise | None = None, forced: Forced | None = None,
               forced_depth: int = 0) -> DraftTree:
    """Every frontier node at depth i gets its forced children and ``shape.branching[i-1]`` of the drafter's;
    one batched drafter step per depth. Forced chains then continue to ``forced_depth``."""
    tree = DraftTree.root_only(root_token, sampled=not sampling.greedy)
    if shape.depth == 0:  # nothing to draft: the drafter need not even read what it was given
        return tree
    frontier, scores = [0], None
    if drafter is not None:
        scores = drafter.candidates.scores(drafter.start_tree(tree))
    for depth, n in enumerate(shape.branching, start=1):
        probs = torch.softmax(scores.float(), dim=-1) if scores is not None else None
        pre = [_forced_children(tree, x, forced, drafter, probs[r] if probs is not None else None)
               for r, x in enumerate(frontier)]
        if scores is not None:
            exclude = [[col for *_, col in children if col is not None] for children in pre]
            kids, kid_probs, dist = pick_children(scores, n, sampling, generator, exclude,
                                                  _noise(drafter, generator, depth - 1))
        nodes, parent_rows = [], []
        for r, parent in enumerate(frontier):
            added = [tree.add(tok, parent, prob=p, drawn=False, feature=feat) for tok, feat, p, _ in pre[r]]
            if scores is not None:
                _record(tree, drafter, parent, scores[r], dist[r], sampling)
                added += [tree.add(tok, parent, prob=p) for tok, p in
                          zip(drafter.candidates.target_ids(kids[r]), kid_probs[r])]
            nodes += added
            parent_rows += [r] * len(added)
        frontier = nodes
        if not nodes:
            return tree
        if depth < shape.depth and drafter is not None:
            scores = drafter.candidates.scores(drafter.expand(tree, depth, parent_rows, nodes))
            tree.steps += 1
        else:
            scores = None
    while forced is not None and frontier and tree.depth < forced_depth:
        frontier = [tree.add(tok, node, drawn=False, feature=feat) for node in frontier
                    for tok, feat, _, _ in _forced_children(tree, node, forced, None, None)]
    return tree


def grow_dynamic(drafter: StepDrafter | None, root_token: int, plan: DynamicPlan, sampling: SamplingConfig,
                 generator: torch.Generator | GumbelNoise | None = None, forced: Forced | None = None) -> DraftTree:
    """Grow level by level, keeping the candidates (the drafter's ``plan.max_children`` best or drawn children of
    each node it stepped, and every forced child) in order of value (the probability that the whole path is
    accepted) while each raises the expected tokens per second (``DynamicPlan.pays``); step the drafter on the
    kept nodes whose first child would pay. Sampled children are kept in the order drawn (a drawn child is
    never kept without the ones drawn before it)."""
    tree = DraftTree.root_only(root_token, sampled=not sampling.greedy)
    value, tokens, time = [1.0], 1.0, plan.base_time()
    scores: dict[int, torch.Tensor] = {}  # expanded node -> its scores
    if drafter is not None:
        scores[0] = drafter.candidates.scores(drafter.start_tree(tree))[0]
    level, rows = [0], {0: 0}  # nodes whose children are considered; row of each expanded one in its batch
    while level and tree.depth < plan.max_depth and len(tree) - 1 < plan.max_nodes:
        queues = [_candidates(tree, x, value[x], scores.get(x), drafter, forced, plan, sampling, generator)
                  for x in level]
        chosen = _choose(queues, plan, tokens, time, len(tree) - 1)
        if not any(chosen):
            break
        new = []
        for x, picks in zip(level, chosen):
            for v, tok, prob, drawn, feat in picks:
                new.append(tree.add(tok, x, prob=prob, drawn=drawn, feature=feat))
                value.append(v)
                tokens, time = tokens + v, time + plan.node_cost(len(tree) - 1)
        expand = [n for n in new if tree.parents[n] in scores and drafter is not None and tree.depth < plan.max_depth
                  and plan.pays(tokens, time, value[n] * plan.top_accept, plan.node_cost(len(tree)))]
        if expand and plan.pays(tokens, time, sum(value[n] for n in expand) * plan.top_accept, plan.costs.step):
            logits = drafter.expand(tree, tree.depth, [rows[tree.parents[n]] for n in expand], expand)
            tree.steps += 1
            time += plan.costs.step
            batch = drafter.candidates.scores(logits)
            scores.update({n: batch[i] for i, n in enumerate(expand)})
            rows = {n: i for i, n in enumerate(expand)}
        level = new
    return tree


class Candidate(NamedTuple):
    """A child a dynamic tree may add: its expected committed tokens if added, and what ``DraftTree.add`` takes."""

    value: float  # the parent's value times the child's acceptance rate
    token: int
    prob: float  # the drafter's probability of the token (1.0 for a copied one without a drafter)
    drawn: bool  # drawn from the drafter (sampled or its top ones); False: forced (copied)
    feature: tuple | None  # a copied child's description (AcceptanceModel.copy_accept_rate), else None


def _candidates(tree, node, v, scores, drafter, forced, plan, sampling, generator) -> list[Candidate]:
    """``Candidate`` children of ``node``: forced ones, then the drafter's own in the order
    proposed (best first, or as drawn). Records the node's logits (greedy) or q (sampled)."""
    probs = torch.softmax(scores.float(), dim=-1) if scores is not None else None
    pre = _forced_children(tree, node, forced, drafter, probs)
    out = [Candidate(v * plan.acceptance.copy_accept_rate(feat), tok, p, False, feat) for tok, feat, p, _ in pre]
    if scores is not None:
        exclude = [[col for *_, col in pre if col is not None]]
        kids, kid_probs, dist = pick_children(scores[None], plan.max_children, sampling, generator, exclude,
                                              _noise(drafter, generator, tree.depths[node]))
        _record(tree, drafter, node, scores, dist[0], sampling)
        out += [Candidate(v * plan.acceptance.accept_rate(r), tok, p, True, None)
                for tok, p, r in zip(drafter.candidates.target_ids(kids[0]), kid_probs[0],
                                     _planning_probs(kid_probs[0], dist[0], sampling))]
    return out


def _planning_probs(kid_probs: list[float], dist: torch.Tensor, sampling: SamplingConfig) -> list[float]:
    """The drafter probabilities a node's own children are valued by: their own when greedy (the top ones); when
    sampled, the i-th largest probability of q for the i-th draw, whatever token it drew. Under the rejection rule,
    whether a drawn child is kept must not depend on which token it is, or a kept child would no longer be
    distributed as q and the verification (which assumes it is) would not sample from the target (e.g. q = (0.9,
    0.1), p = (0.5, 0.5), keep a draw only when its own q is high: 0.55 / 0.45 come out instead of 0.5 / 0.5).
    Under the gumbel rule any valuation is exact; the same one serves (the i-th Gumbel draw is accepted about as
    often as the i-th draw of the rejection rule)."""
    if sampling.greedy or not kid_probs:
        return kid_probs
    return dist.topk(len(kid_probs)).values.tolist()


def _choose(queues: list[list[Candidate]], plan, tokens: float, time: float, n: int) -> list[list[Candidate]]:
    """The candidates to keep, best value first, while each pays for its verification; a drawn child only
    after the children drawn before it (greedy children come best first anyway)."""
    chosen: list[list[Candidate]] = [[] for _ in queues]
    heap = []
    for q, queue in enumerate(queues):
        drawn = [c for c in queue if c.drawn]
        for c in queue:
            if not c.drawn or c is drawn[0]:
                heapq.heappush(heap, (-c.value, q, queue.index(c)))
    while heap and n < plan.max_nodes:
        neg_v, q, i = heapq.heappop(heap)
        cost = plan.node_cost(n + 1)
        if not plan.pays(tokens, time, -neg_v, cost):
            break
        cand = queues[q][i]
        chosen[q].append(cand)
        tokens, time, n = tokens - neg_v, time + cost, n + 1
        if cand.drawn:  # the next drawn child of that node becomes available
            nxt = next((j for j in range(i + 1, len(queues[q])) if queues[q][j].drawn), None)
            if nxt is not None:
                heapq.heappush(heap, (-queues[q][nxt].value, q, nxt))
    for picks, queue in zip(chosen, queues):  # children in the order proposed (forced first, then as drawn)
        picks.sort(key=queue.index)
    return chosen
