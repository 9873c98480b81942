"""An EAGLE-style self-speculation head: the seed's strongest baseline, in the same engine.

EAGLE-1 (Li et al. 2024, arXiv 2401.15077): one decoder layer reads, at position t, the target's last
hidden state f_t (the output layer's input) fused with the embedding of the token x_{t+1}
(``fc([f_t; e(x_{t+1})])``), predicts the next hidden state f_{t+1}, and an output layer (here over a
draft vocabulary, initialised from the target's own output rows) turns it into the draft of x_{t+2}.
Deeper draft levels feed the head's own predicted features. After verification the target's true
hidden states of the accepted tokens replace the predicted ones: the head's cache drops every draft
entry and reads the accepted pairs again (``take_hidden`` + ``advance``).

It reads the target's hidden states (``ReadsTargetHidden``) and uses the target's input embeddings,
so it serves only the target it was trained on; trees, dynamic trees and lazy commits come from
``step.StepDrafter`` as for the Mamba and Transformer drafters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..core.drafter import ReadsTargetHidden
from ..core.kv import forward_chain, forward_tree, keep_slots, kv_bytes, new_kv_cache
from ..errors import MambaspecError
from ..hf_compat import with_cache
from .step import Reading, StepDrafter
from .vocab import META_FILE, DraftVocab, vocab_from_meta

WEIGHTS = "model.safetensors"


class EagleHead(nn.Module):
    """``fc`` over [feature; token embedding] -> one Llama decoder layer (its own KV cache) -> ``head`` logits.

    ``last_hidden`` holds the predicted features of the last forward (the next level's input).
    """

    def __init__(self, hidden: int, heads: int, kv_heads: int, intermediate: int, vocab: int,
                 max_positions: int = 8192, rope_theta: float = 10000.0, rms_eps: float = 1e-5) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        self.config = LlamaConfig(vocab_size=1, hidden_size=hidden, intermediate_size=intermediate,
                                  num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                  max_position_embeddings=max_positions, rope_theta=rope_theta, rms_norm_eps=rms_eps)
        self.config._attn_implementation = "sdpa"
        self.fc = nn.Linear(2 * hidden, hidden)
        self.decoder = LlamaModel(self.config)
        self.decoder.norm = nn.Identity()  # the output is a predicted (already normed) target feature
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.last_hidden: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device  # (the linear layers may be packed: no .weight)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    def settings(self) -> dict:
        c = self.config
        return {"hidden": c.hidden_size, "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
                "intermediate": c.intermediate_size, "vocab": self.head.out_features,
                "max_positions": c.max_position_embeddings, "rope_theta": rope_theta(c), "rms_eps": c.rms_norm_eps}

    def fuse(self, features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([features.to(self.dtype), embeddings.to(self.dtype)], dim=-1))

    def forward(self, inputs_embeds: torch.Tensor, position_ids=None, attention_mask=None, cache=None,
                use_cache: bool = False, logits_to_keep: int = 0, **_):
        out = self.decoder(inputs_embeds=inputs_embeds, position_ids=position_ids, attention_mask=attention_mask,
                           **with_cache(self.decoder, cache), use_cache=use_cache)
        self.last_hidden = out.last_hidden_state
        hidden = self.last_hidden[:, -logits_to_keep:] if logits_to_keep else self.last_hidden
        return _Logits(self.head(hidden))


def rope_theta(config) -> float:
    """The rotary base of a config (transformers 5 keeps it in ``rope_parameters``)."""
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


class _Logits:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class EagleDrafter(StepDrafter, ReadsTargetHidden):
    """Drafts with an ``EagleHead`` from the target's hidden states; ``embed``: the target's input embeddings."""

    name = "eagle"

    def __init__(self, head: EagleHead, embed: nn.Module, tokenizer=None, name: str | None = None,
                 draft_vocab: DraftVocab | None = None) -> None:
        super().__init__(head, tokenizer, name, draft_vocab)
        self.embed = embed
        self.cache = None
        self._committed = 0  # head cache entries of committed pairs
        self._fed: list[int] = []
        self._prompt_features: torch.Tensor | None = None
        self._features: list[torch.Tensor] = []  # the target's features of committed tokens not read yet
        self._node_feature: dict[int, torch.Tensor] = {}  # tree node -> the head's predicted feature there

    @property
    def own_width(self) -> int:
        return self.model.head.out_features

    def _embeds(self, features: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor(tokens, device=self.embed.weight.device)
        return self.model.fuse(features, self.embed(ids))[None]

    def prefill_hidden(self, hidden: torch.Tensor) -> None:
        self._prompt_features = hidden

    @torch.inference_mode()
    def start(self, ids: list[int]) -> torch.Tensor:
        self.cache, self._committed, self._fed, self._features = new_kv_cache(), 0, [], []
        features = self._prompt_features if self._prompt_features is not None else torch.zeros(0, 1)
        pairs = min(len(ids) - 1, len(features))  # pair t: (the target's feature at t, token t + 1)
        if pairs:
            logits = forward_chain(self.model, self.cache, None, embeds=self._embeds(features[-pairs:], ids[-pairs:]))
            self._committed = pairs
            self._root_feature = self.model.last_hidden[0, -1]
        else:  # a one-token prompt: nothing to read yet
            self._root_feature = torch.zeros(self.model.config.hidden_size, device=self.model.device)
            logits = self.model.head(self._root_feature.to(self.model.dtype))[None].float()
        self._prompt_features = None
        return logits[-1:]

    def begin_tree(self) -> None:
        self._fed, self._node_feature = [], {0: self._root_feature}

    @torch.inference_mode()
    def expand(self, tree, depth, parent_rows, nodes):
        features = torch.stack([self._node_feature[tree.parents[i]] for i in nodes])
        self._fed.extend(nodes)
        visible = tree.ancestor_mask()[nodes][:, self._fed]
        positions = [self._committed - 1 + tree.depths[i] for i in self._fed]
        logits = forward_tree(self.model, self.cache, None, positions, visible,
                              embeds=self._embeds(features, [tree.tokens[i] for i in nodes]))
        self._node_feature.update((n, self.model.last_hidden[0, row]) for row, n in enumerate(nodes))
        return logits

    def take_hidden(self, hidden: torch.Tensor) -> None:
        self._features.append(hidden)

    @torch.inference_mode()
    def advance(self, tree, path, tokens) -> Reading:
        keep_slots(self.cache, self._committed, [])  # draft entries were read with predicted features: drop them
        features = torch.cat(self._features)
        pairs = [tree.tokens[i] for i in path] + tokens
        if len(features) != len(pairs):
            raise RuntimeError(f"eagle: {len(features)} target features for {len(pairs)} committed tokens")
        logits = forward_chain(self.model, self.cache, None, all_logits=len(pairs) > 1,
                               embeds=self._embeds(features, pairs))
        self._committed += len(pairs)
        self._features, self._fed = [], []
        self._root_feature = self.model.last_hidden[0, -1]
        return Reading(logits[-1:], logits[len(path) - 1:len(path)] if path and len(tokens) == 1 else None)

    def state_bytes(self) -> int:
        return kv_bytes(self.cache) if self.cache is not None else 0


def save_head(head: EagleHead, folder: str | Path, meta: dict) -> None:
    """The head in float16 (``model.safetensors``), its shape (``config.json``) and ``mambaspec.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in head.state_dict().items()}, folder / WEIGHTS)
    (folder / "config.json").write_text(json.dumps({"model_type": "mambaspec-eagle", **head.settings()}))
    (folder / META_FILE).write_text(json.dumps({**meta, "arch": "eagle"}))
    for f in folder.iterdir():
        f.chmod(0o644)


def is_eagle(meta: dict) -> bool:
    return meta.get("arch") == "eagle"


def load_eagle(folder: str | Path, meta: dict, target, name: str | None = None) -> EagleDrafter:
    """The EAGLE head in ``folder`` for ``target`` (a ``LoadedModel``: its embeddings, tokenizer and options)."""
    from safetensors.torch import load_file

    from ..cpu.linears import onednn_usable, pack_linears

    folder = Path(folder)
    settings = json.loads((folder / "config.json").read_text())
    settings.pop("model_type", None)
    width = target.model.config.get_text_config(decoder=True).hidden_size
    if settings["hidden"] != width or meta.get("target_vocab_size") not in (None, len(target.tokenizer)):
        raise MambaspecError(f"EAGLE head {folder} was trained on the hidden states of '{meta.get('tokenizer')}' "
                             f"({settings['hidden']} wide); it cannot draft for this target ({width} wide): a "
                             f"self-speculation head serves only its own target")
    head = EagleHead(**settings)
    head.load_state_dict({k: v.float() for k, v in load_file(folder / WEIGHTS).items()})
    head.to(target.device).eval().requires_grad_(False)
    if target.options.linear != "torch" and onednn_usable(head):  # the drafters' linear backend, as load_model gives
        pack_linears(head)
    vocab = vocab_from_meta(meta)
    return EagleDrafter(head, target.model.get_input_embeddings(), target.tokenizer, name or folder.name, vocab)
