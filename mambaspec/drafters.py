"""Drafters: one interface, interchangeable implementations.

A drafter follows the committed text. ``prefill`` feeds the prompt; ``draft`` grows a tree of
candidate tokens below the last committed token; ``commit`` moves the drafter to the accepted
path and feeds the bonus token, so the next ``draft`` starts from the new committed text.

- ``MambaDrafter``: transformers' Mamba / Mamba2. Branching is done by replicating the fixed-
  size recurrent state along the batch (Mamba Drafters, arXiv 2506.01206, §3.2): each depth of
  the tree is ONE batched single-token step; the state after every drafted depth is kept, so
  the state at the accepted node is reused without recomputation.
- ``TransformerDrafter``: any causal LM with a KV cache; each depth is one forward over the new
  frontier with a tree mask, and the rejected entries are dropped from its cache.
- ``NoDrafter``: drafts nothing; the same loop then is plain target decoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .kv import forward_chain, forward_tree, keep_slots, kv_bytes, new_kv_cache
from .mamba_step import mamba2_step, supports_fast_step
from .sampling import SamplingConfig, warp
from .tree import DraftTree, TreeShape
from .vocab import DraftVocab

MAMBA_TYPES = ("mamba", "mamba2")
FAST_STEP_MAX_TOKENS = 8  # a commit of up to this many tokens runs as fast single steps (else the chunked scan)


def pick_children(
    logits: torch.Tensor, n: int, sampling: SamplingConfig, generator: torch.Generator | None
) -> tuple[list[list[int]], torch.Tensor | None]:
    """``n`` children per row of ``logits``: top-n when greedy, else drawn from q without replacement.

    Returns the children per row and, when sampling, q (one row per parent). A row whose q has
    fewer than ``n`` tokens with non-zero probability gets only those.
    """
    if sampling.greedy:
        return torch.topk(logits, n, dim=-1).indices.tolist(), None
    q = warp(logits, sampling)
    support = (q > 0).sum(dim=-1)
    if bool((support >= n).all()):
        kids = torch.multinomial(q, n, replacement=False, generator=generator).tolist()
    else:
        kids = [torch.multinomial(row, min(n, int(s)), replacement=False, generator=generator).tolist()
                for row, s in zip(q, support)]
    return kids, q


def _top_probability(logits: torch.Tensor) -> float:
    """max softmax(logits) without materialising the softmax."""
    return float(torch.exp(logits.max() - torch.logsumexp(logits, dim=-1)))


class Drafter(ABC):
    """Proposes a tree of draft tokens after the committed text."""

    name: str = "drafter"

    def __init__(self, model=None, tokenizer=None, name: str | None = None,
                 draft_vocab: DraftVocab | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.draft_vocab = draft_vocab  # None: the drafter speaks the target's ids directly
        if name:
            self.name = name
        self._root_logits: torch.Tensor | None = None  # (1, V): drafter's logits after the committed text
        self._bonus_logits: torch.Tensor | None = None  # (1, V): set by commit when it fed the accepted leaf
        self.vocab_size: int | None = None  # the target's vocabulary width; set by the engine

    @abstractmethod
    def prefill(self, ids: list[int]) -> None:
        """Start a new sequence: consume the prompt (every committed token so far)."""

    @abstractmethod
    def _begin_tree(self) -> None:
        """Remember whatever is needed to grow a tree from the committed text."""

    @abstractmethod
    def _expand(self, tree: DraftTree, depth: int, parent_rows: list[int], nodes: list[int]) -> torch.Tensor:
        """Feed the new ``nodes`` (all at ``depth``; ``parent_rows[i]`` is the row of node i's parent
        in the previous frontier); return their logits, one row per node."""

    @abstractmethod
    def commit(self, tree: DraftTree, path: list[int], bonus: int) -> None:
        """Move to the end of the accepted ``path`` (flat node indices) and feed ``bonus``."""

    @abstractmethod
    def state_bytes(self) -> int:
        """Bytes of the drafter's per-sequence state (recurrent state or KV cache) right now."""

    def snapshot(self) -> object | None:
        """What ``restore`` needs to return the drafter to where it is now (between rounds);
        None when it cannot be rolled back (then it is prefilled again)."""
        return None

    def restore(self, snap: object) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be rolled back")

    def draft(
        self,
        root_token: int,
        shape: TreeShape,
        sampling: SamplingConfig,
        generator: torch.Generator | None = None,
    ) -> DraftTree:
        """Grow a tree of ``shape`` below ``root_token`` (the last committed token), depth by depth."""
        tree = DraftTree.root_only(root_token)
        self._bonus_logits = None
        if not sampling.greedy:
            tree.q_by_depth = []
        else:
            tree.logits_by_depth = [self._fit_vocab(self._root_logits)]
        if shape.depth == 0:
            return tree
        self._begin_tree()
        logits, frontier = self._root_logits, [0]
        for depth, n in enumerate(shape.branching, start=1):
            fitted = tree.logits_by_depth[depth - 1] if sampling.greedy else self._fit_vocab(logits)
            kids, q = pick_children(fitted, n, sampling, generator)
            if q is not None:
                tree.q_by_depth.append(q)
            nodes, parent_rows = [], []
            for row, (parent, tokens) in enumerate(zip(frontier, kids)):
                for tok in tokens:
                    tree.tokens.append(tok)
                    tree.parents.append(parent)
                    tree.depths.append(depth)
                    nodes.append(len(tree.tokens) - 1)
                    parent_rows.append(row)
            if depth < shape.depth:
                logits = self._expand(tree, depth, parent_rows, nodes)
                if sampling.greedy:
                    tree.logits_by_depth.append(self._fit_vocab(logits))
            frontier = nodes
        return tree

    def committed_ranks(self, tree: DraftTree, path: list[int], tokens: list[int]
                        ) -> tuple[list[int], list[float]] | None:
        """For each token committed by a greedy round: the drafter's rank of it (0 = its first choice)
        given the committed text before it, and the drafter's top-1 probability there. None when
        the tree does not carry the drafter's logits.

        A shape (N1, ..., Nγ) would have accepted the i-th token exactly when its rank is below N_i,
        so these ranks replay the round for every other shape too (``bandit``). The rank of the bonus
        after a fully accepted tree needs the leaf's logits, which ``commit`` computes; the lists stop
        short when they are missing (the round was not committed).
        """
        if tree.logits_by_depth is None:
            return None
        ranks, confidences = [], []
        for i, tok in enumerate(tokens):
            if i < len(tree.logits_by_depth):
                parent = path[i - 1] if i else 0
                row = tree.logits_by_depth[i][parent - tree.depth_offset(i)]
            elif i == tree.depth and self._bonus_logits is not None:
                row = self._fit_vocab(self._bonus_logits)[0]
            else:
                break
            ranks.append(int((row > row[tok]).sum()))
            confidences.append(_top_probability(row))
        return ranks, confidences

    def root_confidence(self) -> float | None:
        """The drafter's top-1 probability for the next token (None before a prefill or when unknown)."""
        if self._root_logits is None:
            return None
        return _top_probability(self._fit_vocab(self._root_logits)[0])

    def _encode(self, tokens: list[int]) -> list[int]:
        """Target ids -> the drafter's input ids."""
        if self.draft_vocab is None:
            return tokens
        return self.draft_vocab.encode(torch.tensor(tokens)).tolist()

    def _fit_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """The drafter's logits over the target's vocabulary (mapped, cut or padded with -inf)."""
        v = self.vocab_size
        if self.draft_vocab is not None:
            return self.draft_vocab.logits_to_target(logits, v)
        if v is None or logits.shape[-1] == v:
            return logits
        if logits.shape[-1] > v:
            return logits[..., :v]
        pad = logits.new_full((*logits.shape[:-1], v - logits.shape[-1]), float("-inf"))
        return torch.cat([logits, pad], dim=-1)


class NoDrafter(Drafter):
    """Drafts nothing: every round verifies the root alone, i.e. plain autoregressive decoding."""

    name = "none"

    def prefill(self, ids: list[int]) -> None:
        pass

    def draft(self, root_token, shape, sampling, generator=None) -> DraftTree:
        tree = DraftTree.root_only(root_token)
        if not sampling.greedy:
            tree.q_by_depth = []
        return tree

    def _begin_tree(self) -> None:
        pass

    def _expand(self, tree, depth, parent_rows, nodes):
        raise AssertionError("NoDrafter never expands")

    def commit(self, tree, path, bonus) -> None:
        pass

    def state_bytes(self) -> int:
        return 0


@dataclass
class MambaState:
    """The recurrent state of every layer: conv window and SSM state, batch along dim 0."""

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]

    @classmethod
    def read(cls, cache: DynamicCache) -> MambaState:
        return cls([layer.conv_states[0] for layer in cache.layers],
                   [layer.recurrent_states[0] for layer in cache.layers])

    def install(self, cache: DynamicCache) -> None:
        """Make ``cache`` run from this state (the next step updates these tensors in place)."""
        for layer, conv, ssm in zip(cache.layers, self.conv, self.ssm):
            layer.conv_states[0] = conv
            layer.recurrent_states[0] = ssm

    def select(self, rows: list[int] | torch.Tensor) -> MambaState:
        """A new state whose batch row i is a copy of row ``rows[i]`` (replicates or picks)."""
        idx = torch.as_tensor(rows, device=self.conv[0].device)
        return MambaState([c.index_select(0, idx) for c in self.conv], [s.index_select(0, idx) for s in self.ssm])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.conv, *self.ssm))


class MambaDrafter(Drafter):
    """A Mamba or Mamba2 drafter; no KV cache, a fixed-size state per sequence."""

    name = "mamba"

    def __init__(self, model, tokenizer=None, name: str | None = None, draft_vocab: DraftVocab | None = None) -> None:
        super().__init__(model, tokenizer, name, draft_vocab)
        if model.config.model_type not in MAMBA_TYPES:
            raise ValueError(f"MambaDrafter needs a Mamba model, got {model.config.model_type}")
        # Mamba1 in transformers restarts its scan from zero when fed several tokens after a
        # prefill (design.md §3), so it is fed one token at a time; Mamba2 continues exactly.
        self.multi_token_steps = model.config.model_type == "mamba2"
        # Mamba2 steps after the prefill run through mamba_step.mamba2_step (same recurrence, no module overhead)
        self.fast_steps = supports_fast_step(model)
        self.cache: DynamicCache | None = None
        self.state: MambaState | None = None  # after the committed text, batch 1
        self._depth_states: list[MambaState] = []  # [d] = after feeding each frontier node at depth d

    @torch.inference_mode()
    def _run(self, state: MambaState | None, tokens: torch.Tensor, n_logits: int = 1
             ) -> tuple[torch.Tensor, MambaState]:
        """Feed ``tokens`` (B, L) from ``state`` (None = empty); the logits of the last ``n_logits``
        positions (B, n_logits, V) and the new state."""
        if self.draft_vocab is not None:
            tokens = self.draft_vocab.encode(tokens)
        kept: list[torch.Tensor] = []  # (B, positions, V) per step
        if state is not None and self.fast_steps and tokens.shape[1] <= FAST_STEP_MAX_TOKENS:
            conv, ssm = state.conv, state.ssm
            for column in tokens.unbind(1):
                logits, conv, ssm = mamba2_step(self.model, conv, ssm, column)
                kept.append(logits[:, None])
            return torch.cat(kept[-n_logits:], dim=1), MambaState(conv, ssm)
        if state is None:
            self.cache = DynamicCache(config=self.model.config)
        else:
            state.install(self.cache)
        steps = [tokens] if (state is None or self.multi_token_steps) else tokens.split(1, dim=1)
        for chunk in steps:
            out = self.model(input_ids=chunk, cache=self.cache, use_cache=True, logits_to_keep=n_logits)
            kept.append(out.logits.float())
        return torch.cat(kept, dim=1)[:, -n_logits:], MambaState.read(self.cache)

    def prefill(self, ids: list[int]) -> None:
        logits, self.state = self._run(None, torch.tensor([ids], device=self.model.device))
        self._root_logits = logits[:, -1]

    def _begin_tree(self) -> None:
        self._depth_states = [self.state]

    def _expand(self, tree, depth, parent_rows, nodes):
        state = self._depth_states[depth - 1].select(parent_rows)
        tokens = torch.tensor([[tree.tokens[i]] for i in nodes], device=self.model.device)
        logits, state = self._run(state, tokens)
        self._depth_states.append(state)
        return logits[:, -1]

    def commit(self, tree, path, bonus) -> None:
        fed_depth = len(self._depth_states) - 1 if tree.depth else 0  # deepest depth whose state is kept
        fed = [i for i in path if tree.depths[i] <= fed_depth]
        unfed = [tree.tokens[i] for i in path if tree.depths[i] > fed_depth] + [bonus]
        if not fed:
            state = self.state
        else:
            d = tree.depths[fed[-1]]
            state = self._depth_states[d].select([fed[-1] - tree.depth_offset(d)])
        if state is self.state:
            state = state.select([0])  # the next step updates in place; keep self.state intact
        logits, self.state = self._run(state, torch.tensor([unfed], device=self.model.device), min(len(unfed), 2))
        self._root_logits = logits[:, -1]
        # the accepted leaf was fed here: its logits rank the bonus (committed_ranks)
        self._bonus_logits = logits[:, 0] if len(unfed) > 1 and len(path) == tree.depth > 0 else None
        self._depth_states = []

    def state_bytes(self) -> int:
        return self.state.nbytes if self.state is not None else 0

    def snapshot(self) -> object:
        # cheap: state tensors are never updated in place once stepped past (each step runs on a copy)
        return self.state, self._root_logits

    def restore(self, snap: object) -> None:
        self.state, self._root_logits = snap
        self._depth_states = []


class TransformerDrafter(Drafter):
    """Any causal LM with a KV cache; trees through a tree attention mask."""

    name = "transformer"

    def __init__(self, model, tokenizer=None, name: str | None = None, draft_vocab: DraftVocab | None = None) -> None:
        super().__init__(model, tokenizer, name, draft_vocab)
        self.cache: DynamicCache | None = None
        self._committed = 0  # cache slots holding committed tokens
        self._fed: list[int] = []  # tree nodes fed this round, in cache-slot order

    def prefill(self, ids: list[int]) -> None:
        self.cache = new_kv_cache()
        self._root_logits = forward_chain(self.model, self.cache, self._encode(ids))
        self._committed = len(ids)

    def _begin_tree(self) -> None:
        self._fed = []

    def _expand(self, tree, depth, parent_rows, nodes):
        self._fed.extend(nodes)
        visible = tree.ancestor_mask()[nodes][:, self._fed]  # the root is in the cache, committed
        positions = [self._committed - 1 + tree.depths[i] for i in self._fed]
        return forward_tree(self.model, self.cache, self._encode([tree.tokens[i] for i in nodes]), positions, visible)

    def commit(self, tree, path, bonus) -> None:
        slot = {node: self._committed + k for k, node in enumerate(self._fed)}
        kept = [i for i in path if i in slot]
        unfed = [tree.tokens[i] for i in path if i not in slot] + [bonus]
        keep_slots(self.cache, self._committed, [slot[i] for i in kept])
        self._committed += len(kept)
        logits = forward_chain(self.model, self.cache, self._encode(unfed), all_logits=len(unfed) > 1)
        self._root_logits = logits[-1:]
        self._bonus_logits = logits[-2:-1] if len(unfed) > 1 and len(path) == tree.depth > 0 else None
        self._committed += len(unfed)
        self._fed = []

    def state_bytes(self) -> int:
        return kv_bytes(self.cache) if self.cache is not None else 0

    def snapshot(self) -> object:
        return self._committed, self._root_logits  # the cache is cropped back on restore

    def restore(self, snap: object) -> None:
        self._committed, self._root_logits = snap
        keep_slots(self.cache, self._committed, [])
        self._fed = []


def make_drafter(model, tokenizer=None, name: str | None = None, draft_vocab: DraftVocab | None = None) -> Drafter:
    """The drafter class that fits ``model`` (Mamba/Mamba2 or any other causal LM)."""
    if model is None:
        return NoDrafter()
    cls = MambaDrafter if model.config.model_type in MAMBA_TYPES else TransformerDrafter
    return cls(model, tokenizer, name, draft_vocab)
