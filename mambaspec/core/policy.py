"""Tree policies: what decides the tree of every round.

The engine asks ``choose`` for a plan before each round (a ``TreeShape``, or a dynamic plan that
grows the tree from the drafter's probabilities) and reports the round's outcome to
``observe``. ``FixedTree`` always answers the same shape; ``bandit.UCBPolicy`` picks among
shapes; ``dynamic.DynamicTreePolicy`` drafts only what its cost model says pays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..errors import MambaspecError
from .shape import TreeShape
from .stats import RoundOutcome

if TYPE_CHECKING:
    from .drafter import Drafter, DraftPlan


class TreePolicy(Protocol):
    name: str  # the shape for a fixed tree, else what picks it: "auto", "dynamic"

    def begin_sequence(self, drafter: Drafter | None) -> None:
        """A new sequence starts (after the prefill)."""

    def choose(self, drafter: Drafter | None, context: int, remaining: int) -> DraftPlan:
        """The plan of the next round: a ``TreeShape``, or a ``DynamicPlan`` (dynamic trees).
        ``context``: tokens the target has read; ``remaining``: tokens still to generate."""

    def observe(self, outcome: RoundOutcome) -> None:
        """Learn from the round just done."""

    @property
    def wants_ranks(self) -> bool:
        """Whether ``observe`` needs the drafter's ranks of the committed tokens."""

    def describe(self) -> str:
        """One line: what the policy is, for stats and CSVs."""

    def report(self) -> dict[str, Any]:
        """The policy's own numbers after a generation (per arm statistics, predictions)."""


class FixedTree:
    """The same shape every round (cut to the tokens still to generate)."""

    wants_ranks = False

    def __init__(self, shape: TreeShape) -> None:
        self.shape = shape
        self.name = str(shape)

    def begin_sequence(self, drafter: Drafter | None) -> None:
        pass

    def choose(self, drafter: Drafter | None, context: int, remaining: int) -> TreeShape:
        return self.shape.truncated(remaining - 1)

    def observe(self, outcome: RoundOutcome) -> None:
        pass

    def describe(self) -> str:
        return str(self.shape)

    def report(self) -> dict[str, Any]:
        return {}


def as_policy(tree: TreeShape | str | TreePolicy) -> TreePolicy:
    """A tree policy from a policy object (as it is) or a shape: a ``TreeShape`` or its spelling such as ``"2,1,1"``.
    Names of policies (``"dynamic"``, ``"auto"``) are resolved above the engine: ``loading.trees.resolve_tree``."""
    if hasattr(tree, "choose"):
        return tree  # type: ignore[return-value]
    if isinstance(tree, str) and tree.strip().lower() in ("dynamic", "auto"):
        raise MambaspecError(f"tree '{tree.strip()}' names a policy, and the engine takes shapes and policy objects: "
                             f"pass mambaspec.loading.trees.resolve_tree('{tree.strip()}') (or use a Pipeline)")
    return FixedTree(TreeShape.parse(tree))  # type: ignore[arg-type]
