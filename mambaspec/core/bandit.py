"""Choosing the tree shape at run time: a UCB1 bandit over candidate shapes (arms).

Mamba Drafters (arXiv 2506.01206, §3.3) pick the draft tree per round with UCB:

    k* = argmax_k  r̄_k + c · sqrt(2 ln t / n_k)          (every arm is tried once first;
                                                           twice with the replayed reward)

``r̄_k`` is ``UCBPolicy.value``; values are divided by the largest |value| among the arms before
the bonus is added, so ``c`` means the same whatever the units and the hardware.

Rewards:
- ``replayed`` (default): tokens per second, estimated as (committed tokens per round) / (wall
  seconds per round). The seconds come from the arm's own rounds (``Arm.round_cost``);
  the tokens per round are
  *replayed for every arm on every round*: in greedy decoding a shape (N1, ..., Nγ) accepts the
  i-th token of a round exactly when the drafter ranks it below N_i given the text before it,
  and the drafter has ranked every committed token anyway (``Drafter.committed_ranks``). So
  all arms are judged on the same text, a hard prompt no longer makes the arm that happened to
  run on it look bad, and only the cost of a round (far steadier than its acceptance) has to be
  learnt per arm.
  The replayed acceptance is also kept per *context*: the drafter's top-1 probability at the
  round's root, cut into buckets (``edges``, default 0.5 and 0.9), so a confident drafter (e.g.
  boilerplate) gets deep chains and an unsure one short ones; a bucket with fewer than
  ``MIN_BUCKET_ROUNDS`` replayed rounds uses the arm's overall acceptance. With sampling, or a
  drafter with another tokenizer, there are no ranks and it falls back to ``measured``.
- ``measured``: committed tokens per second of each round the arm ran (drafting, verification,
  commit). It adapts to the hardware itself: on a CPU a 45-node tree costs far more to verify
  than a 5-node chain, on a GPU almost the same.
- ``modeled``: the paper's speed-up model, −(1 + λ·γ) / N_accept, with γ the tree depth,
  N_accept the committed tokens and λ the drafter/target cost ratio measured so far (drafter
  time per depth over target forward time).
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import MambaspecError
from .shape import TreeShape

if TYPE_CHECKING:  # this module stays free of torch: the command line checks bandit options before loading it
    from .stats import RoundOutcome

REWARDS = ("replayed", "measured", "modeled")
# Exploration constant. With the replayed reward only the cost of a round (steady) is learnt from
# an arm's own rounds, so little exploration is needed; c = 0.1 was chosen by replaying the
# recorded ranks of 20 HumanEval prompts (SmolLM2 + mamba2-smollm2, CPU) through the policy with
# c in {0.02, 0.05, 0.1, 0.2}; the measured reward used 0.2 (c = 1.0 explored far too much).
DEFAULT_C = 0.1
DEFAULT_EDGES = (0.5, 0.9)  # replayed reward: buckets of the drafter's root top-1 probability
ROUND_MEMORY = 64  # the cost of an arm's round comes from its last this many rounds (Arm.round_cost)
MIN_BUCKET_ROUNDS = 5  # replayed rounds a bucket needs before its own acceptance is trusted
# Tries of every arm before UCB takes over (replayed reward), a dozen rounds apart: with one try, one
# slow round (another process: 300 ms instead of 46 ms was seen) ruled an arm out for good.
FIRST_PULLS = 2


@dataclass
class Arm:
    name: str
    shape: TreeShape
    pulls: int = 0
    reward_sum: float = 0.0
    tokens: int = 0  # committed tokens over all pulls
    seconds: float = 0.0  # wall time over all pulls
    replay_tokens: list[float] = field(default_factory=list)  # per context bucket: replayed rounds' tokens, summed
    replay_rounds: list[float] = field(default_factory=list)  # ... and their number
    round_seconds: list[float] = field(default_factory=list)  # wall time of its last ROUND_MEMORY rounds
    _pos: int = field(default=0, repr=False)  # where this arm's next replayed round starts in the sequence

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.pulls if self.pulls else 0.0

    @property
    def mean_accept_len(self) -> float:
        return self.tokens / self.pulls if self.pulls else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def replay_accept_len(self, bucket: int | None = None) -> float:
        """Replayed tokens per round, in one context bucket (None: all)."""
        if bucket is None:
            tokens, rounds = sum(self.replay_tokens), sum(self.replay_rounds)
        else:
            tokens, rounds = self.replay_tokens[bucket], self.replay_rounds[bucket]
        return tokens / rounds if rounds else 0.0

    @property
    def round_cost(self) -> float:
        """Seconds per round: the lower quartile of its recent rounds (the fastest of its first
        three), so that slow rounds from a busy machine or the first forward of a new size, which
        only ever add time, do not decide; the mean when only totals are known (an older file)."""
        if len(self.round_seconds) > 3:
            return statistics.quantiles(self.round_seconds, n=4, method="inclusive")[0]
        if self.round_seconds:
            return min(self.round_seconds)
        return self.seconds / self.pulls if self.pulls else 0.0

    def replayed_tokens_per_s(self, bucket: int | None = None) -> float:
        """Replayed tokens per round over the measured seconds per round of the arm's own rounds."""
        cost = self.round_cost
        return self.replay_accept_len(bucket) / cost if cost else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "tree": ",".join(map(str, self.shape.branching)), "pulls": self.pulls,
                "mean_reward": round(self.mean_reward, 6), "mean_accept_len": round(self.mean_accept_len, 4),
                "tokens_per_s": round(self.tokens_per_s, 3),
                "round_cost_ms": round(1000 * self.round_cost, 3),
                "replayed_accept_len": round(self.replay_accept_len(), 4),
                "replayed_tokens_per_s": round(self.replayed_tokens_per_s(), 3), "tokens": self.tokens,
                "seconds": round(self.seconds, 4), "reward_sum": round(self.reward_sum, 6),
                "replay_tokens": [round(x, 4) for x in self.replay_tokens],
                "replay_rounds": [round(x, 4) for x in self.replay_rounds],
                "round_seconds": [round(x, 5) for x in self.round_seconds]}


def replayed_round(branching: tuple[int, ...], ranks: list[int], start: int) -> int | None:
    """Tokens a round of shape ``branching`` commits from ``start``, given the drafter's rank of every
    committed token (greedy); None when ``ranks`` does not reach far enough to tell."""
    for i, width in enumerate(branching):
        if start + i >= len(ranks):
            return None
        if ranks[start + i] >= width:
            return i + 1  # i accepted, then the target's token
    return len(branching) + 1 if start + len(branching) < len(ranks) else None


def parse_edges(text: str | tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """Confidence bucket edges from ``"0.5,0.9"`` ("" or "none": one bucket)."""
    if isinstance(text, (tuple, list)):
        values = list(text)
    else:
        cleaned = text.strip().lower()
        try:
            values = [] if cleaned in ("", "none") else [float(v) for v in cleaned.split(",")]
        except ValueError:
            raise MambaspecError(f"invalid confidence buckets '{text}': use increasing probabilities, "
                                 f"e.g. 0.5,0.9") from None
    if any(not 0 < v < 1 for v in values) or values != sorted(set(values)):
        raise MambaspecError(f"invalid confidence buckets '{text}': use increasing probabilities between 0 and 1, "
                             f"e.g. 0.5,0.9 (or none)")
    return tuple(float(v) for v in values)


@dataclass
class UCBPolicy:
    """A ``core.policy.TreePolicy`` that picks one of the arms' shapes every round."""

    name = "auto"
    arms: list[Arm]
    c: float = DEFAULT_C
    reward: str = "replayed"
    edges: tuple[float, ...] = DEFAULT_EDGES
    first_pulls: int = FIRST_PULLS  # replayed reward: tries of every arm before UCB (see first_tries)
    t: int = 0  # rounds observed
    _draft_per_depth: float = field(default=0.0, repr=False)  # running means for λ (modeled reward)
    _forward: float = field(default=0.0, repr=False)
    _current: int = field(default=0, repr=False)
    _bucket: int | None = field(default=None, repr=False)  # context of the current round
    _ranks: list[int] = field(default_factory=list, repr=False)  # the current sequence: drafter ranks ...
    _buckets: list[int] = field(default_factory=list, repr=False)  # ... and context buckets of its tokens
    _pulls_before: dict[str, int] = field(default_factory=dict, repr=False)  # at the start of the last sequence

    def __post_init__(self) -> None:
        if not self.arms:
            raise MambaspecError("the bandit needs at least one arm")
        if self.reward not in REWARDS:
            raise MambaspecError(f"unknown reward '{self.reward}'; use one of {', '.join(REWARDS)}")
        if self.c < 0:
            raise MambaspecError(f"the exploration constant c must be >= 0, got {self.c}")
        self.edges = parse_edges(self.edges)
        n = len(self.edges) + 1
        for arm in self.arms:
            if not arm.replay_rounds:
                arm.replay_tokens, arm.replay_rounds = [0.0] * n, [0.0] * n
            elif len(arm.replay_rounds) != n or len(arm.replay_tokens) != n:
                raise MambaspecError(
                    f"arm '{arm.name}' has replayed statistics for {len(arm.replay_rounds)} confidence buckets "
                    f"but the confidence buckets {','.join(map(str, self.edges)) or 'none'} make {n}; pass the "
                    f"buckets it was tuned with (the file's first line says them)")
        self.t = max(self.t, sum(a.pulls for a in self.arms))

    def describe(self) -> str:
        context = f", confidence buckets {','.join(map(str, self.edges)) or 'none'}" if self.wants_ranks else ""
        return f"auto (UCB over {len(self.arms)} arms, c={self.c}, {self.reward} reward{context})"

    __str__ = describe

    @property
    def wants_ranks(self) -> bool:
        """Whether ``observe`` uses the drafter's ranks of the committed tokens (and ``choose`` its confidence)."""
        return self.reward == "replayed"

    @property
    def current(self) -> int:
        """The index in ``arms`` of the arm the last ``choose`` (or ``pick``) picked."""
        return self._current

    @property
    def first_tries(self) -> int:
        """Rounds every arm runs before UCB chooses: ``first_pulls`` with the replayed reward, else one."""
        return self.first_pulls if self.wants_ranks else 1

    def begin_sequence(self, drafter=None) -> None:
        """A new sequence starts: replayed rounds start again at its first token."""
        self._ranks, self._buckets = [], []
        self._pulls_before = {a.name: a.pulls for a in self.arms}
        for arm in self.arms:
            arm._pos = 0

    def bucket(self, confidence: float | None) -> int | None:
        return None if confidence is None else bisect.bisect_right(self.edges, confidence)

    def choose(self, drafter=None, context: int = 0, remaining: int = 1 << 30) -> TreeShape:
        """The shape for the next round (and remember which arm it is). The drafter's top-1 probability
        at the root (``ReportsRanks.root_confidence``) is the context of the replayed reward."""
        from .drafter import ReportsRanks  # here: this module stays free of torch

        confidence = drafter.root_confidence() if self.wants_ranks and isinstance(drafter, ReportsRanks) else None
        return self.pick(confidence).truncated(remaining - 1)

    def pick(self, confidence: float | None = None) -> TreeShape:
        """The arm for a round whose root the drafter predicts with top-1 probability ``confidence``."""
        self._bucket = self.bucket(confidence)
        self._current = self.select()
        return self.arms[self._current].shape

    def value(self, arm: Arm, bucket: int | None = None) -> float:
        """The arm's estimated reward (what UCB maximises, before the bonus), in a context bucket."""
        if self.reward == "replayed" and sum(arm.replay_rounds):
            if bucket is not None and arm.replay_rounds[bucket] >= MIN_BUCKET_ROUNDS:
                return arm.replayed_tokens_per_s(bucket)
            return arm.replayed_tokens_per_s()
        return arm.mean_reward

    def select(self) -> int:
        for k in range(self.first_tries):  # round robin, so that one busy moment does not hit all tries of an arm
            untried = [i for i, a in enumerate(self.arms) if a.pulls == k]
            if untried:
                return untried[0]
        values = [self.value(a, self._bucket) for a in self.arms]
        scale = max(abs(v) for v in values) or 1.0
        log_t = math.log(max(self.t, 1))
        scores = [v / scale + self.c * math.sqrt(2 * log_t / a.pulls) for v, a in zip(values, self.arms)]
        return max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: the earlier arm

    def observe(self, outcome: RoundOutcome) -> None:
        """Credit the arm of the last ``choose`` with the round's outcome."""
        self.record(outcome.tokens, outcome.seconds, depth=outcome.depth, draft_s=outcome.draft_s,
                    forward_s=outcome.forward_s, ranks=outcome.ranks, confidences=outcome.confidences)

    def record(self, tokens: int, seconds: float, depth: int = 0, draft_s: float = 0.0,
               forward_s: float = 0.0, ranks: list[int] | None = None,
               confidences: list[float] | None = None) -> float:
        """Credit the arm of the last ``choose`` with one round's outcome; returns the reward.

        ``ranks`` and ``confidences``: the drafter's rank of each token committed this round and its
        top-1 probability at that position (``ReportsRanks.committed_ranks``).
        """
        arm = self.arms[self._current]
        if depth:
            self._draft_per_depth += (draft_s / depth - self._draft_per_depth) / (self.t + 1)
        self._forward += (forward_s - self._forward) / (self.t + 1)
        if self.reward == "modeled":
            lam = self._draft_per_depth / self._forward if self._forward > 0 else 0.0
            r = -(1 + lam * depth) / max(tokens, 1)
        else:
            r = tokens / seconds if seconds > 0 else 0.0
        arm.pulls += 1
        arm.reward_sum += r
        arm.tokens += tokens
        arm.seconds += seconds
        arm.round_seconds = [*arm.round_seconds[1 - ROUND_MEMORY:], seconds]
        self.t += 1
        if ranks is not None and self.wants_ranks:
            self._replay(ranks, confidences or [0.0] * len(ranks))
        return r

    def _replay(self, ranks: list[int], confidences: list[float]) -> None:
        self._ranks.extend(ranks)
        self._buckets.extend(self.bucket(p) for p in confidences)
        for arm in self.arms:
            while (n := replayed_round(arm.shape.branching, self._ranks, arm._pos)) is not None:
                b = self._buckets[arm._pos]
                arm.replay_tokens[b] += n
                arm.replay_rounds[b] += 1
                arm._pos += n

    @property
    def best(self) -> Arm:
        """The arm with the highest value (over all contexts) among those pulled."""
        pulled = [a for a in self.arms if a.pulls] or self.arms
        return max(pulled, key=self.value)

    def summary(self) -> list[dict]:
        """Per arm: its statistics and ``value``, what the bandit ranks it by (over all contexts)."""
        return [{**a.as_dict(), "value": round(self.value(a), 6)} for a in self.arms]

    def report(self) -> dict:
        """Per arm statistics (cumulative) and ``run_pulls``: its rounds in the last sequence."""
        return {"arms": [{**a, "run_pulls": a["pulls"] - self._pulls_before.get(a["name"], 0)}
                         for a in self.summary()]}


def check_options(c: float, reward: str, edges: str | tuple[float, ...]) -> None:
    """Fail on a bad c, reward or confidence buckets before anything is loaded."""
    UCBPolicy([Arm("check", TreeShape((1,)))], c=c, reward=reward, edges=edges)


def arms_from_entries(raw: object, source: str) -> list[Arm]:
    """Arms from an arms file's parsed YAML (``loading.trees.load_arms`` reads the file): a list of ``{name, tree}``
    (``pulls``/``reward_sum``/... from a tuned file warm-start), or ``{arms: [...]}``; ``source`` names the file."""
    if isinstance(raw, dict) and "arms" in raw:
        raw = raw["arms"]
    if not isinstance(raw, list) or not raw:
        raise MambaspecError(f"{source} must hold a non-empty list of arms like `- {{name: chain4, tree: 1,1,1,1}}`")
    arms, names = [], set()
    for i, entry in enumerate(raw):
        where = f"{source}, entry {i + 1}"
        if not isinstance(entry, dict) or "tree" not in entry:
            raise MambaspecError(f"{where}: needs a `tree:` (e.g. `tree: 3,2,2,1,1`)")
        tree = entry["tree"]
        text = ",".join(map(str, tree)) if isinstance(tree, list) else str(tree)
        try:
            shape = TreeShape.parse(text)
        except MambaspecError as err:
            raise MambaspecError(f"{where}: {err}") from None
        if shape.depth == 0:
            raise MambaspecError(f"{where}: an arm needs at least one draft level")
        name = str(entry.get("name", text))
        if name in names:
            raise MambaspecError(f"{where}: duplicate arm name '{name}'")
        names.add(name)
        try:
            replay = [[float(x) for x in (entry.get(k) or [])]
                      for k in ("replay_tokens", "replay_rounds", "round_seconds")]
            arms.append(Arm(name=name, shape=shape, pulls=int(entry.get("pulls", 0)),
                            reward_sum=float(entry.get("reward_sum", 0.0)), tokens=int(entry.get("tokens", 0)),
                            seconds=float(entry.get("seconds", 0.0)), replay_tokens=replay[0],
                            replay_rounds=replay[1], round_seconds=replay[2]))
        except (TypeError, ValueError):
            raise MambaspecError(f"{where}: pulls/reward_sum/tokens/seconds must be numbers, replay_tokens/"
                                 f"replay_rounds/round_seconds lists of numbers") from None
        arm = arms[-1]
        counts = [entry.get(k, 0) for k in ("pulls", "tokens")]
        if any(isinstance(v, float) and not v.is_integer() for v in counts) or min(
                [arm.pulls, arm.tokens, arm.seconds, *arm.replay_tokens, *arm.replay_rounds, *arm.round_seconds]) < 0:
            raise MambaspecError(f"{where}: pulls and tokens must be whole numbers >= 0, the other statistics >= 0 "
                                 f"(or drop them to start the arm afresh)")
    return arms
