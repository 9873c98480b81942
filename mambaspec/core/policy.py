"""Tree policies: what decides the tree of every round.

The engine asks ``choose`` for a plan before each round (a ``TreeShape``, or a dynamic plan that
grows the tree from the drafter's probabilities) and reports the round's outcome to
``observe``. ``FixedTree`` always answers the same shape; ``bandit.UCBPolicy`` picks among
shapes; ``dynamic.DynamicTreePolicy`` drafts only what its cost model says pays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .shape import TreeShape
from .stats import RoundOutcome

if TYPE_CHECKING:
    from .drafter import DraftPlan


class TreePolicy(Protocol):
    name: str  # the shape for a fixed tree, else what picks it: "auto", "dynamic"

    def begin_sequence(self, drafter) -> None:
        """A new sequence starts (after the prefill)."""

    def choose(self, drafter, context: int, remaining: int) -> DraftPlan:
        """The plan of the next round: a ``TreeShape``, or a ``DynamicPlan`` (dynamic trees).
        ``context``: tokens the target has read; ``remaining``: tokens still to generate."""

    def observe(self, outcome: RoundOutcome) -> None:
        """Learn from the round just done."""

    @property
    def wants_ranks(self) -> bool:
        """Whether ``observe`` needs the drafter's ranks of the committed tokens."""

    def describe(self) -> str:
        """One line: what the policy is, for stats and CSVs."""

    def report(self) -> dict:
        """The policy's own numbers after a generation (per arm statistics, predictions)."""


class FixedTree:
    """The same shape every round (cut to the tokens still to generate)."""

    wants_ranks = False

    def __init__(self, shape: TreeShape) -> None:
        self.shape = shape
        self.name = str(shape)

    def begin_sequence(self, drafter) -> None:
        pass

    def choose(self, drafter, context: int, remaining: int) -> TreeShape:
        return self.shape.truncated(remaining - 1)

    def observe(self, outcome: RoundOutcome) -> None:
        pass

    def describe(self) -> str:
        return str(self.shape)

    def report(self) -> dict:
        return {}


TREE_POLICIES = ("auto", "dynamic")  # besides shapes: a UCB bandit over shapes, dynamic trees


def as_policy(tree) -> TreePolicy:
    """A tree policy from what a caller gave: a policy, a ``TreeShape``, ``"dynamic"``, ``"auto"`` (the bandit over
    the shipped arms) or a shape such as ``"2,1,1"``."""
    if hasattr(tree, "choose"):
        return tree
    if isinstance(tree, str) and tree.strip().lower() == "dynamic":
        from .dynamic import DynamicTreePolicy

        return DynamicTreePolicy()
    if isinstance(tree, str) and tree.strip().lower() == "auto":
        from ..config import recipes_dir
        from .bandit import UCBPolicy, load_arms

        return UCBPolicy(load_arms(recipes_dir() / "trees.yaml"))
    return FixedTree(TreeShape.parse(tree))
