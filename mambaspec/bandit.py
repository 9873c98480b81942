"""Choosing the tree shape at run time: a UCB1 bandit over candidate shapes (arms).

Mamba Drafters (arXiv 2506.01206, §3.3) pick the draft tree per round with UCB:

    k* = argmax_k  r̄_k + c · sqrt(2 ln t / n_k)          (every arm is tried once first)

Rewards, per round:
- ``measured`` (default): committed tokens per second of the round's wall time (drafting,
  verification, commit). It adapts to the hardware itself: on a CPU a 45-node tree costs far
  more to verify than a 5-node chain, on a GPU almost the same.
- ``modeled``: the paper's speed-up model, −(1 + λ·γ) / N_accept, with γ the tree depth,
  N_accept the committed tokens and λ the drafter/target cost ratio measured so far (drafter
  time per depth over target forward time).

Rewards are divided by the largest |mean reward| among the arms before the bonus is added, so
``c`` means the same whatever the units and the hardware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import MambaspecError
from .tree import TreeShape

REWARDS = ("measured", "modeled")
# Exploration constant. Per-round rewards are noisy (1 to γ+1 tokens a round) while the best few
# arms are within a few percent of each other, so a small c pays: measured on 20 HumanEval prompts
# with SmolLM2 + mamba2-smollm2 on CPU (mambaspec tune --ucb-c C), overall tokens/s were
# c=1.0: 30.1, c=0.3: 30.6, c=0.15: 33.5 (the best fixed arm alone: ~34).
DEFAULT_C = 0.2


@dataclass
class Arm:
    name: str
    shape: TreeShape
    pulls: int = 0
    reward_sum: float = 0.0
    tokens: int = 0  # committed tokens over all pulls
    seconds: float = 0.0  # wall time over all pulls

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.pulls if self.pulls else 0.0

    @property
    def mean_accept_len(self) -> float:
        return self.tokens / self.pulls if self.pulls else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "tree": ",".join(map(str, self.shape.branching)), "pulls": self.pulls,
                "mean_reward": round(self.mean_reward, 6), "mean_accept_len": round(self.mean_accept_len, 4),
                "tokens_per_s": round(self.tokens_per_s, 3), "tokens": self.tokens,
                "seconds": round(self.seconds, 4), "reward_sum": round(self.reward_sum, 6)}


@dataclass
class UCBPolicy:
    arms: list[Arm]
    c: float = DEFAULT_C
    reward: str = "measured"
    t: int = 0  # rounds observed
    _draft_per_depth: float = field(default=0.0, repr=False)  # running means for λ (modeled reward)
    _forward: float = field(default=0.0, repr=False)
    _current: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not self.arms:
            raise MambaspecError("the bandit needs at least one arm")
        if self.reward not in REWARDS:
            raise MambaspecError(f"unknown reward '{self.reward}'; use one of {', '.join(REWARDS)}")
        if self.c < 0:
            raise MambaspecError(f"the exploration constant c must be >= 0, got {self.c}")
        self.t = max(self.t, sum(a.pulls for a in self.arms))

    def __str__(self) -> str:
        return f"auto (UCB over {len(self.arms)} arms, c={self.c}, {self.reward} reward)"

    def choose(self) -> TreeShape:
        """The shape for the next round (and remember which arm it is)."""
        self._current = self.select()
        return self.arms[self._current].shape

    def select(self) -> int:
        untried = [i for i, a in enumerate(self.arms) if a.pulls == 0]
        if untried:
            return untried[0]
        scale = max(abs(a.mean_reward) for a in self.arms) or 1.0
        log_t = math.log(max(self.t, 1))
        scores = [a.mean_reward / scale + self.c * math.sqrt(2 * log_t / a.pulls) for a in self.arms]
        return max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: the earlier arm

    def observe(self, tokens: int, seconds: float, depth: int = 0, draft_s: float = 0.0,
                forward_s: float = 0.0) -> float:
        """Credit the arm of the last ``choose`` with one round's outcome; returns the reward."""
        arm = self.arms[self._current]
        if depth:
            self._draft_per_depth += (draft_s / depth - self._draft_per_depth) / (self.t + 1)
        self._forward += (forward_s - self._forward) / (self.t + 1)
        if self.reward == "measured":
            r = tokens / seconds if seconds > 0 else 0.0
        else:
            lam = self._draft_per_depth / self._forward if self._forward > 0 else 0.0
            r = -(1 + lam * depth) / max(tokens, 1)
        arm.pulls += 1
        arm.reward_sum += r
        arm.tokens += tokens
        arm.seconds += seconds
        self.t += 1
        return r

    @property
    def best(self) -> Arm:
        """The arm with the highest mean reward among those pulled."""
        pulled = [a for a in self.arms if a.pulls] or self.arms
        return max(pulled, key=lambda a: a.mean_reward)

    def summary(self) -> list[dict]:
        return [a.as_dict() for a in self.arms]


def load_arms(path: str | Path) -> list[Arm]:
    """Arms from YAML: a list of ``{name, tree}`` (``pulls``/``reward_sum``/... from a tuned file warm-start)."""
    path = Path(path)
    if not path.is_file():
        raise MambaspecError(f"arms file not found: {path}; see recipes/trees.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise MambaspecError(f"arms file {path} is not valid YAML; fix it (see recipes/trees.yaml)") from None
    if isinstance(raw, dict) and "arms" in raw:
        raw = raw["arms"]
    if not isinstance(raw, list) or not raw:
        raise MambaspecError(f"arms file {path} must hold a non-empty list of arms like `- {{name: chain4, tree: 1,1,1,1}}`")
    arms, names = [], set()
    for i, entry in enumerate(raw):
        where = f"arms file {path}, entry {i + 1}"
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
        stats = {k: entry[k] for k in ("pulls", "reward_sum", "tokens", "seconds") if k in entry}
        try:
            arms.append(Arm(name=name, shape=shape, pulls=int(stats.get("pulls", 0)),
                            reward_sum=float(stats.get("reward_sum", 0.0)), tokens=int(stats.get("tokens", 0)),
                            seconds=float(stats.get("seconds", 0.0))))
        except (TypeError, ValueError):
            raise MambaspecError(f"{where}: pulls/reward_sum/tokens/seconds must be numbers") from None
    return arms


def save_arms(arms: list[Arm], path: str | Path, comment: str = "") -> None:
    """A tuned arms file (arms with their statistics) that ``load_arms`` reads back as a warm start."""
    text = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    text += yaml.safe_dump([a.as_dict() for a in arms], sort_keys=False)
    Path(path).write_text(text)
