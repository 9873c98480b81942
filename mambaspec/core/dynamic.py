"""Dynamic trees: draft only what pays, by a measured cost model and calibrated acceptance.

Each round the policy builds a ``DynamicPlan``: how long a verification of n nodes takes at this
context, what a drafter step costs, and how likely a node is to be accepted. The tree is then
grown from the drafter's own probabilities (``drafters.growth.grow_dynamic``, as EAGLE-2, arXiv
2406.16858, grows by path probability), keeping a node only while it raises the expected tokens
per second of the round:

    E[tokens] = 1 + Σ_nodes Π_{ancestors a, and the node} acc(a)         (greedy: a node is committed
    E[time]   = verify(n, L) + read + steps · step + overhead             exactly when its whole path is)
    add node x  iff  (E + v_x) / (T + Δverify) > E / T

``acc`` is learnt online: a calibration of the drafter's probability (and, for nodes copied from the
context, of the match's length and agreement) against what the target accepted, over every node
whose parent was accepted. ``verify(n, L)`` is a least-squares fit of the rounds' forward times on
``1, n, L, n·L`` centred on the round's context, nearer rounds weighing more (``CostModel``); the drafter's
read of the committed tokens and its step, and a round's overhead, are medians of recent rounds in the fit's
units (divided by how slow the machine ran lately against the fit), since timing noise on a shared machine
only adds time and comes in spells. Nothing is probed: where no round was measured near the context yet, the
first round there is a plain step and the next ones draft at most ``EXPLORE_NODES`` nodes until a drafted round
has been measured; all of them are real rounds that commit tokens. When not even the best first node pays, the
round verifies the pending token alone — a plain step. When drafting has lost lately, with some confidence (what the
last ``GAIN_WINDOW`` rounds that engaged the drafter really gained, in plain steps: committed tokens
against their time — its mean plus one standard error below zero), the drafter is left alone for a few
rounds (doubling up to ``MAX_SKIP``); with lazy commits it then reads the skipped tokens in one forward.
A drafter that pays on average rides out a run of rejections instead of backing off after it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from .shape import TreeShape
from .stats import RoundOutcome
from .tree import DraftTree

MAX_SKIP = 8  # rounds the drafter is left alone at most while drafting does not pay
EXPLORE_NODES = 3  # the node budget at a context where no drafted round was measured near yet
KNOWN_WEIGHT = 0.25  # weight of a known sample (an earlier run's) against one of this run's rounds
BINS = 20  # calibration bins of the drafter's probability
PRIOR = 2.0  # pseudo-observations at the bin's own probability (an uncalibrated drafter is taken at its word)
KEPT_COUNTS = 20.0  # observations per calibration bin kept from earlier runs at most
HISTORY = 256  # rounds the cost fit remembers
RECENT = 32  # samples the drafter's step, read and a round's overhead are medians of
STEP_SAMPLES = 4  # drafter steps timed before their median prices a step (till then: the cheapest seen, at most a read)
SPEED_WINDOW = 8  # rounds whose forward times against the fit say how slow the machine runs lately
GAIN_WINDOW = 16  # the engaged rounds whose realized gain says whether drafting pays
WIDE_NODES = 64  # the node cap where verification is flat (a GPU): the paper's wide arms, e.g. 3,2,2,1,1 (45 nodes)
FLAT_RATIO = 1.2  # "flat": verifying WIDE_NODES nodes predicted within this factor of one node
FLAT_MEASURED = 8  # ... with drafted rounds of at least this many nodes measured near the context (not extrapolated
#                    from tiny trees alone)


class AcceptanceModel:
    """How often a node is accepted once its parent is, by the drafter's probability of it (model
    nodes) or by the length and agreement of the context match that proposed it (copied nodes)."""

    def __init__(self) -> None:
        self.hits = [0.0] * BINS
        self.seen = [0.0] * BINS
        self.copied: dict[tuple, list[float]] = {}

    def as_dict(self) -> dict:
        """The counts, to keep between runs (``loading.costs``)."""
        return {"hits": list(self.hits), "seen": list(self.seen),
                "copied": [[*feature, h, n] for feature, (h, n) in self.copied.items()]}

    @classmethod
    def from_dict(cls, data: dict, cap: float = KEPT_COUNTS) -> AcceptanceModel:
        """Counts kept from earlier runs, each bin scaled down to at most ``cap`` observations so that this run's
        rounds soon outweigh them; anything malformed gives a fresh model."""
        model = cls()
        try:
            if len(data.get("hits", [])) == BINS == len(data.get("seen", [])):
                for b, (h, n) in enumerate(zip(data["hits"], data["seen"])):
                    k = min(1.0, cap / n) if n > 0 else 0.0
                    model.hits[b], model.seen[b] = float(h) * k, float(n) * k
            for *feature, h, n in data.get("copied", []):
                k = min(1.0, cap / n) if n > 0 else 0.0
                model.copied[tuple(feature)] = [float(h) * k, float(n) * k]
        except (TypeError, ValueError, AttributeError):
            return cls()
        return model

    def accept_rate(self, q: float) -> float:
        """The chance that a drafted node the drafter gave probability ``q`` is accepted (its bin's calibration)."""
        b = min(int(q * BINS), BINS - 1)
        centre = (b + 0.5) / BINS
        return (self.hits[b] + PRIOR * centre) / (self.seen[b] + PRIOR)

    def copy_accept_rate(self, feature: tuple) -> float:
        """The chance that a copied node (a lookup's proposal, described by ``feature``) is accepted."""
        hits, seen = self.copied.get(feature, (0.0, 0.0))
        prior = min(0.9, 0.3 + 0.1 * feature[0]) * feature[1]  # longer, agreeing matches start more trusted
        return (hits + PRIOR * prior) / (seen + PRIOR)

    def node(self, tree: DraftTree, i: int) -> float:
        feature = tree.feature[i]
        return self.copy_accept_rate(feature) if feature is not None else self.accept_rate(tree.prob[i])

    def update(self, tree: DraftTree, path: list[int]) -> None:
        """Learn from every node whose parent was accepted (the root included)."""
        reached = {0, *path}
        for i in range(1, len(tree)):
            if tree.parents[i] not in reached:
                continue
            hit = float(i in reached)
            if tree.feature[i] is not None:
                entry = self.copied.setdefault(tree.feature[i], [0.0, 0.0])
                entry[0] += hit
                entry[1] += 1
            else:
                b = min(int(tree.prob[i] * BINS), BINS - 1)
                self.hits[b] += hit
                self.seen[b] += 1

    def predicted_tokens(self, tree: DraftTree) -> float:
        """1 + the sum over nodes of the probability that the node's whole path is accepted."""
        value = [1.0] * len(tree)
        for i in range(1, len(tree)):
            value[i] = value[tree.parents[i]] * self.node(tree, i)
        return sum(value)


class CostModel:
    """Seconds of a round's parts, measured from the rounds themselves (and from ``known`` samples: earlier runs on
    this machine and target, e.g. ``loading.costs.CostStore``).

    Timing noise on a shared machine only ever adds time, and comes in spells. Every round's target forward is
    timed against what the fit predicted for it before the round: the median of the last ``SPEED_WINDOW`` ratios is
    the machine's ``speed`` lately (1: as fitted). The drafter's read and step and a round's overhead are kept in the
    fit's units (divided by the speed when measured) and priced as medians of recent samples, so a slow spell
    neither inflates the drafter's price after it (a step is only timed when one is taken: an inflated price used to
    keep trees too shallow to ever time one again) nor reads as drafting losing (``DynamicTreePolicy.observe``)."""

    def __init__(self, known: list[tuple[int, int, float]] | None = None) -> None:
        self.rounds: deque[tuple[int, int, float]] = deque(maxlen=HISTORY)  # (nodes, context, forward seconds)
        self.known = list(known or [])
        self._speeds: deque[float] = deque(maxlen=SPEED_WINDOW)  # forward seconds / the fit's prediction, per round
        self._reads: deque[float] = deque(maxlen=RECENT)  # the drafter's reading of what was committed (fit units)
        self._steps: deque[float] = deque(maxlen=RECENT)  # one tree step, a batched forward of a level (fit units)
        self._overheads: deque[float] = deque(maxlen=RECENT)  # a round outside the forward and the drafting (fit units)
        self._theta: dict[int, torch.Tensor | None] = {}  # fit by the context it was made for

    def observe(self, outcome: RoundOutcome, steps: int, read_s: float = 0.0) -> None:
        """Learn from a round whose drafter ran ``steps`` tree steps after ``read_s`` seconds of reading (0: nothing
        was read)."""
        predicted = self.verify(outcome.nodes, outcome.context) if self.rounds or self.known else 0.0
        if predicted > 0 and outcome.forward_s > 0:
            self._speeds.append(outcome.forward_s / predicted)
        speed = self.speed
        self.rounds.append((outcome.nodes, outcome.context, outcome.forward_s))
        if read_s > 0:
            self._reads.append(read_s / speed)
        if steps:
            self._steps.append(max(outcome.draft_s - read_s, 0.0) / steps / speed)
        self._overheads.append(max(outcome.seconds - outcome.forward_s - outcome.draft_s, 0.0) / speed)
        self._theta = {}

    @property
    def speed(self) -> float:
        """How slow the machine ran lately against the fit: the median ratio of the last rounds' forward times to
        their prediction (2: twice as slow), within [1/4, 4]."""
        return min(max(_median(self._speeds), 0.25), 4.0) if self._speeds else 1.0

    @property
    def read(self) -> float:
        """The drafter's reading of a round's committed tokens (the fit's units): the median of recent rounds."""
        return _median(self._reads)

    @property
    def step(self) -> float:
        """One drafter tree step (the fit's units): the median of recent steps. Until ``STEP_SAMPLES`` steps were
        timed, the cheapest of them and at most the drafter's read (a step and a read are the same forward of the
        drafter, a token a row against a few tokens of one row): the first steps of a process, or of a new batch
        shape, pay one-time costs, and a price taken from one such step (28.6 ms against 3-7 ms warm, traced on the
        chat mix: results/drafters/2026-12-07-cold-step) kept every later tree one level deep, where no step is
        taken to time one again."""
        if len(self._steps) >= STEP_SAMPLES:
            return _median(self._steps)
        return min([*self._steps, *([self.read] if self._reads else [])], default=0.0)

    @property
    def overhead(self) -> float:
        """A round's time outside the target's forward and the drafting (the fit's units): the median of recent
        rounds."""
        return _median(self._overheads)

    def samples(self) -> list[tuple[int, int, float]]:
        """What was measured, the known samples first: (nodes, context, seconds)."""
        return self.known + list(self.rounds)

    def measured_near(self, context: int) -> tuple[bool, bool]:
        """Whether a plain step and a drafted round were measured near ``context`` (within a quarter of it)."""
        near = self._nodes_near(context)
        return 0 in near, any(n > 0 for n in near)

    def _nodes_near(self, context: int) -> list[int]:
        """The node counts of the rounds measured within a quarter of ``context``."""
        return [n for n, c, _ in self.samples() if abs(c - context) <= 0.25 * context + 256]

    def flat(self, context: int, nodes: int = WIDE_NODES) -> bool:
        """Whether verifying ``nodes`` nodes costs at most ``FLAT_RATIO`` times one node here (as on a GPU, where a
        step is launch overhead), judged from a fit that includes trees of ``FLAT_MEASURED`` nodes or more."""
        one = self.verify(1, context)
        return (max(self._nodes_near(context), default=0) >= FLAT_MEASURED and one > 0
                and self.verify(nodes, context) <= FLAT_RATIO * one)

    def verify(self, nodes: int, context: int) -> float:
        """Predicted seconds of a verification forward of ``nodes`` draft nodes after ``context`` tokens."""
        if context not in self._theta:
            self._theta[context] = self._fit(context)
        theta = self._theta[context]
        if theta is None:
            return 0.0
        return max(float(theta[0] + theta[1] * nodes), float(theta[0]), 1e-4)  # never cheaper than the bare step

    def _fit(self, context: int) -> torch.Tensor | None:
        """Weighted least squares of the seconds on ``1, n, ℓ, n·ℓ`` (ℓ: thousands of tokens from ``context``), the
        samples weighted by how near their context is (known ones less than this run's rounds); a ridge on the ℓ
        terms keeps samples from one context from extrapolating. At ``context`` the prediction is θ0 + θ1·n."""
        data = [(n, c, t, KNOWN_WEIGHT) for n, c, t in self.known] + [(n, c, t, 1.0) for n, c, t in self.rounds]
        if not data:
            return None
        n, c, t, w = (torch.tensor(col, dtype=torch.float64) for col in zip(*data))
        ell = (c - context) / 1e3
        w = w * torch.exp(-(c - context).abs() / (0.5 * context + 512))
        x = torch.stack([torch.ones_like(n), n, ell, n * ell], dim=1)
        ridge = torch.tensor([0.0, 1e-9, 0.01, 0.01], dtype=torch.float64) * w.sum() + 1e-12
        xw = x * w[:, None]
        return torch.linalg.solve(x.T @ xw + torch.diag(ridge), xw.T @ t)


def _median(values) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


@dataclass
class DynamicPlan:
    """One round's budget: what the tree growth (``drafters.growth.grow_dynamic``) asks while it grows."""

    acceptance: AcceptanceModel
    costs: CostModel
    context: int
    max_depth: int
    max_nodes: int
    max_children: int
    top_accept: float  # expected acceptance of a node's first child (before the drafter is asked)

    def base_time(self) -> float:
        """A round that drafts: a plain step's time, and the drafter's reading of what it commits."""
        return self.costs.verify(0, self.context) + self.costs.overhead + (self.costs.read or self.costs.step)

    def node_cost(self, n: int) -> float:
        """The extra verification time of the n-th node."""
        return max(self.costs.verify(n, self.context) - self.costs.verify(n - 1, self.context), 0.0)

    def chain(self) -> TreeShape:
        """For drafters that build their own trees (e.g. through another tokenizer): the chain length with the
        most expected tokens per second, each link accepted at the calibrated rate of certain nodes."""
        a = self.acceptance.accept_rate(0.999)
        best, best_rate, tokens, time = 0, 1.0 / self.base_time() if self.base_time() else 0.0, 1.0, self.base_time()
        for k in range(1, self.max_depth + 1):
            tokens += a ** k
            time = self.base_time() + self.costs.verify(k, self.context) - self.costs.verify(0, self.context) + \
                k * self.costs.step
            if time > 0 and tokens / time > best_rate:
                best, best_rate = k, tokens / time
        return TreeShape((1,) * best)

    @staticmethod
    def pays(tokens: float, time: float, gain: float, cost: float) -> bool:
        """Whether adding ``gain`` expected tokens for ``cost`` seconds raises tokens per second."""
        return (tokens + gain) * time > tokens * (time + cost)


@dataclass
class DynamicTreePolicy:
    """A ``core.policy.TreePolicy`` that grows each round's tree as far as the cost model says it pays."""

    name = "dynamic"
    wants_ranks = False
    max_nodes: int = 16
    max_depth: int = 8
    max_children: int = 3
    acceptance: AcceptanceModel = field(default_factory=AcceptanceModel)
    costs: CostModel = field(default_factory=CostModel)
    _skip: int = 0
    _backoff: int = 0
    _plan: DynamicPlan | None = None
    _predicted: list[float] = field(default_factory=list)  # per drafted round: expected committed tokens ...
    _actual: list[float] = field(default_factory=list)  # ... and what was committed
    _top: list[float] = field(default_factory=lambda: [1.0, 2.0])  # first-child acceptance: hits, seen (prior 0.5)
    _gains: deque = field(default_factory=lambda: deque(maxlen=GAIN_WINDOW))  # realized gains, in plain steps
    _rounds: int = 0
    _bare: int = 0

    def describe(self) -> str:
        return (f"dynamic (up to {self.max_nodes} nodes, depth {self.max_depth}, {self.max_children} children a node; "
                f"measured costs, calibrated acceptance)")

    def begin_sequence(self, drafter) -> None:
        self._skip, self._backoff, self._plan = 0, 0, None
        self._predicted, self._actual, self._rounds, self._bare = [], [], 0, 0

    def choose(self, drafter, context: int, remaining: int):
        self._plan = None
        plain_seen, drafted_seen = self.costs.measured_near(context)
        if remaining <= 1 or self._skip > 0 or not plain_seen:  # a plain step (what measures the base cost)
            self._skip = max(self._skip - 1, 0)
            return TreeShape(())
        budget = self.max_nodes if drafted_seen else EXPLORE_NODES  # small, until drafted nodes are measured here
        if drafted_seen and budget < WIDE_NODES and self.costs.flat(context):
            budget = WIDE_NODES  # verification is (nearly) free here: trees as wide as the cost model says pay
        self._plan = DynamicPlan(self.acceptance, self.costs, context, min(self.max_depth, remaining - 1),
                                 budget, self.max_children, self._top[0] / self._top[1])
        return self._plan

    def observe(self, outcome: RoundOutcome) -> None:
        self._rounds += 1
        self._bare += outcome.nodes == 0
        tree, plan = outcome.tree, self._plan
        self.costs.observe(outcome, tree.steps if tree is not None else 0, tree.read_s if tree is not None else 0.0)
        if tree is None or plan is None:
            return
        if outcome.nodes:
            self._predicted.append(self.acceptance.predicted_tokens(tree))
            self._actual.append(outcome.accepted + 1)
            first = outcome.path[0] if outcome.path else None
            top = max(tree.children(0), key=lambda c: tree.prob[c], default=None)
            if top is not None:
                self._top = [self._top[0] + (first == top), self._top[1] + 1]
            self.acceptance.update(tree, outcome.path)
        # What engaging the drafter really gained, in plain steps: the tokens committed against the plain steps they
        # would have taken, less this round's time (reading tokens skipped earlier aside, feeding its commit in), at
        # the machine's speed lately (``CostModel.speed``), so that a slow spell does not read as drafting losing.
        plain = self.costs.verify(0, outcome.context) + self.costs.overhead
        spent = (outcome.seconds - tree.read_s) / self.costs.speed + (self.costs.read or self.costs.step)
        self._gains.append((outcome.tokens * plain - spent) / plain if plain > 0 else 0.0)
        if not self._losing():
            self._backoff = 0
        else:  # drafting has lost lately: leave the drafter alone for a while
            self._backoff = min(MAX_SKIP, max(1, 2 * self._backoff))
            self._skip = self._backoff

    @property
    def skipping(self) -> int:
        """Plain rounds still to come before drafting again (drafting lost lately, see ``observe``)."""
        return self._skip

    def _losing(self) -> bool:
        """Whether the recent rounds' mean gain is below zero by more than its standard error."""
        n = len(self._gains)
        if n < 2:
            return False
        mean = sum(self._gains) / n
        variance = sum((g - mean) ** 2 for g in self._gains) / (n - 1)
        return mean + (variance / n) ** 0.5 < 0

    def report(self) -> dict:
        drafted = len(self._predicted)
        predicted, actual = sum(self._predicted), sum(self._actual)
        context = self.costs.rounds[-1][1] if self.costs.rounds else 0  # the fit, where the last round was
        return {"drafted_rounds": drafted, "plain_rounds": self._bare,
                "predicted_accept_len": round(predicted / drafted, 3) if drafted else 0.0,
                "measured_accept_len": round(actual / drafted, 3) if drafted else 0.0,
                "prediction_error": round(abs(predicted - actual) / actual, 3) if actual else 0.0,
                "context_tokens": context, "verify_ms_0_1_4_16": [round(1e3 * self.costs.verify(n, context), 2)
                                                            for n in (0, 1, 4, 16)]}
