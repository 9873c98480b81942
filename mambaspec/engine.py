"""The decoding loop: draft a tree, verify it in one target forward, commit, repeat.

Invariants between rounds: the target's KV cache holds every committed token except the last
one (the *pending* token, the root of the next tree); the drafter has consumed every committed
token. With ``NoDrafter`` each round verifies the root alone, which is plain greedy/sampled
decoding through the very same code.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import torch

from .drafters import Drafter, NoDrafter
from .errors import MambaspecError
from .attention import use_packed_attention
from .kv import forward_chain, kv_bytes, new_kv_cache
from .sampling import SamplingConfig
from .tree import TreeShape
from .verify import verify_tree


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
    other_s: float = 0.0  # seconds - prefill_s - draft_s - verify_s: the loop's own overhead
    mean_tree_nodes: float = 0.0  # draft tokens per verification forward
    peak_mem_mb: float = 0.0  # CUDA: max allocated; CPU: peak resident set of the process
    drafter_state_bytes: int = 0  # drafter's recurrent state / KV cache after the prompt
    target_kv_bytes: int = 0  # target's KV cache after the prompt
    tree: str = ""  # the fixed shape, or "auto" when a policy chose it per round
    drafter: str = ""
    target_options: str = ""  # how the target's forward was made cheap (optimize.optimize_model): onednn, int8, ...
    stopped: str = ""  # "eos", "max_new_tokens" or "context"
    tree_policy: str = ""  # with a tree policy: what it is (reward, c, contexts)
    arms: list[dict] | None = None  # with a tree policy: per arm statistics (cumulative) and run_pulls (this call)

    def as_dict(self) -> dict:
        return asdict(self)


class TreePolicy(Protocol):
    """Chooses the tree shape of every round (e.g. ``bandit.UCBPolicy``)."""

    def choose(self, confidence: float | None = None) -> TreeShape: ...

    def observe(self, tokens: int, seconds: float, depth: int = 0, draft_s: float = 0.0, forward_s: float = 0.0,
                ranks: list[int] | None = None, confidences: list[float] | None = None) -> float: ...

    def begin_sequence(self) -> None: ...

    @property
    def wants_ranks(self) -> bool: ...  # observe wants the drafter's ranks of the committed tokens, choose its confidence

    def summary(self) -> list[dict]: ...


@dataclass
class GenerationResult:
    new_token_ids: list[int]
    stats: GenerationStats
    text: str = ""
    prompt_ids: list[int] = field(default_factory=list)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class SpeculativeGenerator:
    """Speculative decoding of ``target`` with ``drafter`` (``None`` or ``NoDrafter`` = plain decoding)."""

    def __init__(self, target, drafter: Drafter | None = None, tokenizer=None, eos_token_ids=None) -> None:
        self.target = target
        use_packed_attention(target)  # tree verification without copying grouped K/V heads
        self.drafter = drafter if drafter is not None else NoDrafter()
        self.tokenizer = tokenizer
        if eos_token_ids is None:
            eos = getattr(target.generation_config, "eos_token_id", None)
            if eos is None and tokenizer is not None:
                eos = tokenizer.eos_token_id
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_token_ids = set(eos_token_ids)
        self.vocab_size = target.get_output_embeddings().weight.shape[0]
        self.drafter.vocab_size = self.vocab_size
        cfg = target.config.get_text_config(decoder=True)
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int = 128,
        tree: TreeShape | str | TreePolicy = "1,1,1,1",
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` after ``prompt_ids``; ``on_tokens`` receives each round's tokens.

        ``tree`` is a fixed shape, or a policy that picks the shape of every round and learns from
        each round's outcome (its state carries over from call to call).
        """
        sampling = sampling or SamplingConfig()
        policy = tree if hasattr(tree, "choose") else None
        shape = TreeShape(()) if policy is not None else TreeShape.parse(tree)
        if isinstance(self.drafter, NoDrafter):
            shape, policy = TreeShape(()), None
        if not prompt_ids:
            raise MambaspecError("the prompt is empty; give some text to continue")
        if len(prompt_ids) >= self.context_length:
            raise MambaspecError(
                f"the prompt has {len(prompt_ids)} tokens but the target's context is {self.context_length}; "
                f"shorten the prompt")
        if max_new_tokens < 1:
            raise MambaspecError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        budget = min(max_new_tokens, self.context_length - len(prompt_ids))
        device = self.target.device
        generator = None
        if seed is not None or not sampling.greedy:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else torch.seed())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        stats = GenerationStats(tree="auto" if policy is not None else str(shape), drafter=self.drafter.name,
                                target_options=getattr(self.target, "_mambaspec_optimized", "stock"))
        start = time.perf_counter()
        cache = new_kv_cache()
        if len(prompt_ids) > 1:
            forward_chain(self.target, cache, prompt_ids[:-1])
        self.drafter.prefill(prompt_ids)
        _sync(device)
        stats.prefill_s = time.perf_counter() - start
        stats.target_kv_bytes = kv_bytes(cache)
        stats.drafter_state_bytes = self.drafter.state_bytes()

        out: list[int] = []
        pending = prompt_ids[-1]
        if policy is not None:
            policy.begin_sequence()
            stats.tree_policy = str(policy)
            pulls_before = {a["name"]: a["pulls"] for a in policy.summary()}
        ranked = policy is not None and policy.wants_ranks
        accepted_total = nodes_total = 0
        while True:
            remaining = budget - len(out)
            t0 = time.perf_counter()
            if policy is not None:
                shape = policy.choose(self.drafter.root_confidence() if ranked else None)
            draft = self.drafter.draft(pending, shape.truncated(remaining - 1), sampling, generator)
            _sync(device)
            t1 = time.perf_counter()
            verdict = verify_tree(self.target, cache, draft, sampling, generator)
            _sync(device)
            t2 = time.perf_counter()
            stats.draft_s += t1 - t0
            stats.verify_s += t2 - t1
            stats.target_forward_s += verdict.forward_s
            stats.rounds += 1
            accepted_total += len(verdict.tokens)
            nodes_total += len(draft) - 1

            new = verdict.tokens
            eos_at = next((i for i, t in enumerate(new) if t in self.eos_token_ids), None)
            if eos_at is not None:
                new = new[: eos_at + 1]
            out.extend(new)
            if on_tokens is not None:
                on_tokens(new)
            if eos_at is not None:
                stats.stopped = "eos"
            elif len(out) >= budget:
                stats.stopped = "max_new_tokens" if len(out) >= max_new_tokens else "context"
            else:
                t3 = time.perf_counter()
                self.drafter.commit(draft, verdict.path, verdict.tokens[-1])
                _sync(device)
                stats.draft_s += time.perf_counter() - t3
                pending = verdict.tokens[-1]
            if policy is not None:
                marks = self.drafter.committed_ranks(draft, verdict.path, new) if ranked else None
                ranks, confidences = marks or (None, None)
                policy.observe(len(new), time.perf_counter() - t0, depth=draft.depth, draft_s=t1 - t0,
                               forward_s=verdict.forward_s, ranks=ranks, confidences=confidences)
            if stats.stopped:
                break

        stats.seconds = time.perf_counter() - start
        stats.new_tokens = len(out)
        stats.tokens_per_s = stats.new_tokens / stats.seconds
        decode_s = stats.seconds - stats.prefill_s
        stats.decode_tokens_per_s = stats.new_tokens / decode_s if decode_s > 0 else 0.0
        stats.mean_accept_len = accepted_total / stats.rounds
        stats.mean_tree_nodes = nodes_total / stats.rounds
        stats.other_s = max(stats.seconds - stats.prefill_s - stats.draft_s - stats.verify_s, 0.0)
        stats.peak_mem_mb = peak_memory_mb(device)
        if policy is not None:
            stats.arms = [{**a, "run_pulls": a["pulls"] - pulls_before[a["name"]]} for a in policy.summary()]
        text = self.tokenizer.decode(out, skip_special_tokens=True) if self.tokenizer is not None else ""
        return GenerationResult(new_token_ids=out, stats=stats, text=text, prompt_ids=list(prompt_ids))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encode_prompt(tokenizer, prompt: str, chat: bool = True) -> list[int]:
    """Token ids for ``prompt``; wrapped in the tokenizer's chat template when it has one and ``chat``."""
    if not prompt or not prompt.strip():
        raise MambaspecError("the prompt is empty; give some text to continue")
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt)["input_ids"]
