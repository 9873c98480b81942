"""Growing draft trees one batched drafter step per depth: what Mamba, Transformer and EAGLE drafters share.

``StepDrafter`` is a drafter that can feed a batch of frontier nodes at once and return their
next-token logits (``expand``). ``grow_tree`` turns that into a tree:

- a fixed ``TreeShape`` (N1, ..., Nγ): every frontier node at depth i gets its N_i best (greedy)
  or N_i drawn (sampling, without replacement) children (Mamba Drafters, arXiv 2506.01206, §3.2);
- a dynamic plan (``core.dynamic.DynamicPlan``): children by path probability up to a node
  budget (see ``grow_dynamic``).

The drafter's logits stay in its own columns (a draft vocabulary of K tokens, ``vocab.Candidates``);
only sampled trees carry a target-width distribution q, which verification needs.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from ..core.sampling import SamplingConfig, warp
from ..core.shape import TreeShape
from ..core.tree import DraftTree
from .base import Drafter, ReportsRanks, Rewindable
from .vocab import Candidates, DraftVocab


def pick_children(scores: torch.Tensor, n: int, sampling: SamplingConfig, generator: torch.Generator | None
                  ) -> tuple[list[list[int]], list[list[float]], torch.Tensor]:
    """``n`` children per row of ``scores`` (B, C): top-n when greedy, else drawn from q without replacement.

    Returns the children's columns per row, their drafter probabilities, and the distribution per row
    (softmax when greedy, q when sampling). A row whose q has fewer than ``n`` tokens with non-zero
    probability gets only those.
    """
    if sampling.greedy:
        probs = torch.softmax(scores.float(), dim=-1)
        top = torch.topk(scores, n, dim=-1).indices
        return top.tolist(), probs.gather(-1, top).tolist(), probs
    q = warp(scores, sampling)
    support = (q > 0).sum(dim=-1)
    if bool((support >= n).all()):
        kids = torch.multinomial(q, n, replacement=False, generator=generator).tolist()
    else:
        kids = [torch.multinomial(row, min(n, int(s)), replacement=False, generator=generator).tolist()
                for row, s in zip(q, support)]
    return kids, [[float(q[r, c]) for c in row] for r, row in enumerate(kids)], q


def top_probability(scores: torch.Tensor) -> float:
    """max softmax(scores) without materialising the softmax."""
    return float(torch.exp(scores.max() - torch.logsumexp(scores.float(), dim=-1)))


class StepDrafter(Drafter, ReportsRanks, Rewindable):
    """A drafter with a model that feeds a batch of frontier nodes per step (Mamba, Transformer, EAGLE).

    Subclasses keep ``self.root_logits`` (1, own width): the model's logits after the committed
    text, and ``self.bonus_logits``: set by ``commit`` when it fed the accepted leaf (the leaf's
    logits rank the bonus token).
    """

    def __init__(self, model, tokenizer=None, name: str | None = None, draft_vocab: DraftVocab | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.draft_vocab = draft_vocab  # None: the drafter speaks the target's ids directly
        if name:
            self.name = name
        self.root_logits: torch.Tensor | None = None
        self.bonus_logits: torch.Tensor | None = None
        self._candidates: Candidates | None = None

    @property
    def own_width(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    def bind(self, target_vocab_size: int) -> None:
        self._candidates = Candidates(self.draft_vocab, target_vocab_size, self.own_width)

    @property
    def candidates(self) -> Candidates:
        if self._candidates is None:  # used outside an engine: the vocabulary it was made for
            self.bind(self.draft_vocab.target_vocab_size if self.draft_vocab else self.own_width)
        return self._candidates

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Target ids -> the model's input ids."""
        return tokens if self.draft_vocab is None else self.draft_vocab.encode(tokens)

    def draft(self, root_token: int, plan, sampling: SamplingConfig,
              generator: torch.Generator | None = None) -> DraftTree:
        return grow_tree(self, root_token, plan, sampling, generator)

    @abstractmethod
    def begin_tree(self) -> None:
        """Remember whatever is needed to grow a tree from the committed text."""

    @abstractmethod
    def expand(self, tree: DraftTree, depth: int, parent_rows: list[int], nodes: list[int]) -> torch.Tensor:
        """Feed the new ``nodes`` (all at ``depth``; ``parent_rows[i]`` is the row of node i's parent
        among the nodes fed at the previous depth, the root being row 0 of depth 0); return their
        logits (own width), one row per node."""

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
            if row is None and i == len(path) == tree.depth > 0 and self.bonus_logits is not None:
                row = cand.scores(self.bonus_logits[0])
            if row is None:
                break
            col = cand.column(tok)
            ranks.append(int((row > row[col]).sum()) if col is not None else row.numel())
            confidences.append(top_probability(row))
        return ranks, confidences

    def root_confidence(self) -> float | None:
        if self.root_logits is None:
            return None
        return top_probability(self.candidates.scores(self.root_logits[0]))


def grow_tree(drafter: StepDrafter, root_token: int, plan, sampling: SamplingConfig,
              generator: torch.Generator | None = None) -> DraftTree:
    """A draft tree below ``root_token`` as ``plan`` says (a ``TreeShape`` or a dynamic plan)."""
    if isinstance(plan, TreeShape):
        return grow_fixed(drafter, root_token, plan, sampling, generator)
    return plan.grow(drafter, root_token, sampling, generator)


def add_children(tree: DraftTree, drafter: StepDrafter, frontier: list[int], scores: torch.Tensor,
                 kids: list[list[int]], probs: list[list[float]], dist: torch.Tensor
                 ) -> tuple[list[int], list[int]]:
    """Append ``kids[r]`` (columns) below frontier node ``frontier[r]``; record each parent's logits
    (greedy) or q (sampled). Returns the new nodes and the row of each one's parent."""
    cand = drafter.candidates
    if tree.sampled:
        q_target = cand.to_target_width(dist)
    nodes, parent_rows = [], []
    for row, parent in enumerate(frontier):
        if tree.sampled:
            tree.q[parent] = q_target[row]
        else:
            tree.logits[parent] = scores[row]
        for tok, p in zip(cand.target_ids(kids[row]), probs[row]):
            nodes.append(tree.add(tok, parent, prob=p))
            parent_rows.append(row)
    return nodes, parent_rows


def grow_fixed(drafter: StepDrafter, root_token: int, shape: TreeShape, sampling: SamplingConfig,
               generator: torch.Generator | None = None) -> DraftTree:
    """Every frontier node at depth i gets ``shape.branching[i-1]`` children; one batched step per depth."""
    tree = DraftTree.root_only(root_token, sampled=not sampling.greedy)
    scores = drafter.candidates.scores(drafter.root_logits)
    drafter.bonus_logits = None
    if shape.depth == 0:
        if not tree.sampled:
            tree.logits[0] = scores[0]
        return tree
    drafter.begin_tree()
    frontier = [0]
    for depth, n in enumerate(shape.branching, start=1):
        kids, probs, dist = pick_children(scores, n, sampling, generator)
        nodes, parent_rows = add_children(tree, drafter, frontier, scores, kids, probs, dist)
        if depth < shape.depth:
            scores = drafter.candidates.scores(drafter.expand(tree, depth, parent_rows, nodes))
        frontier = nodes
    return tree
