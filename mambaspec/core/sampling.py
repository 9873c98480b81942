"""Turning logits into the distribution that is sampled from, and the randomness a sample is drawn with.

The same ``warp`` is applied to the target's and the drafter's logits, so speculative sampling
reproduces exactly the distribution plain sampling with these settings would draw from
(temperature, then top-k, then top-p, the order transformers' ``generate`` uses).

Two acceptance rules for sampled drafts (``SamplingConfig.acceptance``; both exact, ``core.verify``):

- ``gumbel`` (the default): the i-th new token is the Gumbel-max draw argmax_v(log p_i(v) + G_i(v)), with noise
  G_i fixed by (seed, i) (``GumbelNoise``); drafts are chosen with the same noise and a node is accepted exactly
  when its token is that draw. The text depends only on the seed, the prompt and the settings: the same with any
  tree, any drafter and none (drafter-invariant speculative decoding, Daliri et al. 2024, arXiv 2408.07978).
- ``rejection``: multi-candidate speculative sampling (children drawn from q, accepted with probability
  min(1, p/q)); slightly more drafts are accepted, but which random numbers are used depends on the tree,
  so a seed fixes the text only for a fixed tree and drafter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import MambaspecError

if TYPE_CHECKING:  # SamplingConfig stays free of torch: the command line checks settings before loading it
    import torch

ACCEPTANCE_RULES = ("gumbel", "rejection")


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    acceptance: str = "gumbel"  # how sampled drafts are accepted: "gumbel" (a seed fixes the text) or "rejection"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise MambaspecError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise MambaspecError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise MambaspecError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.acceptance not in ACCEPTANCE_RULES:
            raise MambaspecError(f"acceptance must be one of {', '.join(ACCEPTANCE_RULES)}, got '{self.acceptance}'")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def gumbel(self) -> bool:
        """Sampling with the reproducible rule (``GumbelNoise``)."""
        return not self.greedy and self.acceptance == "gumbel"


def warp(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Probabilities (float32, last dim) after temperature, top-k and top-p."""
    import torch

    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1 - cfg.top_p)
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def inverse_cdf_draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of ``probs`` (rows, vocab), on their device, from uniforms of a CPU ``generator`` (the same
    draws on any device, up to the rounding of the running sums; a wide batch's probabilities stay where they are).
    A token of probability 0 is never drawn: u is in (0, 1], and the first running sum >= u x total is a token's."""
    import torch

    u = 1 - torch.rand(probs.shape[0], 1, generator=generator)
    cdf = probs.float().cumsum(dim=-1).cummax(dim=-1).values  # a parallel (GPU) sum may dip by a rounding step
    return torch.searchsorted(cdf, u.to(probs.device) * cdf[:, -1:]).clamp(max=probs.shape[-1] - 1)[:, 0]


def gumbel_draw(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """argmax(log probs + noise) along the last dim: with standard Gumbel noise, an exact draw from ``probs``
    (the Gumbel-max trick); tokens of probability 0 are never drawn."""
    return (probs.log() + noise).argmax(dim=-1)


_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class GumbelNoise:
    """Standard Gumbel noise over the vocabulary for every position of a generation, fixed by (seed, position):
    the randomness of the ``gumbel`` acceptance rule.

    Position i is the i-th new token; ``offset`` is the position of the children of this round's root (the engine
    sets it every round), so ``children(d)`` is the noise of the children of a node at depth d. The noise of a
    position is drawn on the CPU from a generator seeded by (seed, position), so it is the same on every run and
    device, and independent from one position to the next.
    """

    def __init__(self, seed: int, width: int, device: torch.device | str | None = None, keep: int = 32) -> None:
        self.seed, self.width, self.device, self.keep = seed, width, device, keep
        self.offset = 0
        self._cache: dict[int, torch.Tensor] = {}

    def at(self, position: int) -> torch.Tensor:
        """G(seed, position): (width,) float32."""
        noise = self._cache.get(position)
        if noise is None:
            import torch

            g = torch.Generator().manual_seed(_splitmix64(_splitmix64(self.seed & _MASK) ^ position))
            u = torch.rand(self.width, generator=g).clamp_(min=torch.finfo(torch.float32).tiny)
            noise = u.log_().neg_().log_().neg_().to(self.device)  # -log(-log U) is standard Gumbel (~1 ms for 49k)
            if len(self._cache) >= self.keep:  # positions behind the round are not asked again
                self._cache.pop(min(self._cache))
            self._cache[position] = noise
        return noise

    def children(self, depth: int) -> torch.Tensor:
        """The noise of the token after a node at ``depth`` of this round's tree (the root is depth 0)."""
        return self.at(self.offset + depth)
