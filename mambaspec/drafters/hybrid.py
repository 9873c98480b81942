"""A model drafter and a lookup drafter in one tree: ``mamba2-smollm2+lookup``.

The lookup's chains (text copied from earlier in the context) become deterministic children in the
model drafter's own tree (``drafters.growth``: they come first at their node, the model's children
exclude their tokens, and a chain continues below the model's last level without model steps), so
the merged tree is verified in the one target pass. With a dynamic plan the copied nodes are valued
by their own calibrated acceptance (by match length and agreement) next to the model's nodes, and
the node budget goes to whichever is more likely to be accepted.
"""

from __future__ import annotations

from ..core.drafter import Composite, Drafter, DraftPlan, ReportsRanks
from ..core.sampling import SamplingConfig
from ..core.tree import DraftTree
from ..errors import MambaspecError
from .growth import grow_tree
from .step import StepDrafter
from .lookup import LookupDrafter


class HybridDrafter(Drafter, Composite, ReportsRanks):
    """``model`` drafts a tree, ``lookup`` adds the chains it copies from the context."""

    def __init__(self, model: StepDrafter, lookup: LookupDrafter | None = None, name: str | None = None) -> None:
        if not isinstance(model, StepDrafter):
            raise MambaspecError(f"drafter '{model.name}' cannot merge lookup chains into its trees (it does not "
                                 f"grow them step by step); use the lookup drafter alone, or a Mamba or Transformer "
                                 f"drafter with the target's tokenizer")
        self.model = model
        self.lookup = lookup or LookupDrafter()
        self.tokenizer = model.tokenizer
        self.name = name or f"{model.name}+lookup"

    @property
    def parts(self) -> list[Drafter]:
        return [self.model, self.lookup]

    def bind(self, target_vocab_size: int) -> None:
        self.model.bind(target_vocab_size)

    def prefill(self, ids: list[int]) -> None:
        self.model.prefill(ids)
        self.lookup.prefill(ids)

    def draft(self, root_token: int, plan: DraftPlan, sampling: SamplingConfig, generator=None) -> DraftTree:
        depth = self.lookup.start(plan)
        if depth == 0:
            return DraftTree.root_only(root_token, sampled=not sampling.greedy)
        return grow_tree(self.model, root_token, plan, sampling, generator, forced=self.lookup.forced,
                         forced_depth=depth)

    def commit(self, tree: DraftTree, path: list[int], bonus: int) -> None:
        self.model.commit(tree, path, bonus)  # the tree is the model's own (grown by it, copied nodes included)
        self.lookup.commit(tree, path, bonus)

    def state_bytes(self) -> int:
        return self.model.state_bytes() + self.lookup.state_bytes()

    def committed_ranks(self, tree, path, tokens):
        return self.model.committed_ranks(tree, path, tokens)

    def root_confidence(self):
        return self.model.root_confidence()
