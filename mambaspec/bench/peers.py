"""The peers the bench compares against: transformers' own speculative decoding, measured like our loop.

- assisted generation, ``generate(assistant_model=...)`` (Leviathan et al. 2023 / Chen et al.
  2023 chain drafting, with transformers' dynamic draft length and confidence threshold);
- prompt lookup decoding, ``generate(prompt_lookup_num_tokens=...)`` (Saxena 2023: drafts are
  n-grams copied from the prompt).

``hf_generate`` runs either and fills the same ``GenerationStats`` as our loop, from forward
hooks on the models and a streamer that sees every round. ``full_vocab_assistant`` lets a
drafter with a pruned draft vocabulary serve as a same-tokenizer assistant.
"""

from __future__ import annotations

import copy
import time

import torch

from ..core.engine import GenerationResult
from ..core.kv import kv_bytes, kv_length
from ..core.sampling import SamplingConfig
from ..core.stats import GenerationStats, sync
from ..cpu.linears import OneDNNLinear
from ..drafters.step import StepDrafter
from ..errors import MambaspecError


def full_vocab_assistant(drafter: StepDrafter, vocab_size: int) -> torch.nn.Module:
    """The drafter's model as an assistant that speaks the target's whole vocabulary.

    transformers' assisted generation treats an assistant whose vocabulary size differs from the
    target's as a different tokenizer. A drafter with a draft vocabulary (``vocab.DraftVocab``,
    K target ids + one bucket) is given a copy with an input embedding row for every target id
    (the draft row for the K ids, the bucket row for all others) and an output layer over every
    target id (the draft rows; a bias of 0 on the K ids and -1e4 elsewhere, so that no other id
    is ever proposed). Same logits over the K ids as the drafter itself; a drafter without a
    draft vocabulary is returned as it is.
    """
    model = drafter.model
    vocab = drafter.draft_vocab
    if vocab is None:
        own = model.config.get_text_config().vocab_size
        if own != vocab_size:
            raise MambaspecError(f"hf-assisted needs a drafter with the target's vocabulary ({vocab_size} ids); "
                                 f"'{drafter.name}' has {own}")
        return model
    weight_in = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    rows = vocab.encode(torch.arange(vocab_size)).to(weight_in.device)  # target id -> draft row (bucket = K)
    view = copy.deepcopy(model)
    embed = torch.nn.Embedding(vocab_size, weight_in.shape[1], device=weight_in.device, dtype=weight_in.dtype)
    lm_head = torch.nn.Linear(head.weight.shape[1], vocab_size, bias=True, device=weight_in.device,
                              dtype=head.weight.dtype)
    with torch.no_grad():
        embed.weight.copy_(weight_in[rows])
        lm_head.weight.copy_(head.weight[rows])
        lm_head.bias.fill_(-1e4)
        lm_head.bias[vocab.to_target.to(weight_in.device)] = 0.0
        if getattr(head, "bias", None) is not None:
            lm_head.bias += head.bias[rows]
    if isinstance(head, OneDNNLinear):  # the drafter's layers are packed: so is the view's new head
        lm_head = OneDNNLinear(lm_head, keep_weight=True)
    view.set_input_embeddings(embed)
    view.set_output_embeddings(lm_head)
    view.config.get_text_config().vocab_size = vocab_size
    view.config.tie_word_embeddings = False
    view.requires_grad_(False)
    return view


class _ForwardLog:
    """Times a model's forwards through hooks; keeps the input length of each and the KV bytes after the first."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.device = model.device
        self.seconds: list[float] = []
        self.inputs: list[int] = []
        self.first_kv: tuple[int, int] | None = None  # (bytes, tokens) of the cache after the first forward
        self._t0 = 0.0
        self._hooks = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                       model.register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.inputs.append(int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else 0)
        sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, module, args, output) -> None:
        sync(self.device)
        self.seconds.append(time.perf_counter() - self._t0)
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        if self.first_kv is None and cache is not None:
            self.first_kv = (kv_bytes(cache), kv_length(cache))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


class _RoundLog:
    """A transformers streamer: the time and the number of tokens of every round (the prompt's put skipped)."""

    def __init__(self) -> None:
        self.rounds: list[tuple[float, int]] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.rounds.append((time.perf_counter(), int(value.numel())))
        self._prompt_seen = True

    def end(self) -> None:
        pass


def hf_generate(
    model,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_token_ids: list[int],
    seed: int | None = None,
    assistant=None,
    prompt_lookup_tokens: int | None = None,
    drafter_name: str = "",
    tokenizer=None,
    assistant_tokenizer=None,
) -> GenerationResult:
    """transformers' own ``generate`` (assisted, prompt lookup, or plain), measured like our loop.

    ``tokenizer`` and ``assistant_tokenizer`` (an assistant with another tokenizer) select
    transformers' universal assisted generation. See ``_stats`` for how the stats are read.
    """
    from transformers import GenerationConfig

    device = model.device
    eos = list(eos_token_ids) or None
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=not sampling.greedy, eos_token_id=eos,
                           pad_token_id=eos[0] if eos else None)
    if not sampling.greedy:
        cfg.temperature, cfg.top_k, cfg.top_p = sampling.temperature, sampling.top_k, sampling.top_p
    if prompt_lookup_tokens:
        cfg.prompt_lookup_num_tokens = prompt_lookup_tokens
    ids = torch.tensor([prompt_ids], device=device)
    if seed is not None:
        torch.manual_seed(seed)
    target_log = _ForwardLog(model)
    assistant_log = _ForwardLog(assistant) if assistant is not None else None
    rounds = _RoundLog()
    tokenizers = {"tokenizer": tokenizer, "assistant_tokenizer": assistant_tokenizer} if assistant_tokenizer else {}
    try:
        sync(device)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg,
                             assistant_model=assistant, streamer=rounds, **tokenizers)
        sync(device)
        seconds = time.perf_counter() - start
    except ValueError as err:  # transformers refusing the combination (e.g. a stateful model)
        raise MambaspecError(f"transformers' generate refused: {' '.join(str(err).split())}") from None
    finally:
        target_log.remove()
        if assistant_log is not None:
            assistant_log.remove()
    new = out[0, len(prompt_ids):].tolist()[:max_new_tokens]
    eos_at = next((i for i, t in enumerate(new) if t in set(eos_token_ids)), None)
    if eos_at is not None:
        new = new[: eos_at + 1]
    stats = _stats(new, len(prompt_ids), start, seconds, rounds, target_log, assistant_log)
    stats.drafter = drafter_name or ("prompt-lookup" if prompt_lookup_tokens else "none")
    stats.stopped = "eos" if eos_at is not None else "max_new_tokens"
    return GenerationResult(new_token_ids=new, stats=stats, prompt_ids=list(prompt_ids))


def _stats(new: list[int], prompt_len: int, start: float, seconds: float, rounds: _RoundLog,
           target_log: _ForwardLog, assistant_log: _ForwardLog | None) -> GenerationStats:
    """Our stats from transformers' run. It reads the prompt in the same forward that verifies the first
    drafts, so ``prefill_s`` is the time to the end of that first round and the decode throughput counts
    the tokens after it. ``rounds`` are the target's forwards, ``mean_accept_len`` the tokens committed
    per forward, ``mean_tree_nodes`` the draft tokens each forward verified, ``verify_s`` the target's
    forwards after the first, ``draft_s`` everything else after the first round (the assistant or the
    n-gram lookup, and transformers' own loop). KV bytes are measured on the caches after their first
    forward: the assistant's holds the prompt; the target's is scaled to the prompt less its last token,
    as our loop holds it."""
    stats = GenerationStats(new_tokens=len(new), seconds=seconds)
    stats.rounds = len(rounds.rounds)
    stats.prefill_s = rounds.rounds[0][0] - start if rounds.rounds else seconds
    first_tokens = min(rounds.rounds[0][1], len(new)) if rounds.rounds else len(new)
    decode_s = seconds - stats.prefill_s
    stats.decode_tokens_per_s = (len(new) - first_tokens) / decode_s if decode_s > 0 else 0.0
    stats.tokens_per_s = len(new) / seconds
    stats.mean_accept_len = len(new) / max(stats.rounds, 1)
    drafted = [target_log.inputs[0] - prompt_len] + [n - 1 for n in target_log.inputs[1:]]
    stats.mean_tree_nodes = sum(drafted) / len(drafted)
    stats.no_draft_rounds = sum(d == 0 for d in drafted) / len(drafted)
    stats.verify_s = stats.target_forward_s = sum(target_log.seconds[1:])
    stats.draft_s = max(decode_s - stats.verify_s, 0.0)
    if target_log.first_kv:
        kv, tokens = target_log.first_kv
        stats.target_kv_bytes = kv * (prompt_len - 1) // max(tokens, 1)
    if assistant_log is not None and assistant_log.first_kv:
        stats.drafter_state_bytes = assistant_log.first_kv[0]
    return stats
