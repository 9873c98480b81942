"""``TransformerDrafter``: any causal LM with a KV cache; trees through a tree attention mask.

Each depth is one forward over the nodes to expand, with a mask that lets each see its
ancestors; the rejected entries are dropped from its cache at commit (SpecInfer, arXiv 2305.09781).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..core.kv import forward_chain, forward_tree, keep_slots, kv_bytes, new_kv_cache
from .step import Reading, RewindableStep
from .vocab import DraftVocab


class TransformerDrafter(RewindableStep):
    name = "transformer"

    def __init__(self, model, tokenizer=None, name: str | None = None, draft_vocab: DraftVocab | None = None) -> None:
        super().__init__(model, tokenizer, name, draft_vocab)
        self.cache: DynamicCache | None = None
        self._committed = 0  # cache slots holding committed tokens
        self._fed: list[int] = []  # tree nodes fed this round, in cache-slot order

    def _encode_list(self, tokens: list[int]) -> list[int]:
        return tokens if self.draft_vocab is None else self.draft_vocab.encode(torch.tensor(tokens)).tolist()

    def start(self, ids: list[int]) -> torch.Tensor:
        self.cache = new_kv_cache()
        self._committed, self._fed = len(ids), []
        return forward_chain(self.model, self.cache, self._encode_list(ids))

    def begin_tree(self) -> None:
        self._fed = []

    def expand(self, tree, depth, parent_rows, nodes):
        self._fed.extend(nodes)
        visible = tree.ancestor_mask()[nodes][:, self._fed]  # the root is in the cache, committed
        positions = [self._committed - 1 + tree.depths[i] for i in self._fed]
        return forward_tree(self.model, self.cache, self._encode_list([tree.tokens[i] for i in nodes]), positions,
                            visible)

    def advance(self, tree, path, tokens) -> Reading:
        slot = {node: self._committed + k for k, node in enumerate(self._fed)}
        kept = [i for i in path if i in slot]
        unfed = [tree.tokens[i] for i in path if i not in slot] + tokens
        keep_slots(self.cache, self._committed, [slot[i] for i in kept])
        self._committed += len(kept)
        leaf_fed_here = bool(path) and path[-1] not in slot
        logits = forward_chain(self.model, self.cache, self._encode_list(unfed), all_logits=len(unfed) > 1)
        self._committed += len(unfed)
        self._fed = []
        return Reading(logits[-1:], logits[-len(tokens) - 1:-len(tokens)] if leaf_fed_here else None)

    def state_bytes(self) -> int:
        return kv_bytes(self.cache) if self.cache is not None else 0

    def save(self) -> object:
        return self._committed  # the cache is cropped back on load

    def load(self, saved: object) -> None:
        self._committed = saved  # type: ignore[assignment]
        keep_slots(self.cache, self._committed, [])
        self._fed = []
