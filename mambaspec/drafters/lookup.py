"""Copying what is already there: a lookup drafter over the prompt and the tokens generated so far.

``SuffixIndex`` keeps, for every n-gram (n = 1..``max_n``) of the sequence, where it occurred; each
committed token costs ``max_n`` dictionary appends (amortised O(1)). ``continuations`` takes the
longest n-gram ending the sequence that occurred before, and returns what followed its most recent
occurrences, grouped into branches by their first token, with how many occurrences agree (prompt
lookup decoding, Saxena 2023; SuffixDecoding, arXiv 2411.04975, which also indexes earlier outputs).

``LookupDrafter`` proposes those continuations as deterministic draft chains (q = one-hot: with
sampling each is accepted with probability p(token), ``core.verify``). With ``global_index`` it also
indexes the outputs of earlier generations in the same process and falls back to them when the
current sequence has no match. ``forced`` lets a model drafter merge the chains into its own tree
(``drafters.hybrid``).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ..core.drafter import Drafter, DraftPlan
from ..core.sampling import SamplingConfig
from ..core.shape import TreeShape
from ..core.tree import DraftTree

MAX_SCAN = 32  # occurrences of an n-gram looked at (the most recent)


class SuffixIndex:
    def __init__(self, max_n: int = 4) -> None:
        self.max_n = max_n
        self.tokens: list[int] = []
        self.table: dict[tuple[int, ...], list[int]] = defaultdict(list)  # n-gram -> positions right after it

    def extend(self, tokens: list[int]) -> None:
        for tok in tokens:
            self.tokens.append(tok)
            end = len(self.tokens)
            for n in range(1, min(self.max_n, end) + 1):
                self.table[tuple(self.tokens[end - n:end])].append(end)

    def continuations(self, suffix: list[int], length: int, branches: int, min_n: int = 1
                      ) -> list[tuple[list[int], int, float]]:
        """Up to ``branches`` continuations of ``suffix`` (its longest n-gram that occurred, n >= ``min_n``):
        ``(tokens, n, agreement)`` where agreement is the share of occurrences that begin that way."""
        for n in range(min(self.max_n, len(suffix)), min_n - 1, -1):
            ends = [e for e in self.table.get(tuple(suffix[len(suffix) - n:]), ()) if e < len(self.tokens)]
            if ends:
                break
        else:
            return []
        ends = ends[-MAX_SCAN:][::-1]  # most recent first
        first = Counter(self.tokens[e] for e in ends)
        out = []
        for tok, count in sorted(first.items(), key=lambda kv: -kv[1])[:branches]:
            e = next(e for e in ends if self.tokens[e] == tok)  # the most recent occurrence of this branch
            out.append((self.tokens[e:e + length], n, count / len(ends)))
        return out


def agreement_bucket(share: float) -> float:
    """Coarse agreement for calibration: 1.0 (all occurrences agree), 0.5 (most) or 0.25."""
    return 1.0 if share >= 0.999 else 0.5 if share >= 0.5 else 0.25


class LookupDrafter(Drafter):
    """Draft chains copied from earlier in the text (and, with ``global_index``, from earlier outputs)."""

    name = "lookup"

    def __init__(self, max_n: int = 4, max_tokens: int = 8, branches: int = 2, global_index: bool = False) -> None:
        self.max_n, self.max_tokens, self.branches = max_n, max_tokens, branches
        self.index = SuffixIndex(max_n)
        self.past = SuffixIndex(max_n) if global_index else None  # earlier generations' outputs
        self._generated: list[int] = []
        self._chains: list[tuple[list[int], tuple]] = []

    def prefill(self, ids: list[int]) -> None:
        if self.past is not None and self._generated:
            self.past.extend(self._generated + [-1])  # -1: no match runs across two generations
        self.index = SuffixIndex(self.max_n)
        self.index.extend(ids)
        self._generated = []

    def commit(self, tree: DraftTree, path: list[int], bonus: int) -> None:
        new = [tree.tokens[i] for i in path] + [bonus]
        self.index.extend(new)
        self._generated += new

    def state_bytes(self) -> int:
        return 8 * (len(self.index.tokens) + sum(len(v) for v in self.index.table.values()))

    def propose(self, length: int) -> list[tuple[list[int], tuple]]:
        """The chains to draft now, each with its feature ``(match length, agreement bucket)``."""
        suffix = self.index.tokens[-self.max_n:]
        found = self.index.continuations(suffix, length, self.branches)
        if not found and self.past is not None:
            found = self.past.continuations(suffix, length, self.branches, min_n=2)
        return [(tokens, (min(n, self.max_n), agreement_bucket(share))) for tokens, n, share in found if tokens]

    def start(self, plan: DraftPlan) -> int:
        """Compute this round's chains (``forced`` then reads them): as deep as a fixed shape or ``max_tokens``,
        whichever is deeper (a dynamic plan: ``max_tokens``). Returns that depth; 0 (and no chains computed) when
        the plan is to draft nothing."""
        if isinstance(plan, TreeShape) and plan.depth == 0:
            return 0
        depth = max(plan.depth, self.max_tokens) if isinstance(plan, TreeShape) else self.max_tokens
        self._chains = self.propose(depth)
        return depth

    def forced(self, tree: DraftTree, node: int) -> list[tuple[int, tuple]]:
        """The chains' next tokens below ``node`` (whose path from the root follows them so far)."""
        path = [tree.tokens[i] for i in tree.path_to(node)]
        out: dict[int, tuple] = {}
        for tokens, feature in self._chains:
            if len(tokens) > len(path) and tokens[: len(path)] == path:
                out.setdefault(tokens[len(path)], feature)
        return list(out.items())

    def draft(self, root_token: int, plan: DraftPlan, sampling: SamplingConfig, generator=None) -> DraftTree:
        from .growth import grow_tree

        depth = self.start(plan)
        if depth == 0:
            return DraftTree.root_only(root_token, sampled=not sampling.greedy)
        shape = TreeShape((1,)) if isinstance(plan, TreeShape) else plan
        return grow_tree(None, root_token, shape, sampling, generator, forced=self.forced, forced_depth=depth)
