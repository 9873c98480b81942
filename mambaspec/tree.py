"""Tree shapes and draft trees.

A shape ``(N1, ..., Nγ)`` gives every frontier node at depth i exactly ``N_i`` children
(Mamba Drafters, arXiv 2506.01206, §3.2). ``(1, 1, 1, 1)`` is chain drafting with γ = 4.

A ``DraftTree`` is stored flat in BFS order with the root at index 0. The root is the last
committed token, which the target has not consumed yet; nodes ``1..n`` are the draft tokens.
Children of one parent are contiguous and in the order they were proposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from .errors import MambaspecError

MAX_TREE_NODES = 512
DEFAULT_TREE = "2,1,1"  # small: on a CPU every verified node costs (design.md §3)


@dataclass(frozen=True)
class TreeShape:
    branching: tuple[int, ...]

    def __post_init__(self) -> None:
        if any((not isinstance(n, int)) or n < 1 for n in self.branching):
            raise MambaspecError(f"invalid tree shape {self.branching}: every level needs at least 1 child")
        if self.num_nodes > MAX_TREE_NODES:
            raise MambaspecError(
                f"tree shape {self} has {self.num_nodes} nodes; keep it under {MAX_TREE_NODES}")

    @classmethod
    def parse(cls, text: str | TreeShape | tuple[int, ...] | list[int]) -> TreeShape:
        """Parse ``"3,2,2,1,1"`` (brackets and spaces allowed). ``"0"`` or ``""`` mean no drafting."""
        if isinstance(text, TreeShape):
            return text
        if isinstance(text, (tuple, list)):
            return cls(tuple(int(n) for n in text))
        cleaned = text.strip().strip("()[]").replace(" ", "")
        if cleaned in ("", "0"):
            return cls(())
        try:
            levels = tuple(int(part) for part in cleaned.split(","))
        except ValueError:
            raise MambaspecError(
                f"invalid tree shape '{text}': use comma-separated positive integers, e.g. 1,1,1,1 or 3,2,2,1,1"
            ) from None
        if any(n < 1 for n in levels):
            raise MambaspecError(
                f"invalid tree shape '{text}': every level needs at least 1 child, e.g. 2,2,1")
        return cls(levels)

    @property
    def depth(self) -> int:
        return len(self.branching)

    @property
    def num_nodes(self) -> int:
        total, width = 0, 1
        for n in self.branching:
            width *= n
            total += width
        return total

    def truncated(self, depth: int) -> TreeShape:
        return TreeShape(self.branching[: max(depth, 0)])

    def __str__(self) -> str:
        return "(" + ",".join(str(n) for n in self.branching) + ")"


@dataclass
class DraftTree:
    """A draft tree, flat in BFS order; index 0 is the root (the pending committed token).

    ``q_by_depth[d]`` (sampling only) holds the drafter's distribution at each frontier node of
    depth ``d``, one row per node in BFS order; the children of those nodes were drawn from it.
    ``logits_by_depth[d]`` (greedy only) holds the drafter's logits there, from which the children
    were the top-N.
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    q_by_depth: list[torch.Tensor] | None = None
    logits_by_depth: list[torch.Tensor] | None = None  # greedy: the drafter's logits at each frontier node, by depth
    _children: list[list[int]] | None = field(default=None, repr=False)

    @classmethod
    def root_only(cls, token: int) -> DraftTree:
        return cls(tokens=[token], parents=[-1], depths=[0])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depth(self) -> int:
        return self.depths[-1]

    def children(self, node: int) -> list[int]:
        if self._children is None:
            kids: list[list[int]] = [[] for _ in self.tokens]
            for i, p in enumerate(self.parents):
                if p >= 0:
                    kids[p].append(i)
            self._children = kids
        return self._children[node]

    def depth_offset(self, depth: int) -> int:
        """Flat index of the first node at ``depth``."""
        return self.depths.index(depth)

    def q_at(self, node: int) -> torch.Tensor:
        """The drafter distribution from which ``node``'s children were drawn."""
        assert self.q_by_depth is not None
        d = self.depths[node]
        return self.q_by_depth[d][node - self.depth_offset(d)]

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
