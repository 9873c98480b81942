"""``MambaDrafter``: a transformers Mamba / Mamba2 model; no KV cache, a fixed-size state per sequence.

Branching is done by replicating the recurrent state along the batch (Mamba Drafters, arXiv
2506.01206, §3.2): each depth of the tree is ONE batched single-token step; the state after
every drafted depth is kept, so the state at the accepted node is reused without recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..hf_compat import with_cache
from .mamba_step import BatchedStep, mamba2_step, supports_fast_step
from .step import Reading, RewindableStep
from .vocab import DraftVocab

MAMBA_TYPES = ("mamba", "mamba2")
# up to this many tokens run as single steps (~2 ms each here), more as one chunked scan (~8 ms)
FAST_STEP_MAX_TOKENS = 3


@dataclass
class MambaState:
    """The recurrent state of every layer: conv window and SSM state, batch along dim 0."""

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]

    @classmethod
    def read(cls, cache: DynamicCache) -> MambaState:
        return cls([layer.conv_states[0] for layer in cache.layers],
                   [layer.recurrent_states[0] for layer in cache.layers])

    def install(self, cache: DynamicCache) -> None:
        """Make ``cache`` run from this state (the next step updates these tensors in place)."""
        for layer, conv, ssm in zip(cache.layers, self.conv, self.ssm):
            layer.conv_states[0] = conv
            layer.recurrent_states[0] = ssm

    def select(self, rows: list[int] | torch.Tensor) -> MambaState:
        """A new state whose batch row i is a copy of row ``rows[i]`` (replicates or picks)."""
        idx = torch.as_tensor(rows, device=self.conv[0].device)
        return MambaState([c.index_select(0, idx) for c in self.conv], [s.index_select(0, idx) for s in self.ssm])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.conv, *self.ssm))


class MambaDrafter(RewindableStep):
    """A Mamba or Mamba2 drafter."""

    name = "mamba"

    def __init__(self, model, tokenizer=None, name: str | None = None, draft_vocab: DraftVocab | None = None,
                 padded_steps: bool | None = None) -> None:
        super().__init__(model, tokenizer, name, draft_vocab)
        if model.config.model_type not in MAMBA_TYPES:
            raise ValueError(f"MambaDrafter needs a Mamba model, got {model.config.model_type}")
        # Mamba1 in transformers restarts its scan from zero when fed several tokens after a
        # prefill, so it is fed one token at a time; Mamba2 continues exactly.
        self.multi_token_steps = model.config.model_type == "mamba2"
        # Mamba2 steps after the prefill run through mamba_step.mamba2_step (same recurrence, no module overhead)
        self.fast_steps = supports_fast_step(model)
        # and, on CUDA (or when ``padded_steps``), batches padded to buckets, replayed from CUDA graphs on CUDA
        on_gpu = model.device.type == "cuda"
        self._step = BatchedStep(model, graphs=on_gpu) if (on_gpu if padded_steps is None else padded_steps) \
            else (lambda conv, ssm, tokens: mamba2_step(model, conv, ssm, tokens))
        self.cache: DynamicCache | None = None
        self.state: MambaState | None = None  # after the committed text, batch 1
        self._depth_states: list[MambaState] = []  # [d] = after feeding each node fed at depth d
        self._fed: dict[int, tuple[int, int]] = {}  # tree node -> (depth, row) of its state this round

    @property
    def batched_step(self) -> BatchedStep | None:
        """The padded, bucketed step the drafter's steps run through (CUDA graphs on CUDA); None: unpadded."""
        return self._step if isinstance(self._step, BatchedStep) else None

    @torch.inference_mode()
    def _run(self, state: MambaState | None, tokens: torch.Tensor, n_logits: int = 1
             ) -> tuple[torch.Tensor, MambaState]:
        """Feed ``tokens`` (B, L) from ``state`` (None = empty); the logits of the last ``n_logits``
        positions (B, n_logits, V) and the new state."""
        tokens = self.encode(tokens)
        if state is not None and self.fast_steps and tokens.shape[1] <= FAST_STEP_MAX_TOKENS:
            conv, ssm, kept = state.conv, state.ssm, []
            for column in tokens.unbind(1):
                logits, conv, ssm = self._step(conv, ssm, column)
                kept.append(logits[:, None])
            return torch.cat(kept[-n_logits:], dim=1), MambaState(conv, ssm)
        if state is None:
            self.cache = DynamicCache(config=self.model.config)
        else:
            state.install(self.cache)
        steps = [tokens] if (state is None or self.multi_token_steps) else tokens.split(1, dim=1)
        kept = [self.model(input_ids=chunk, **with_cache(self.model, self.cache), use_cache=True,
                           logits_to_keep=n_logits).logits.float()
                for chunk in steps]
        return torch.cat(kept, dim=1)[:, -n_logits:], MambaState.read(self.cache)

    def start(self, ids: list[int]) -> torch.Tensor:
        logits, self.state = self._run(None, torch.tensor([ids], device=self.model.device))
        self._depth_states, self._fed = [], {}
        return logits[:, -1]

    def begin_tree(self) -> None:
        self._depth_states, self._fed = [self.state], {}

    def expand(self, tree, depth, parent_rows, nodes):
        state = self._depth_states[depth - 1].select(parent_rows)
        tokens = torch.tensor([[tree.tokens[i]] for i in nodes], device=self.model.device)
        logits, state = self._run(state, tokens)
        self._depth_states.append(state)
        self._fed.update((node, (depth, row)) for row, node in enumerate(nodes))
        return logits[:, -1]

    def advance(self, tree, path, tokens) -> Reading:
        kept = [i for i in path if i in self._fed]  # accepted nodes whose state was computed while drafting
        unfed = [tree.tokens[i] for i in path if i not in self._fed] + tokens
        if kept:
            depth, row = self._fed[kept[-1]]
            state = self._depth_states[depth].select([row])
        else:
            state = self.state.select([0])  # the next step updates in place; keep self.state intact
        leaf_fed_here = bool(path) and path[-1] not in self._fed
        n_logits = len(tokens) + 1 if leaf_fed_here else 1
        logits, self.state = self._run(state, torch.tensor([unfed], device=self.model.device), n_logits)
        self._depth_states, self._fed = [], {}
        # the last accepted node was fed here: its logits rank the token after it (committed_ranks)
        return Reading(logits[:, -1], logits[:, 0] if leaf_fed_here else None)

    def state_bytes(self) -> int:
        return self.state.nbytes if self.state is not None else 0

    def save(self) -> object:
        # cheap: state tensors are never updated in place once stepped past (each step runs on a copy)
        return self.state

    def load(self, saved: object) -> None:
        self.state = saved  # type: ignore[assignment]
        self._depth_states, self._fed = [], {}
