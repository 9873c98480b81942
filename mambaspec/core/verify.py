"""Verification of a whole draft tree in one target forward, and the acceptance rules.

Greedy: a child is accepted when it equals the target's argmax at its parent; the first node
with no matching child yields the target's argmax as the bonus token.

Sampling: multi-candidate speculative sampling (SpecInfer, arXiv 2305.09781, Alg. 2; with
children drawn from q without replacement, Recursive Speculative Decoding, arXiv 2402.14160),
which reduces to Leviathan et al. 2023 (arXiv 2211.17192, Alg. 1) for one child:

    for each child c_i (in the order proposed):
        drawn from q:    accept c_i with probability min(1, p(c_i) / q(c_i))
                         otherwise  p <- norm(max(p - q, 0))     # residual of the rejected proposal
                                    q <- norm(q with c_i removed) # c_{i+1} was drawn without c_i
        deterministic:   (q = one-hot(c_i), e.g. copied from the context)
                         accept c_i with probability p(c_i)
                         otherwise  p <- norm(p with c_i removed)  # = norm(max(p - one-hot, 0))
    if every child is rejected: bonus ~ p

Each step is a plain rejection step whose target is the residual of the previous one and whose
proposal is what the candidate was really drawn from, given the candidates before it (drawn
children come from q with the deterministic ones removed), so the accepted token (or the bonus)
is distributed exactly as the target's p. ``accept_probability`` and ``reject`` are the two lines
of that loop; an exact computation of a round's law (the slow tests) uses them too.

Sampling, ``gumbel`` rule (``core.sampling.GumbelNoise``): at a node of depth d the target's token is
its Gumbel-max draw y = argmax(log p + G_{offset+d}), whose noise depends only on the seed and the
position; a child is accepted when its token is y, otherwise y is the bonus token. This is the greedy
rule with the noise added, and commits exactly the tokens plain sampling with that noise draws
(Daliri et al. 2024, arXiv 2408.07978), whatever the tree.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .kv import final_hidden, forward_tree, keep_slots, kv_length
from .sampling import GumbelNoise, SamplingConfig, gumbel_draw, warp
from .tree import DraftTree


def accept_probability(p: torch.Tensor, q: torch.Tensor | None, c: int, from_q: bool) -> float:
    """The probability that child ``c`` is accepted: min(1, p(c)/q(c)) when drawn from q, else p(c)."""
    if from_q:
        return min(1.0, float(p[c] / q[c]))
    return float(p[c])


def reject(p: torch.Tensor, q: torch.Tensor | None, c: int, from_q: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The target and proposal for the next child once ``c`` is rejected (new tensors)."""
    if from_q:
        residual = torch.clamp(p - q, min=0)
        total = residual.sum()
        if total > 0:  # total == 0 only when p == q up to rounding; p is then already right
            p = residual / total
        q = q.clone()
        q[c] = 0  # the next child was drawn without c
        q_total = q.sum()
        if q_total > 0:
            q = q / q_total
    else:
        p = p.clone()
        p[c] = 0  # = norm(max(p - one-hot(c), 0))
        total = p.sum()
        if total > 0:
            p = p / total
    return p, q


def accept_child_sampled(p: torch.Tensor, q: torch.Tensor | None, children: list[int], drawn: list[bool],
                         generator: torch.Generator | None) -> tuple[int | None, torch.Tensor]:
    """Try ``children`` in order against target probabilities ``p``; ``drawn[i]``: child i was drawn from
    ``q`` (without replacement), else it is a deterministic proposal.

    Returns (index of the accepted child or None, the distribution the bonus is drawn from when
    none is accepted).
    """
    for i, (c, from_q) in enumerate(zip(children, drawn)):
        u = float(torch.rand((), generator=generator, device=p.device))
        if u < accept_probability(p, q, c, from_q):
            return i, p
        p, q = reject(p, q, c, from_q)
    return None, p


@dataclass
class Verdict:
    path: list[int]  # accepted tree nodes (flat indices, root excluded), root to leaf
    tokens: list[int]  # their tokens, then the bonus token
    forward_s: float  # wall time of the target forward
    hidden: torch.Tensor | None = None  # with ``hidden``: the target's last hidden states of the root and the path


def walk_tree(logits: torch.Tensor, tree: DraftTree, sampling: SamplingConfig,
              generator: torch.Generator | GumbelNoise | None = None) -> tuple[list[int], int]:
    """The accepted path (flat node indices) and the bonus token, from the target's logits at every node.
    ``generator``: the round's randomness, a ``GumbelNoise`` for the gumbel rule."""
    node, path = 0, []
    while True:
        children = tree.children(node)
        if not tree.sampled or sampling.gumbel:  # the target's token here: its argmax, or its Gumbel-max draw
            if not tree.sampled:
                want = int(torch.argmax(logits[node]))
            else:
                want = int(gumbel_draw(warp(logits[node], sampling), generator.children(tree.depths[node])))
            match = next((c for c in children if tree.tokens[c] == want), None)
            if match is None:
                return path, want
            node = match
        else:
            p = warp(logits[node], sampling)
            accepted, residual = accept_child_sampled(
                p, tree.q.get(node), [tree.tokens[c] for c in children], [tree.drawn[c] for c in children],
                generator) if children else (None, p)
            if accepted is None:
                return path, int(torch.multinomial(residual, 1, generator=generator))
            node = children[accepted]
        path.append(node)


@torch.inference_mode()
def verify_tree(target, cache, tree: DraftTree, sampling: SamplingConfig,
                generator: torch.Generator | GumbelNoise | None = None, hidden: bool = False) -> Verdict:
    """Verify ``tree`` in one forward of ``target``, leaving only the accepted path in ``cache``.

    Before the call the cache holds every committed token but the root (the pending token);
    after it, it holds those plus the root and the accepted draft tokens. ``hidden``: also return
    the target's last hidden states of the root and the accepted nodes (for drafters that read them).
    """
    if tree.sampled == sampling.greedy and len(tree) > 1:
        raise ValueError("the draft tree was grown for another decoding mode (greedy vs sampled)")
    if sampling.gumbel != isinstance(generator, GumbelNoise) and not sampling.greedy:
        raise ValueError(f"the {sampling.acceptance} rule needs "
                         f"{'a GumbelNoise' if sampling.gumbel else 'a torch generator'}")
    past = kv_length(cache)
    positions = [past + d for d in tree.depths]
    t0 = time.perf_counter()
    with final_hidden(target) if hidden else nullcontext([]) as states:
        logits = forward_tree(target, cache, tree.tokens, positions, tree.ancestor_mask())
    if logits.is_cuda:
        torch.cuda.synchronize(logits.device)
    forward_s = time.perf_counter() - t0
    path, bonus = walk_tree(logits, tree, sampling, generator)
    keep_slots(cache, past, [past] + [past + i for i in path])
    return Verdict(path=path, tokens=[tree.tokens[i] for i in path] + [bonus], forward_s=forward_s,
                   hidden=states[-1][0, [0, *path]] if states else None)
