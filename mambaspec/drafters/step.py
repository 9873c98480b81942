"""``StepDrafter``: a drafter with a model that feeds a batch of frontier nodes per step (Mamba, Transformer,
EAGLE); ``growth.grow_tree`` turns its steps into trees.

The contract a subclass implements, by what each method returns:

- ``start(ids) -> logits``: read a new sequence's prompt; the logits (1, own width) of the token after it;
- ``begin_tree()``: remember whatever is needed to grow a tree from the committed text;
- ``expand(tree, depth, parent_rows, nodes) -> logits``: feed one depth's new nodes, one row of logits each;
- ``advance(tree, path, tokens) -> Reading``: move to the end of the accepted ``path`` of its own last tree and
  read ``tokens`` after it; the root logits after them and, when the last accepted node was first read here
  (it was never expanded), that node's logits, which rank the token after it (``committed_ranks``).

The base class owns the bookkeeping: commits are lazy (``commit`` only records what was accepted; the model
reads it when its next logits are needed, so rounds that draft nothing cost the drafter nothing and the
tokens they commit are read later in one multi-token forward). ``RewindableStep`` adds ``snapshot``/``restore``
from a subclass's ``save()``/``load(saved)`` of its own per-sequence state.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import NamedTuple, cast

import torch

from ..core.drafter import Drafter, DraftPlan, ReportsRanks, Rewindable
from ..core.sampling import GumbelNoise, SamplingConfig
from ..core.stats import sync
from ..core.tree import DraftTree
from .growth import grow_tree
from .vocab import Candidates, DraftVocab


def top_probability(scores: torch.Tensor) -> float:
    """max softmax(scores) without materialising the softmax."""
    return float(torch.exp(scores.max() - torch.logsumexp(scores.float(), dim=-1)))


class Reading(NamedTuple):
    """What a drafter's model read last: the logits (1, own width) of the token after the committed text, and
    those after the last accepted node of the round when that node was first read then (else None)."""

    root: torch.Tensor
    bonus: torch.Tensor | None = None


class StepDrafter(Drafter, ReportsRanks):
    """A drafter whose model feeds a batch of frontier nodes per step (see the module's contract)."""

    def __init__(self, model, tokenizer=None, name: str | None = None, draft_vocab: DraftVocab | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.draft_vocab = draft_vocab  # None: the drafter speaks the target's ids directly
        if name:
            self.name = name
        self._reading: Reading | None = None
        self._candidates: Candidates | None = None
        self._pending: tuple[DraftTree, list[int], list[int]] | None = None  # (tree, accepted path, tokens after)

    # -- the contract ----------------------------------------------------------------------------------------

    @abstractmethod
    def start(self, ids: list[int]) -> torch.Tensor:
        """Read a new sequence's prompt (every committed token); the logits (1, own width) of the next token."""

    @abstractmethod
    def begin_tree(self) -> None:
        """Remember whatever is needed to grow a tree from the committed text."""

    @abstractmethod
    def expand(self, tree: DraftTree, depth: int, parent_rows: list[int], nodes: list[int]) -> torch.Tensor:
        """Feed the new ``nodes`` (all at ``depth``; ``parent_rows[i]`` is the row of node i's parent
        among the nodes fed at the previous depth, the root being row 0 of depth 0); return their
        logits (own width), one row per node."""

    @abstractmethod
    def advance(self, tree: DraftTree, path: list[int], tokens: list[int]) -> Reading:
        """Move to the end of ``path`` in ``tree`` (this drafter's own last draft) and read ``tokens``."""

    # -- what the engine and the tree growers call ------------------------------------------------------------

    def prefill(self, ids: list[int]) -> None:
        self._pending = None
        self._reading = Reading(self.start(ids))

    @property
    def root_logits(self) -> torch.Tensor | None:
        """The model's logits for the token after the committed text (reads what is pending first)."""
        self.flush()
        return None if self._reading is None else self._reading.root

    def start_tree(self, tree: DraftTree) -> torch.Tensor:
        """The root logits of a new tree (``tree.read_s``: how long reading what was committed took, 0 if nothing was
        pending), then ``begin_tree``."""
        if self._pending is not None:  # (after the prefill, nothing is: no read to time)
            t0 = time.perf_counter()
            self.flush()
            sync(self.model.device)
            tree.read_s = time.perf_counter() - t0
        if self._reading is None:
            raise RuntimeError(f"{self.name}: a tree was asked for before the prompt was read (prefill)")
        self._reading = Reading(self._reading.root)  # the last round's bonus logits rank nothing in this one
        self.begin_tree()
        return self._reading.root

    def commit(self, tree: DraftTree, path: list[int], bonus: int) -> None:
        if self._pending is None:
            self._pending = (tree, list(path), [bonus])
        else:  # nothing was drafted since the last commit (a draft reads what is pending): a root-only tree
            self._pending[2].extend([tree.tokens[i] for i in path] + [bonus])

    def flush(self) -> None:
        """Read what was committed since the model last ran."""
        if self._pending is not None:
            tree, path, tokens = self._pending
            self._pending = None
            self._reading = self.advance(tree, path, tokens)

    @property
    def own_width(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    def bind(self, target_vocab_size: int) -> None:
        self._candidates = Candidates(self.draft_vocab, target_vocab_size, self.own_width)

    @property
    def candidates(self) -> Candidates:
        if self._candidates is None:  # used outside an engine: the vocabulary it was made for
            self.bind(self.draft_vocab.target_vocab_size if self.draft_vocab else self.own_width)
        return cast(Candidates, self._candidates)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Target ids -> the model's input ids."""
        return tokens if self.draft_vocab is None else self.draft_vocab.encode(tokens)

    def draft(self, root_token: int, plan: DraftPlan, sampling: SamplingConfig,
              generator: torch.Generator | GumbelNoise | None = None) -> DraftTree:
        return grow_tree(self, root_token, plan, sampling, generator)

    def committed_ranks(self, tree: DraftTree, path: list[int], tokens: list[int]
                        ) -> tuple[list[int], list[float]] | None:
        """A shape (N1, ..., Nγ) would have accepted the i-th token of the round exactly when its rank
        is below N_i, so these ranks replay the round for every other shape too (``core.bandit``).
        The lists stop where the tree holds no logits (a rank the round cannot tell)."""
        if tree.sampled:
            return None
        ranks, confidences = [], []
        cand = self.candidates
        for i, tok in enumerate(tokens):
            parent = path[i - 1] if i else 0
            row = tree.logits.get(parent)
            if row is None and i == len(path) > 0:  # the token after an accepted node that was not expanded
                self.flush()
                bonus = self._reading.bonus if self._reading is not None else None
                row = cand.scores(bonus[0]) if bonus is not None else None
            if row is None:
                break
            col = cand.column(tok)
            ranks.append(int((row > row[col]).sum()) if col is not None else row.numel())
            confidences.append(top_probability(row))
        return ranks, confidences

    def root_confidence(self) -> float | None:
        logits = self.root_logits
        return None if logits is None else top_probability(self.candidates.scores(logits[0]))


class RewindableStep(StepDrafter, Rewindable):
    """A step drafter that returns to an earlier point of its sequence: ``save()`` what ``load`` needs of its own
    per-sequence state (between rounds); the base keeps the root logits and what is pending."""

    @abstractmethod
    def save(self) -> object:
        """The subclass's per-sequence state now (everything committed has been read)."""

    @abstractmethod
    def load(self, saved: object) -> None:
        """Return to a state ``save`` returned earlier in this sequence."""

    def snapshot(self) -> object:
        self.flush()
        return self.save(), self._reading

    def restore(self, snap: object) -> None:
        saved, reading = cast("tuple[object, Reading | None]", snap)
        self.load(saved)
        self._pending, self._reading = None, reading
