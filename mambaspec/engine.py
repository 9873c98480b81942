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
from typing import Callable

import torch

from .drafters import Drafter, NoDrafter
from .errors import MambaspecError
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
    tree: str = ""
    drafter: str = ""
    stopped: str = ""  # "eos", "max_new_tokens" or "context"

    def as_dict(self) -> dict:
        return asdict(self)


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


def check_same_tokenizer(target_tok, drafter_tok, drafter_name: str) -> None:
    """Refuse a drafter whose token ids mean something else than the target's."""
    if target_tok is None or drafter_tok is None:
        return
    if target_tok.get_vocab() != drafter_tok.get_vocab():
        raise MambaspecError(
            f"drafter '{drafter_name}' uses a different tokenizer than the target "
            f"({len(drafter_tok)} vs {len(target_tok)} tokens); cross-tokenizer drafting is not supported yet: "
            f"pick a drafter trained on the target's tokenizer, or --drafter none")


class SpeculativeGenerator:
    """Speculative decoding of ``target`` with ``drafter`` (``None`` or ``NoDrafter`` = plain decoding)."""

    def __init__(self, target, drafter: Drafter | None = None, tokenizer=None, eos_token_ids=None) -> None:
        self.target = target
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
        tree: TreeShape | str = "1,1,1,1",
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` after ``prompt_ids``; ``on_tokens`` receives each round's tokens."""
        sampling = sampling or SamplingConfig()
        shape = TreeShape.parse(tree)
        if isinstance(self.drafter, NoDrafter):
            shape = TreeShape(())
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

        stats = GenerationStats(tree=str(shape), drafter=self.drafter.name)
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
        accepted_total = nodes_total = 0
        while True:
            remaining = budget - len(out)
            t0 = time.perf_counter()
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
                break
            if len(out) >= budget:
                stats.stopped = "max_new_tokens" if len(out) >= max_new_tokens else "context"
                break
            t3 = time.perf_counter()
            self.drafter.commit(draft, verdict.path, verdict.tokens[-1])
            _sync(device)
            stats.draft_s += time.perf_counter() - t3
            pending = verdict.tokens[-1]

        stats.seconds = time.perf_counter() - start
        stats.new_tokens = len(out)
        stats.tokens_per_s = stats.new_tokens / stats.seconds
        decode_s = stats.seconds - stats.prefill_s
        stats.decode_tokens_per_s = stats.new_tokens / decode_s if decode_s > 0 else 0.0
        stats.mean_accept_len = accepted_total / stats.rounds
        stats.mean_tree_nodes = nodes_total / stats.rounds
        stats.other_s = max(stats.seconds - stats.prefill_s - stats.draft_s - stats.verify_s, 0.0)
        stats.peak_mem_mb = peak_memory_mb(device)
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
