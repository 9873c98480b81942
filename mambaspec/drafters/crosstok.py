"""Drafting across tokenizers: a drafter that speaks another tokenizer than the target's.

``CrossTokenizerDrafter`` wraps any drafter and translates through text, as HF transformers'
universal assisted generation does (``AssistedCandidateGeneratorDifferentTokenizers`` in
``transformers/generation/candidate_generator.py``; Timor et al. 2025, arXiv 2502.05202, SLEM):

- the committed target tokens are decoded, and the drafter's tokens follow that text: the last
  ``lookbehind`` drafter tokens are re-encoded together with the new text, the drafter rolls back
  to where the old and new tokenizations part and re-feeds the rest (a Mamba drafter restores a
  snapshot of its recurrent state, a Transformer drafter crops its KV cache);
- each drafted path is decoded to text and re-encoded with the target's tokenizer after a
  look-behind window of committed text, so that token boundaries line up with the target's;
  the paths are merged into a trie of target tokens, which the target verifies as usual.

Verification stays in the target's tokens, so greedy decoding is lossless whatever the drafts.
Sampling is refused: the drafter's probabilities are over its own tokens, and a sampled draft
needs the proposal probability of each target token (the intersection-vocabulary scheme of
arXiv 2502.05202 is not implemented).
"""

from __future__ import annotations

import math

import torch

from ..core.drafter import Composite, Drafter, DraftPlan, Rewindable
from ..core.sampling import SamplingConfig
from ..core.shape import MAX_TREE_NODES, TreeShape
from ..core.tree import DraftTree
from ..errors import MambaspecError

REPLACEMENT = "\ufffd"  # what a decoder prints for bytes that are not (yet) a whole character
MAX_CHAR_TOKENS = 4  # a UTF-8 character spans at most 4 byte tokens
CONTEXT_TOKENS = 16  # tokens decoded before a span, so that its text comes out as it reads in context
LOOKAHEAD = 1  # extra drafter tokens per path, so that its last target token is usually whole


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers give every token the same id (``None`` means: unknown, assume same)."""
    return a is None or b is None or a.get_vocab() == b.get_vocab()


class CrossTokenizerDrafter(Drafter, Composite):
    """Drafts in target tokens with an ``inner`` drafter that speaks its own tokenizer (greedy only)."""

    def __init__(self, inner: Drafter, target_tokenizer, lookbehind: int = 8, window_chars: int = 64,
                 name: str | None = None) -> None:
        if inner.tokenizer is None or target_tokenizer is None:
            raise MambaspecError(f"cross-tokenizer drafting needs the tokenizers of both drafter '{inner.name}' "
                                 f"and target; load them with the models")
        self.tokenizer = target_tokenizer
        self.name = name or f"{inner.name}+xtok"
        self.inner = inner
        inner.bind(len(inner.tokenizer))  # the inner drafter proposes ids of its own tokenizer
        self.lookbehind = lookbehind
        self.window_chars = window_chars
        self._tids: list[int] = []  # committed target tokens
        self._settled = 0  # how many of them are in self._text (the rest end inside a character)
        self._text = ""  # the committed text
        self._dids: list[int] = []  # the drafter's tokens for that text, all consumed by the inner drafter
        self._fixed = 0  # leading special tokens of the drafter's prompt, never re-encoded
        self._snaps: list[tuple[int, object]] = []  # (drafter tokens consumed, inner state there)

    @property
    def text(self) -> str:
        """The committed text (what the drafter's tokens spell)."""
        return self._text

    @property
    def settled(self) -> int:
        """How many committed target tokens ``text`` holds (the rest end inside a character)."""
        return self._settled

    @property
    def drafter_ids(self) -> list[int]:
        """The drafter's tokens for the committed text (a copy)."""
        return list(self._dids)

    def prefill(self, ids: list[int]) -> None:
        self._tids, self._settled, self._text = list(ids), 0, ""
        self._settle()
        tok = self.inner.tokenizer
        dids = tok(self._text, add_special_tokens=True)["input_ids"]
        if not dids:  # nothing but special tokens so far: start from the drafter's own BOS/EOS
            dids = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
        special = set(tok.all_special_ids)
        self._fixed = next((i for i, t in enumerate(dids) if t not in special), len(dids))
        self._dids, self._snaps = dids, []
        self._rewind_and_feed(0)

    def draft(self, root_token: int, plan: DraftPlan, sampling: SamplingConfig,
              generator: torch.Generator | None = None) -> DraftTree:
        if not sampling.greedy:
            raise MambaspecError(
                f"cross-tokenizer drafting (drafter '{self.inner.name}' through text) is greedy only: the drafter's "
                f"probabilities are over its own tokens, so sampled drafts cannot be verified losslessly; "
                f"decode greedily (temperature 0), or use a drafter with the target's tokenizer")
        # a dynamic plan: the chain length that pays at this acceptance
        shape = plan if isinstance(plan, TreeShape) else plan.chain()
        if shape.depth == 0 or self._settled < len(self._tids):  # a character is half-written: no text to extend
            return DraftTree.root_only(root_token)
        inner_tree = self.inner.draft(self._dids[-1], self._inner_shape(shape), sampling, generator)
        context = self._dids[-CONTEXT_TOKENS:]
        window = self._text[-self.window_chars:]
        window_ids = _encode(self.tokenizer, window)
        paths = []
        for leaf in range(1, len(inner_tree)):
            if inner_tree.children(leaf):
                continue
            tokens = [inner_tree.tokens[i] for i in inner_tree.path_to(leaf)]
            text = _text_after(self.inner.tokenizer, context, tokens).rstrip(REPLACEMENT)
            if not text:
                continue
            ids = _encode(self.tokenizer, window + text)
            if ids[: len(window_ids)] == window_ids:
                paths.append(ids[len(window_ids):][: shape.depth])
            else:  # the text merges with the last committed token: continue from that token as it is
                paths.append(_encode(self.tokenizer, text)[: shape.depth])
        tree = _trie(root_token, paths, shape.num_nodes)
        tree.steps, tree.read_s = inner_tree.steps, inner_tree.read_s  # what the dynamic policy's cost model times
        return tree

    def commit(self, tree: DraftTree, path: list[int], bonus: int) -> None:
        self._tids += [tree.tokens[i] for i in path] + [bonus]
        new_text = self._settle()
        if new_text:
            self._follow(new_text)
        else:
            self._rewind_and_feed(len(self._dids))

    def state_bytes(self) -> int:
        return self.inner.state_bytes()

    @property
    def parts(self) -> list[Drafter]:
        return [self.inner]

    def _settle(self) -> str:
        """Append the text of the committed target tokens to ``self._text``; return what was added.

        Trailing tokens that end inside a character wait (up to ``MAX_CHAR_TOKENS`` of them)."""
        pending = self._tids[self._settled:]
        context = self._tids[max(0, self._settled - CONTEXT_TOKENS):self._settled]
        for k in range(len(pending), max(len(pending) - MAX_CHAR_TOKENS, 0), -1):
            text = _text_after(self.tokenizer, context, pending[:k])
            if not text.endswith(REPLACEMENT):
                break
        else:  # no whole character yet: wait, unless these bytes can no longer become one
            if len(pending) < MAX_CHAR_TOKENS:
                return ""
            k, text = len(pending), _text_after(self.tokenizer, context, pending)
        self._settled += k
        self._text += text
        return text

    def _follow(self, new_text: str) -> None:
        """Bring the drafter's tokens up to the committed text, re-encoding the last few with ``new_text``."""
        d, tok = self._dids, self.inner.tokenizer
        start = max(self._fixed, len(d) - self.lookbehind)
        while True:  # back off to a cut between whole characters
            context = d[max(0, start - CONTEXT_TOKENS):start]
            tail = _text_after(tok, context, d[start:])
            whole = not (tail.startswith(REPLACEMENT) or _decode(tok, context).endswith(REPLACEMENT))
            if whole or start == self._fixed:
                break
            start -= 1
        ids = _encode(tok, tail + new_text)
        same = next((i for i, (a, b) in enumerate(zip(ids, d[start:])) if a != b), min(len(ids), len(d) - start))
        del d[start + same:]
        d += ids[same:]
        self._rewind_and_feed(start + same)

    def _rewind_and_feed(self, keep: int) -> None:
        """Return the inner drafter to its state after ``self._dids[:keep]`` (the latest snapshot at or before
        it, dropping a pending draft) and feed it the rest of ``self._dids``."""
        while self._snaps and self._snaps[-1][0] > keep:
            self._snaps.pop()
        if self._snaps and self._snaps[-1][1] is not None:
            pos, snap = self._snaps[-1]
            self.inner.restore(snap)
            feed = self._dids[pos:]
            if feed:  # fed as a chain all of whose drafts were accepted: the last token is the bonus
                chain = DraftTree.root_only(self._dids[pos - 1])
                for tok in feed[:-1]:
                    chain.add(tok, len(chain) - 1)
                self.inner.commit(chain, list(range(1, len(feed))), feed[-1])
        else:  # a drafter that cannot be rolled back reads the whole text again
            self.inner.prefill(self._dids)
            self._snaps = []
        if not self._snaps or self._snaps[-1][0] < len(self._dids):
            snap = self.inner.snapshot() if isinstance(self.inner, Rewindable) else None
            self._snaps.append((len(self._dids), snap))
        del self._snaps[: -(self.lookbehind + MAX_CHAR_TOKENS)]

    def _inner_shape(self, shape: TreeShape) -> TreeShape:
        """``shape`` deepened by chains so that its paths cover ``shape.depth`` target tokens plus a little."""
        ratio = min(max(len(self._dids) / len(self._tids), 0.5), 4.0)  # drafter tokens per target token
        extra = max(math.ceil(shape.depth * ratio) + LOOKAHEAD - shape.depth, 0)
        leaves = math.prod(shape.branching)
        extra = min(extra, (MAX_TREE_NODES - shape.num_nodes) // leaves)
        return TreeShape(shape.branching + (1,) * extra)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _text_after(tokenizer, context: list[int], ids: list[int]) -> str:
    """The text ``ids`` add after ``context``: a decode difference, so that decoders which strip a leading
    space or join bytes into characters give the text as it reads in context."""
    before, after = _decode(tokenizer, context), _decode(tokenizer, context + ids)
    return after[len(before):] if after.startswith(before) else _decode(tokenizer, ids)


def _trie(root: int, paths: list[list[int]], max_nodes: int) -> DraftTree:
    """A draft tree (flat, BFS) holding ``paths`` below ``root``, shared prefixes merged, at most
    ``max_nodes`` nodes (earlier paths first)."""
    trie: dict[int, dict] = {}
    count = 0
    for path in paths:
        level = trie
        for tok in path:
            if tok not in level:
                if count == max_nodes:
                    break
                level[tok] = {}
                count += 1
            level = level[tok]
    tree = DraftTree.root_only(root)
    frontier = [(0, trie)]
    while frontier:
        nxt = []
        for node, children in frontier:
            for tok, below in children.items():
                nxt.append((tree.add(tok, node), below))
        frontier = nxt
    return tree
