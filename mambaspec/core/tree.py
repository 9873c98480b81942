"""Draft trees.

A ``DraftTree`` is stored flat in BFS order with the root at index 0. The root is the last
committed token, which the target has not consumed yet; nodes ``1..n`` are the draft tokens.
Children of one parent are contiguous and in the order they were proposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch


@dataclass
class DraftTree:
    """A draft tree, flat in BFS order; index 0 is the root (the pending committed token).

    ``sampled`` says how the children were chosen. Sampled under the rejection rule: ``q[node]`` is the
    drafter distribution from which ``node``'s children with ``drawn[child]`` True were drawn (without
    replacement, in order); a child with ``drawn`` False is a deterministic proposal (q = one-hot,
    e.g. copied from the context) and its token was excluded from ``q[node]`` before the draws. Under
    the gumbel rule no q is kept (verification accepts exactly the target's own draw).
    Greedy: ``logits[node]``, when kept, holds the drafter's logits at ``node`` (its children were
    the highest), from which the bandit replays ranks. ``prob[i]`` is the drafter's probability of
    node i given its parent (1.0 for the root). ``feature[i]`` describes a node that was not proposed by a
    model (e.g. ``(match length, agreement)`` of a context match), None for model nodes. ``steps`` counts
    the drafter forwards the tree took, ``read_s`` the time it first spent reading the committed text.
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    sampled: bool = False
    prob: list[float] = field(default_factory=lambda: [1.0])
    drawn: list[bool] = field(default_factory=lambda: [False])
    feature: list[tuple[object, ...] | None] = field(default_factory=lambda: [None])
    steps: int = 0
    read_s: float = 0.0  # seconds the drafter spent reading committed tokens before drafting (lazy commits)
    q: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: dict[int, torch.Tensor] = field(default_factory=dict)
    _children: list[list[int]] | None = field(default=None, repr=False)

    @classmethod
    def root_only(cls, token: int, sampled: bool = False) -> DraftTree:
        return cls(tokens=[token], parents=[-1], depths=[0], sampled=sampled)

    def add(self, token: int, parent: int, prob: float = 1.0, drawn: bool = True,
            feature: tuple[object, ...] | None = None) -> int:
        """Append a node below ``parent`` (BFS order is the caller's job); returns its index."""
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.prob.append(prob)
        self.drawn.append(drawn)
        self.feature.append(feature)
        self._children = None
        return len(self.tokens) - 1

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depth(self) -> int:
        return max(self.depths)

    def children(self, node: int) -> list[int]:
        if self._children is None:
            kids: list[list[int]] = [[] for _ in self.tokens]
            for i, p in enumerate(self.parents):
                if p >= 0:
                    kids[p].append(i)
            self._children = kids
        return self._children[node]

    def ancestor_mask(self) -> torch.Tensor:
        """``mask[i, j]`` is True when node j is node i or one of its ancestors (root included)."""
        return _ancestor_mask(tuple(self.parents))

    def path_to(self, node: int) -> list[int]:
        """Flat indices from the first draft node down to ``node`` (root excluded)."""
        path = []
        while node > 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


@lru_cache(maxsize=256)
def _ancestor_mask(parents: tuple[int, ...]) -> torch.Tensor:
    n = len(parents)
    mask = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        mask[i] |= mask[parents[i]]
    return mask
