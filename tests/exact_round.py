"""The exact law of one speculative round under the rejection rule, by enumeration, next to the target's own law.

For a prompt x, the law of the first two new tokens (o1, o2) when the round is followed by plain sampling from the
target (the next round, if the round commits one token) must be p(o1 | x) p(o2 | x, o1) exactly. It is computed
without sampling:

- the root's draws: every ordered tuple the drafter can draw (top-k / top-p keep it small), with its probability
  without replacement (Plackett-Luce) from the root's q; for each, the REAL tree growth runs with those draws
  scripted (``growth.draw_without_replacement`` replaced), so the tree below, the q it records at every node, the
  copied children (lookup) and the kept children (dynamic trees) are what the engine would have;
- the acceptance rule's outcomes: at the root, then at the accepted child, every accept/reject branch with the
  probabilities of the engine's own ``accept_probability`` and ``reject``, and every tuple of children the child's
  q can give (enumerated the same way);
- the target's probabilities the engine verifies with (one tree forward through the engine's cache, every child of
  the root in it) against the target's own plain forwards (the reference law).

What it rests on: that the drafter's draws follow q without replacement (``draw_without_replacement``, tested on its
own) and that a node's q and kept-children count do not depend on the tokens drawn at its own level.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

import mambaspec.drafters.growth as growth
from mambaspec.core.engine import SpeculativeGenerator
from mambaspec.core.kv import forward_tree, keep_slots, kv_length
from mambaspec.core.policy import FixedTree
from mambaspec.core.sampling import SamplingConfig, warp
from mambaspec.core.shape import TreeShape
from mambaspec.core.tree import DraftTree
import mambaspec.core.verify as verify
from mambaspec.core.drafter import Rewindable
from mambaspec.drafters.eagle import EagleDrafter
from mambaspec.drafters.hybrid import HybridDrafter


@dataclass
class RoundLaw:
    engine: dict[tuple[int, int], float]  # the law the engine's round gives, (o1, o2) -> probability
    target: dict[tuple[int, int], float]  # p(o1) p(o2 | o1) from the target's own forwards
    root_tuples: int  # root draws enumerated
    tree_nodes: float  # mean draft nodes of the enumerated trees (weighted)
    forward_tv: float  # largest total variation between the engine's p at a node and the target's own

    @property
    def tv(self) -> float:
        keys = self.engine.keys() | self.target.keys()
        return 0.5 * sum(abs(self.engine.get(k, 0.0) - self.target.get(k, 0.0)) for k in keys)

    @property
    def first_token_tv(self) -> float:
        a, b = _marginal(self.engine), _marginal(self.target)
        return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in a.keys() | b.keys())


def _marginal(law: dict) -> dict:
    out: dict[int, float] = {}
    for (o1, _), w in law.items():
        out[o1] = out.get(o1, 0.0) + w
    return out


def ordered_draws(q: torch.Tensor, n: int):
    """Every ordered n-tuple (fewer where the support is smaller) of indices drawn from ``q`` without replacement,
    with its probability: (tuple, probability), float64."""
    q = q.double()
    support = torch.nonzero(q > 0).flatten().tolist()
    n = min(n, len(support))

    def rec(prefix, prob, left):
        if len(prefix) == n:
            yield tuple(prefix), prob
            return
        for c in support:
            if c not in prefix:
                yield from rec(prefix + [c], prob * float(q[c]) / left, left - float(q[c]))

    yield from rec([], 1.0, float(q.sum()))


def node_law(p: torch.Tensor, q: torch.Tensor | None, forced: list[int], drawn: int) -> torch.Tensor:
    """The exact law of the token that follows a node whose children are ``forced`` (deterministic, tried first) and
    ``drawn`` children drawn from ``q`` without replacement, under the engine's acceptance rule (accepted child or
    bonus). ``p``, ``q``: float64 over the same (compact) index set."""
    out = torch.zeros_like(p)

    def rec(p, q, mass, forced, left):
        if mass < 1e-15:
            return
        if forced:
            c = forced[0]
            a = verify.accept_probability(p, q, c, False)
            out[c] += mass * a
            p2, q2 = verify.reject(p, q, c, False)
            rec(p2, q2, mass * (1 - a), forced[1:], left)
        elif left and q is not None and float(q.sum()) > 0:
            support = torch.nonzero(q > 0).flatten().tolist()
            if left == 1:  # the last draw: whichever token was rejected, the target left is the same residual
                rejected = 0.0
                for c in support:
                    a = verify.accept_probability(p, q, c, True)
                    out[c] += mass * float(q[c]) * a
                    rejected += mass * float(q[c]) * (1 - a)
                bonus, _ = verify.reject(p, q, support[0], True)
                assert torch.equal(bonus, verify.reject(p, q, support[-1], True)[0])
                out.add_(bonus, alpha=rejected)
                return
            for c in support:
                w = float(q[c])
                a = verify.accept_probability(p, q, c, True)
                out[c] += mass * w * a
                p2, q2 = verify.reject(p, q, c, True)
                rec(p2, q2, mass * w * (1 - a), [], left - 1)
        else:
            out.add_(p, alpha=mass)  # every child rejected: the bonus is drawn from what is left

    rec(p, q, 1.0, list(forced), drawn)
    return out


@contextmanager
def scripted_root(tuple_columns: list[int] | None, seen: list):
    """Within the block, the first draw of each tree (the root's) returns ``tuple_columns`` (None: the real draw,
    recorded in ``seen`` with its q), the later ones draw for real."""
    real = growth.draw_without_replacement
    state = {"first": True}

    def draw(q, n, generator):
        if state["first"]:
            state["first"] = False
            seen.append((q.clone(), n))
            if tuple_columns is not None:
                return [list(tuple_columns)]
        return real(q, n, generator)

    growth.draw_without_replacement = draw
    try:
        yield lambda: state.update(first=True)
    finally:
        growth.draw_without_replacement = real


class Restorer:
    """Puts a drafter back where it was after the prompt, so that many trees can be drafted from the same point."""

    def __init__(self, drafter) -> None:
        self.model = drafter.model if isinstance(drafter, HybridDrafter) else drafter
        self.model.flush() if hasattr(self.model, "flush") else None
        self.snap = self.model.snapshot() if isinstance(self.model, Rewindable) else None
        self.committed = getattr(self.model, "_committed", None)

    def __call__(self) -> None:
        if self.snap is not None:
            self.model.restore(self.snap)
        elif isinstance(self.model, EagleDrafter):
            keep_slots(self.model.cache, self.model._committed, [])


def _target_probs(model, prompt: list[int], sampling: SamplingConfig, after: list[int]) -> dict[int, torch.Tensor]:
    """The target's own warped distributions (plain forwards, no cache) after ``prompt`` and after prompt + [t]."""
    with torch.inference_mode():
        root = warp(model(torch.tensor([prompt], device=model.device)).logits[0, -1].float(), sampling)
        out = {-1: root.cpu().double()}
        if after:
            rows = torch.tensor([prompt + [t] for t in after], device=model.device)
            nxt = warp(model(rows).logits[:, -1].float(), sampling)
            out.update({t: nxt[i].cpu().double() for i, t in enumerate(after)})
    return out


def exact_round_law(target, drafter, prompt: list[int], plan, sampling: SamplingConfig, max_tuples: int = 5000
                    ) -> RoundLaw:
    """The exact law of the first two tokens of a round (``plan``: a ``TreeShape``, or a callable giving a fresh
    ``DynamicPlan``) against the target's, for the real ``target`` model and ``drafter``."""
    assert not sampling.greedy and sampling.acceptance == "rejection"
    gen = SpeculativeGenerator(target, drafter, eos_token_ids=[])
    run = gen._begin(prompt, 8, FixedTree(TreeShape((1,))), sampling, 0, None)
    restore = Restorer(drafter)
    make_plan = plan if callable(plan) else (lambda: plan)
    generator = torch.Generator().manual_seed(0)

    def draft(tuple_columns):
        restore()
        seen: list = []
        with scripted_root(tuple_columns, seen):
            tree = drafter.draft(run.pending, make_plan(), sampling, generator)
        return tree, seen

    probe, seen = draft(None)
    if not seen:  # nothing drawn at the root (a plan that drafts nothing, or only copied children)
        tuples = [(None, 1.0)]
    else:
        q_root, n = seen[0]
        tuples = list(ordered_draws(q_root[0], n))
        assert len(tuples) <= max_tuples, f"{len(tuples)} root draws: too many to enumerate"

    # The engine's p at the root and at every child of the root: one tree forward through its cache.
    p_root_engine = warp(_tree_logits(target, run.cache, DraftTree.root_only(run.pending, True))[0], sampling)
    support1 = torch.nonzero(p_root_engine > 0).flatten().tolist()
    trees = []
    for cols, w in tuples:
        tree, _ = draft(list(cols) if cols is not None else None)
        trees.append((tree, w))
    first = sorted({tree.tokens[c] for tree, _ in trees for c in tree.children(0)} | set(support1))
    full = DraftTree.root_only(run.pending, True)
    for t in first:
        full.add(t, 0)
    logits = _tree_logits(target, run.cache, full)
    engine_p = {-1: warp(logits[0], sampling).cpu().double(),
                **{t: warp(logits[i + 1], sampling).cpu().double() for i, t in enumerate(first)}}
    ref_p = _target_probs(target, prompt, sampling, first)
    forward_tv = max(0.5 * float((engine_p[k] - ref_p[k]).abs().sum()) for k in engine_p)

    engine: dict[tuple[int, int], float] = {}
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # node token, forced, drawn -> (q, law over o2)
    nodes = 0.0
    for tree, w in trees:
        nodes += w * (len(tree) - 1)
        kids = tree.children(0)
        p, q = engine_p[-1], _q(tree, 0)
        mass = w
        for c in kids:
            tok, from_q = tree.tokens[c], tree.drawn[c]
            a = verify.accept_probability(p, q, tok, from_q)
            _add(engine, tok, mass * a, _after(tree, c, engine_p[tok], cache))
            p, q = verify.reject(p, q, tok, from_q)
            mass *= 1 - a
        for b in torch.nonzero(p > 0).flatten().tolist():  # the bonus at the root; then the target samples
            _add(engine, b, mass * float(p[b]), ref_p[b] if b in ref_p else _target_probs(target, prompt, sampling,
                                                                                           [b])[b])
    target_law: dict[tuple[int, int], float] = {}
    for o1 in torch.nonzero(ref_p[-1] > 0).flatten().tolist():
        _add(target_law, o1, float(ref_p[-1][o1]), ref_p[o1] if o1 in ref_p else
             _target_probs(target, prompt, sampling, [o1])[o1])
    total = sum(engine.values())
    assert abs(total - 1) < 1e-6, f"the enumerated law sums to {total}"
    return RoundLaw(engine, target_law, len(tuples), nodes, forward_tv)


def _q(tree: DraftTree, node: int) -> torch.Tensor | None:
    q = tree.q.get(node)
    return q.cpu().double() if q is not None else None


def _after(tree: DraftTree, node: int, p: torch.Tensor, cache: dict) -> torch.Tensor:
    """The exact law of the token after an accepted depth-1 ``node`` (its children in ``tree``)."""
    kids = tree.children(node)
    forced = [tree.tokens[c] for c in kids if not tree.drawn[c]]
    drawn = sum(tree.drawn[c] for c in kids)
    q = _q(tree, node) if drawn else None
    key = (tree.tokens[node], tuple(forced), drawn)
    if key in cache:
        q_seen, law = cache[key]
        if q is not None:  # a node's q depends on its path only, not on what else the tree holds
            assert float((q - q_seen).abs().max()) < 1e-4, "q at a node changed with the rest of the tree"
        return law
    idx = torch.nonzero((p > 0) | (q > 0 if q is not None else p > 0)).flatten()
    idx = torch.unique(torch.cat([idx, torch.tensor(forced, dtype=torch.long)]))
    pos = {int(t): i for i, t in enumerate(idx.tolist())}
    compact = node_law(p[idx], q[idx] if q is not None else None, [pos[t] for t in forced], drawn)
    law = torch.zeros_like(p)
    law[idx] = compact
    cache[key] = (q, law)
    return law


def _add(law: dict, o1: int, mass: float, second: torch.Tensor) -> None:
    if mass <= 0:
        return
    for o2 in torch.nonzero(second > 0).flatten().tolist():
        law[(o1, o2)] = law.get((o1, o2), 0.0) + mass * float(second[o2])


def _tree_logits(target, cache, tree: DraftTree) -> torch.Tensor:
    """The target's logits at every node of ``tree`` through the engine's tree forward; the cache is left as it was."""
    past = kv_length(cache)
    logits = forward_tree(target, cache, tree.tokens, [past + d for d in tree.depths], tree.ancestor_mask())
    keep_slots(cache, past, [])
    return logits
