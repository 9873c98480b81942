"""The decoding loop: draft a tree, verify it in one target forward, commit, repeat.

Invariants between rounds: the target's KV cache holds every committed token except the last
one (the *pending* token, the root of the next tree); the drafter has consumed every committed
token. With ``NoDrafter`` each round verifies the root alone, which is plain greedy/sampled
decoding through the very same code.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Generator

import torch

from ..errors import MambaspecError
from .drafter import Drafter, NoDrafter, ReadsTargetHidden, ReportsRanks
from .kv import final_hidden, forward_chain, kv_bytes, new_kv_cache
from .policy import FixedTree, TreePolicy, as_policy
from .sampling import GumbelNoise, SamplingConfig
from .shape import TreeShape
from .static import StaticKVCache, capacities, capture_seconds
from .static import supports as static_supports
from .stats import GenerationStats, RoundOutcome, StatsRecorder, sync
from .verify import verify_tree

STATIC_CAPACITY = 8192  # slots of the largest static KV cache (GPU): prompt + new tokens + the largest tree must fit
# room kept for a round's tree (dynamic trees, bandit arms, lookup chains; a fixed shape: its own)
STATIC_TREE_ROOM = 128


@dataclass
class GenerationResult:
    new_token_ids: list[int]
    stats: GenerationStats
    text: str = ""
    prompt_ids: list[int] = field(default_factory=list)


@dataclass
class _Run:
    """The state of one generation between rounds."""

    cache: object
    pending: int  # the last committed token, not yet read by the target
    context: int  # tokens the target has read
    budget: int  # tokens to generate at most (max_new_tokens, or less at the context limit)
    max_new_tokens: int
    policy: TreePolicy
    sampling: SamplingConfig
    generator: torch.Generator | GumbelNoise | None  # the randomness of sampling (GumbelNoise: the gumbel rule)
    recorder: StatsRecorder
    stop: Callable[[list[int]], bool] | None
    out: list[int] = field(default_factory=list)
    stopped: str = ""


class SpeculativeGenerator:
    """Speculative decoding of ``target`` with ``drafter`` (``None`` or ``NoDrafter`` = plain decoding).

    ``target`` is used as it is; ``loading.models.load_model`` is what makes it cheap (packed tree
    attention, packed linears) and says so in ``target_options``.
    """

    def __init__(self, target, drafter: Drafter | None = None, tokenizer=None, eos_token_ids=None,
                 target_options: str = "stock", static_kv: bool | None = None, cuda_graphs: bool = True,
                 static_capacity: int = STATIC_CAPACITY) -> None:
        self.target = target
        self.drafter = drafter if drafter is not None else NoDrafter()
        self.tokenizer = tokenizer
        self.target_options = target_options
        if eos_token_ids is None:
            eos = getattr(target.generation_config, "eos_token_id", None)
            if eos is None and tokenizer is not None:
                eos = tokenizer.eos_token_id
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_token_ids = set(eos_token_ids)
        self.vocab_size = target.get_output_embeddings().weight.shape[0]
        self.drafter.bind(self.vocab_size)
        cfg = target.config.get_text_config(decoder=True)
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)
        self.reads_hidden = isinstance(self.drafter, ReadsTargetHidden)
        # A static KV cache (core.static), by default on CUDA: fixed buffers, forwards replayed from CUDA graphs
        # (not for a drafter that reads the target's hidden states through a hook, which a replay does not run)
        # in caches of a few sizes, a sequence in the smallest that holds it (core.static.CAPACITIES)
        on_gpu = target.device.type == "cuda"
        self.static_caches: list[StaticKVCache] = []
        if (on_gpu if static_kv is None else static_kv) and static_supports(target):
            graphs = cuda_graphs and on_gpu and not self.reads_hidden
            self.static_caches = [StaticKVCache(c, graphs=graphs) for c in capacities(target, static_capacity)]
        self.static_cache: StaticKVCache | None = None  # the one the last generation used (None: a dynamic cache)

    def generate(self, prompt_ids: list[int], max_new_tokens: int = 128,
                 tree: TreeShape | str | TreePolicy = "1,1,1,1", sampling: SamplingConfig | None = None,
                 seed: int | None = None, on_tokens: Callable[[list[int]], None] | None = None,
                 stop: Callable[[list[int]], bool] | None = None) -> GenerationResult:
        """Generate up to ``max_new_tokens`` after ``prompt_ids``; ``on_tokens`` receives each round's tokens.

        ``seed`` fixes the random draws of sampling: under the (default) gumbel rule the text, whatever the tree and
        drafter (the same as with no drafter); under the rejection rule, the text for a given tree and drafter.
        ``tree`` is a fixed shape (a ``TreeShape`` or ``"2,1,1"``) or a policy object that picks the tree of every
        round and learns from each round's outcome (its state carries over from call to call); names such as
        ``"dynamic"`` and ``"auto"`` are resolved above the engine (``loading.trees.resolve_tree``, a ``Pipeline``).
        ``stop(new_ids)`` ends the generation after the round where it first returns True.
        """
        rounds = self.stream(prompt_ids, max_new_tokens, tree, sampling, seed, stop)
        while True:
            try:
                new = next(rounds)
            except StopIteration as done:
                return done.value
            if on_tokens is not None:
                on_tokens(new)

    def stream(self, prompt_ids: list[int], max_new_tokens: int = 128,
               tree: TreeShape | str | TreePolicy = "1,1,1,1", sampling: SamplingConfig | None = None,
               seed: int | None = None, stop: Callable[[list[int]], bool] | None = None
               ) -> Generator[list[int], None, GenerationResult]:
        """``generate`` as a generator: yields each round's new tokens, returns the ``GenerationResult``."""
        with torch.inference_mode():
            run = self._begin(prompt_ids, max_new_tokens, tree, sampling or SamplingConfig(), seed, stop)
        while not run.stopped:
            with torch.inference_mode():
                new = self._round(run)
            yield new
        stats = run.recorder.finish(len(run.out))
        stats.stopped, stats.policy_report = run.stopped, run.policy.report()
        text = self.tokenizer.decode(run.out, skip_special_tokens=True) if self.tokenizer is not None else ""
        return GenerationResult(new_token_ids=run.out, stats=stats, text=text, prompt_ids=list(prompt_ids))

    def _begin(self, prompt_ids, max_new_tokens, tree, sampling, seed, stop) -> _Run:
        """Check the request, read the prompt (target and drafter), set up the run."""
        if not prompt_ids:
            raise MambaspecError("the prompt is empty; give some text to continue")
        if len(prompt_ids) >= self.context_length:
            raise MambaspecError(f"the prompt has {len(prompt_ids)} tokens but the target's context is "
                                 f"{self.context_length}; shorten the prompt")
        if max_new_tokens < 1:
            raise MambaspecError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        policy = as_policy(tree)
        if isinstance(self.drafter, NoDrafter):
            policy = FixedTree(TreeShape(()))
        device = self.target.device
        generator = None
        if not sampling.greedy:
            seed = seed if seed is not None else torch.seed()
            if sampling.gumbel:  # the i-th new token is the Gumbel-max draw with noise fixed by (seed, i)
                generator = GumbelNoise(seed, self.vocab_size, device)
            else:
                generator = torch.Generator(device=device)
                generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stats = GenerationStats(tree=policy.name, drafter=self.drafter.name, target_options=self.target_options,
                                tree_policy="" if isinstance(policy, FixedTree) else policy.describe())
        recorder = StatsRecorder(stats, device)
        room = max(STATIC_TREE_ROOM,
                   policy.shape.num_nodes + STATIC_TREE_ROOM // 4 if isinstance(policy, FixedTree) else 0)
        cache = self._new_cache(len(prompt_ids) + max_new_tokens + room)
        with final_hidden(self.target) if self.reads_hidden else nullcontext([]) as states:
            if len(prompt_ids) > 1:
                forward_chain(self.target, cache, prompt_ids[:-1])
        if self.reads_hidden:
            self.drafter.prefill_hidden(states[0][0] if states else self._empty_hidden())
        self.drafter.prefill(prompt_ids)
        recorder.prefilled()
        stats.target_kv_bytes = kv_bytes(cache)
        stats.drafter_state_bytes = self.drafter.state_bytes()
        policy.begin_sequence(self.drafter)
        budget = min(max_new_tokens, self.context_length - len(prompt_ids))
        return _Run(cache, prompt_ids[-1], len(prompt_ids) - 1, budget, max_new_tokens, policy, sampling, generator,
                    recorder, stop)

    def _round(self, run: _Run) -> list[int]:
        """One round: draft, verify, commit; returns the new tokens (cut after an EOS)."""
        device = self.target.device
        t0, c0 = time.perf_counter(), capture_seconds()
        plan = run.policy.choose(self.drafter, run.context, run.budget - len(run.out))
        if isinstance(run.generator, GumbelNoise):
            run.generator.offset = len(run.out)  # the root's children are the next new token
        draft = self.drafter.draft(run.pending, plan, run.sampling, run.generator)
        sync(device)
        t1, c1 = time.perf_counter(), capture_seconds()
        verdict = verify_tree(self.target, run.cache, draft, run.sampling, run.generator, hidden=self.reads_hidden)
        sync(device)
        t2, c2 = time.perf_counter(), capture_seconds()
        new = verdict.tokens[: run.budget - len(run.out)]  # a tree may reach past the budget: cut, never exceed
        eos_at = next((i for i, t in enumerate(new) if t in self.eos_token_ids), None)
        if eos_at is not None:
            new = new[: eos_at + 1]
        run.out.extend(new)
        run.stopped = self._why_stop(run, eos_at is not None)
        if not run.stopped:
            if self.reads_hidden:
                self.drafter.take_hidden(verdict.hidden)
            self.drafter.commit(draft, verdict.path, verdict.tokens[-1])
            run.pending = verdict.tokens[-1]
        sync(device)
        t3, c3 = time.perf_counter(), capture_seconds()
        # times without any CUDA graph capture in them (a bucket's first use): what a round of this shape costs
        outcome = RoundOutcome(tokens=len(new), seconds=t3 - t0 - (c3 - c0), draft_s=t1 - t0 - (c1 - c0),
                               forward_s=max(verdict.forward_s - (c2 - c1), 0.0), nodes=len(draft) - 1,
                               depth=draft.depth, context=run.context, accepted=len(verdict.path), tree=draft,
                               path=verdict.path)
        if run.policy.wants_ranks and isinstance(self.drafter, ReportsRanks):
            outcome.ranks, outcome.confidences = self.drafter.committed_ranks(draft, verdict.path, new) or (None, None)
        run.policy.observe(outcome)
        run.recorder.round(outcome, verify_s=t2 - t1 - (c2 - c1), commit_s=t3 - t2 - (c3 - c2))  # captures: other_s
        run.context += len(verdict.tokens)
        return new

    def _new_cache(self, tokens: int):
        """The smallest static cache that ``tokens`` (the sequence and room for its largest tree) fit in, else a
        dynamic one."""
        self.static_cache = next((c for c in self.static_caches if tokens <= c.capacity), None)
        if self.static_cache is None:
            return new_kv_cache()
        self.static_cache.reset()
        return self.static_cache

    def _empty_hidden(self) -> torch.Tensor:
        width = self.target.config.get_text_config(decoder=True).hidden_size
        return torch.zeros(0, width, device=self.target.device, dtype=self.target.dtype)

    def _why_stop(self, run: _Run, eos: bool) -> str:
        if eos:
            return "eos"
        if run.stop is not None and run.stop(run.out):
            return "stop"
        if len(run.out) >= run.budget:
            return "max_new_tokens" if len(run.out) >= run.max_new_tokens else "context"
        return ""


def encode_prompt(tokenizer, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
    """Token ids for ``prompt``; wrapped in the tokenizer's chat template (with a ``system`` turn when
    given) when it has one and ``chat``."""
    if not prompt or not prompt.strip():
        raise MambaspecError("the prompt is empty; give some text to continue")
    if chat and getattr(tokenizer, "chat_template", None):
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    if system:
        raise MambaspecError("a system turn needs a chat template; this tokenizer has none (or chat is off)")
    return tokenizer(prompt)["input_ids"]
