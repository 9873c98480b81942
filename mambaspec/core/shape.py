"""Tree shapes: ``(N1, ..., Nγ)`` gives every frontier node at depth i exactly ``N_i`` children
(Mamba Drafters, arXiv 2506.01206, §3.2). ``(1, 1, 1, 1)`` is chain drafting with γ = 4.

Kept free of torch, so that the command line can check a shape before the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MambaspecError

MAX_TREE_NODES = 512


@dataclass(frozen=True)
class TreeShape:
    branching: tuple[int, ...]

    def __post_init__(self) -> None:
        if any((not isinstance(n, int)) or n < 1 for n in self.branching):
            raise MambaspecError(f"invalid tree shape {self.branching}: every level needs at least 1 child")
        if self.num_nodes > MAX_TREE_NODES:
            raise MambaspecError(f"tree shape {self} has {self.num_nodes} nodes; keep it under {MAX_TREE_NODES}")

    @classmethod
    def parse(cls, text: str | TreeShape | tuple[int, ...] | list[int]) -> TreeShape:
        """Parse ``"3,2,2,1,1"`` (brackets and spaces allowed); ``""`` or ``"()"`` is the empty shape."""
        if isinstance(text, TreeShape):
            return text
        if isinstance(text, (tuple, list)):
            return cls(tuple(int(n) for n in text))
        cleaned = text.strip().strip("()[]").replace(" ", "")
        if cleaned == "":
            return cls(())
        try:
            levels = tuple(int(part) for part in cleaned.split(","))
        except ValueError:
            raise MambaspecError(
                f"invalid tree shape '{text}': use comma-separated positive integers, e.g. 1,1,1,1 or 3,2,2,1,1"
            ) from None
        if any(n < 1 for n in levels):
            raise MambaspecError(f"invalid tree shape '{text}': every level needs at least 1 child, e.g. 2,2,1 "
                                 f"(for no drafting at all use no drafter)")
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
