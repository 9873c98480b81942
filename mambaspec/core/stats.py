"""What a generation reports, and the bookkeeping that fills it, kept apart from the decoding loop."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .tree import DraftTree


@dataclass
class GenerationStats:
    new_tokens: int = 0
    seconds: float = 0.0  # generation wall time, prefill included, model loading excluded
    prefill_s: float = 0.0  # target and drafter prefill
    tokens_per_s: float = 0.0  # new_tokens / seconds
    decode_tokens_per_s: float = 0.0  # new_tokens / (seconds - prefill_s)
    rounds: int = 0  # draft-verify rounds (one target forward each)
    mean_accept_len: float = 0.0  # (accepted draft tokens + 1) per round
    draft_s: float = 0.0  # drafter: tree building, plus feeding the accepted tokens
    verify_s: float = 0.0  # target verification forward, acceptance walk and cache compaction
    target_forward_s: float = 0.0  # the part of verify_s spent inside the target's forward
    other_s: float = 0.0  # seconds - prefill_s - draft_s - verify_s: the loop's own overhead and CUDA graph captures
    mean_tree_nodes: float = 0.0  # draft tokens per verification forward
    no_draft_rounds: float = 0.0  # fraction of rounds that verified the pending token alone
    peak_mem_mb: float = 0.0  # CUDA: max allocated; CPU: peak resident set of the process
    drafter_state_bytes: int = 0  # drafter's recurrent state / KV cache after the prompt
    target_kv_bytes: int = 0  # target's KV cache after the prompt
    tree: str = ""  # the fixed shape, or what chose the tree of every round ("auto", "dynamic")
    drafter: str = ""
    target_options: str = ""  # how the target's forward was made cheap (loading.models.load_model)
    stopped: str = ""  # "eos", "stop", "max_new_tokens" or "context"
    tree_policy: str = ""  # with a tree policy: what it is (reward, c, contexts, budget)
    # the policy's own numbers (bandit arms, dynamic predictions)
    policy_report: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RoundOutcome:
    """One draft-verify round, as the tree policy and the stats see it."""

    tokens: int  # committed (accepted drafts + the bonus), after any EOS cut
    seconds: float  # wall time of the round: drafting, verification, commit
    draft_s: float  # drafting the tree
    forward_s: float  # the target's forward
    nodes: int  # draft tokens verified
    depth: int  # depth of the tree
    context: int  # tokens the target had read before the round
    ranks: list[int] | None = None  # the drafter's rank of each committed token (ReportsRanks, greedy)
    confidences: list[float] | None = None  # its top-1 probability at each
    accepted: int = 0  # draft tokens accepted
    tree: DraftTree | None = None  # the tree that was verified
    path: list[int] = field(default_factory=list)  # its accepted nodes


class StatsRecorder:
    """Accumulates rounds into ``GenerationStats`` (times, nodes, acceptance), then finishes them."""

    def __init__(self, stats: GenerationStats, device: torch.device) -> None:
        self.stats = stats
        self.device = device
        self.start = time.perf_counter()
        self._committed = 0
        self._nodes = 0
        self._bare = 0

    def prefilled(self) -> None:
        sync(self.device)
        self.stats.prefill_s = time.perf_counter() - self.start

    def round(self, outcome: RoundOutcome, verify_s: float, commit_s: float) -> None:
        s = self.stats
        s.rounds += 1
        s.draft_s += outcome.draft_s + commit_s
        s.verify_s += verify_s
        s.target_forward_s += outcome.forward_s
        self._committed += outcome.accepted + 1
        self._nodes += outcome.nodes
        self._bare += outcome.nodes == 0

    def finish(self, new_tokens: int) -> GenerationStats:
        s = self.stats
        s.seconds = time.perf_counter() - self.start
        s.new_tokens = new_tokens
        s.tokens_per_s = new_tokens / s.seconds if s.seconds > 0 else 0.0
        decode_s = s.seconds - s.prefill_s
        s.decode_tokens_per_s = new_tokens / decode_s if decode_s > 0 else 0.0
        s.mean_accept_len = self._committed / max(s.rounds, 1)
        s.mean_tree_nodes = self._nodes / max(s.rounds, 1)
        s.no_draft_rounds = self._bare / max(s.rounds, 1)
        s.other_s = max(s.seconds - s.prefill_s - s.draft_s - s.verify_s, 0.0)
        s.peak_mem_mb = peak_memory_mb(self.device)
        return s


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA kernels are asynchronous), so that wall times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: peak resident set of the process (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
