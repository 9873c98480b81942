"""The drafter interface: the few calls the engine makes, and the optional capabilities. The engine defines it (the
layer that calls it); ``mambaspec.drafters`` implements it.

A drafter follows the committed text. ``prefill`` feeds the prompt; ``draft`` grows a tree of
candidate tokens below the last committed token (the *root*, which the target has not read
yet); ``commit`` moves the drafter to the accepted path and feeds the bonus token, so that the
next ``draft`` starts from the new committed text; ``state_bytes`` is the memory its
per-sequence state takes.

What a tree looks like is the ``plan``'s business: a fixed ``TreeShape`` or a dynamic budget
(``core.dynamic.DynamicPlan``). Optional capabilities are separate classes a drafter also derives from,
so the engine asks ``isinstance`` instead of calling stubs:

- ``ReportsRanks``: the drafter's rank of every committed token and its confidence (the
  replayed reward of the tree bandit; the root confidence for dynamic trees);
- ``Rewindable``: ``snapshot``/``restore`` between rounds (cross-tokenizer drafting re-reads text);
- ``ReadsTargetHidden``: wants the target's hidden states of the tokens it commits (an
  EAGLE-style head drafts from them);
- ``Composite``: made of other drafters (``parts``), e.g. the cross-tokenizer wrapper.

``NoDrafter`` drafts nothing: the same loop then is plain decoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeAlias

import torch

from .dynamic import DynamicPlan
from .sampling import GumbelNoise, SamplingConfig
from .shape import TreeShape
from .tree import DraftTree

DraftPlan: TypeAlias = TreeShape | DynamicPlan  # what a round's tree should be: a fixed shape or a dynamic budget


class Drafter(ABC):
    """Proposes a tree of draft tokens after the committed text."""

    name: str = "drafter"
    tokenizer = None  # the drafter's own tokenizer, when it has one (cross-tokenizer drafting compares)

    def bind(self, target_vocab_size: int) -> None:
        """Called by the engine: the width of the target's vocabulary, which draft ids must fit."""

    @abstractmethod
    def prefill(self, ids: list[int]) -> None:
        """Start a new sequence: consume the prompt (every committed token so far)."""

    @abstractmethod
    def draft(self, root_token: int, plan: DraftPlan, sampling: SamplingConfig,
              generator: torch.Generator | GumbelNoise | None = None) -> DraftTree:
        """A tree below ``root_token`` (the last committed token) as ``plan`` says; sampled trees when
        ``sampling`` is not greedy (``DraftTree.sampled``), with ``generator`` (the rejection rule) or the
        round's ``GumbelNoise`` (the gumbel rule)."""

    @abstractmethod
    def commit(self, tree: DraftTree, path: list[int], bonus: int) -> None:
        """Move to the end of the accepted ``path`` (flat node indices) and feed ``bonus``."""

    @abstractmethod
    def state_bytes(self) -> int:
        """Bytes of the drafter's per-sequence state (recurrent state or KV cache) right now."""


class ReportsRanks(ABC):
    """A drafter that can say how it ranked each committed token (greedy trees)."""

    @abstractmethod
    def committed_ranks(self, tree: DraftTree, path: list[int], tokens: list[int]
                        ) -> tuple[list[int], list[float]] | None:
        """For each token committed by a greedy round: the drafter's rank of it (0 = its first choice)
        given the committed text before it, and its top-1 probability there; None when unknown."""

    @abstractmethod
    def root_confidence(self) -> float | None:
        """The drafter's top-1 probability for the token after the root (None before a prefill)."""


class Rewindable(ABC):
    """A drafter that can return to where it was between two rounds."""

    @abstractmethod
    def snapshot(self) -> object:
        """What ``restore`` needs to return the drafter to where it is now (between rounds)."""

    @abstractmethod
    def restore(self, snap: object) -> None:
        """Return to a ``snapshot`` taken earlier in this sequence."""


class ReadsTargetHidden(ABC):
    """A drafter that drafts from the target's hidden states (self-speculation heads, e.g. EAGLE).

    The engine hands the drafter the target's final hidden states of every token the target has read: the
    prompt (``prefill_hidden``) and each round's accepted nodes (``take_hidden``, before ``commit``).
    """

    @abstractmethod
    def prefill_hidden(self, hidden: torch.Tensor) -> None:
        """The target's features (positions, features) of the prompt less its last token."""

    @abstractmethod
    def take_hidden(self, hidden: torch.Tensor) -> None:
        """The target's features of the root and the accepted nodes of the round just verified."""


class Composite(ABC):
    """A drafter made of other drafters."""

    @property
    @abstractmethod
    def parts(self) -> list[Drafter]:
        """The drafters this one is made of."""


class NoDrafter(Drafter):
    """Drafts nothing: every round verifies the root alone, i.e. plain autoregressive decoding."""

    name = "none"

    def prefill(self, ids: list[int]) -> None:
        pass

    def draft(self, root_token: int, plan: DraftPlan, sampling: SamplingConfig,
              generator: torch.Generator | GumbelNoise | None = None) -> DraftTree:
        return DraftTree.root_only(root_token, sampled=not sampling.greedy)

    def commit(self, tree: DraftTree, path: list[int], bonus: int) -> None:
        pass

    def state_bytes(self) -> int:
        return 0


def innermost(drafter: Drafter) -> Drafter:
    """The drafter at the bottom of a chain of single-part composites (e.g. under a cross-tokenizer wrapper)."""
    while isinstance(drafter, Composite) and len(drafter.parts) == 1:
        drafter = drafter.parts[0]
    return drafter
