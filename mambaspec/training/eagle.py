"""Training an EAGLE-style head (``drafters.eagle``): the target's hidden states of the distillation rows,
computed once and cached, and the EAGLE-1 loss.

Features: the target reads every (training) row once; its last hidden state at every position is kept
in float16 under ``$MAMBASPEC_CACHE/features/`` (resumable: saved every few hundred rows), up to
``recipe.eagle_tokens`` tokens. Loss (EAGLE-1, arXiv 2401.15077 §4): the head reads the pairs
(f_t, x_{t+1}); its output at t regresses f_{t+1} (smooth L1) and, through the output layer, predicts
x_{t+2} (cross-entropy, weight 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import cache_dir, write_atomically
from ..core.kv import final_hidden
from ..drafters.eagle import EagleHead, rope_theta
from ..drafters.vocab import DraftVocab
from .data import Batch, _fit
from .recipe import DrafterRecipe

CLS_WEIGHT = 0.1
SAVE_EVERY = 200  # rows between feature checkpoints


@dataclass
class FeatureBatch(Batch):
    features: torch.Tensor | None = None  # (B, L + 1, hidden) float16: the target's feature at every token


@dataclass
class FeatureData:
    """Distillation rows as one stream of ids and the target's features, windows starting at row starts."""

    ids: torch.Tensor  # (N,) int32
    features: torch.Tensor  # (N, hidden) float16
    starts: torch.Tensor
    heldout: list[dict]

    def batch(self, step: int, recipe: DrafterRecipe) -> FeatureBatch:
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        length, size = recipe.seq_len_at(step), recipe.batch_at(step)
        ok = self.starts[self.starts < max(1, len(self.ids) - length - 1)]
        picks = ok[torch.randint(0, len(ok), (size,), generator=g)].tolist()
        ids = torch.stack([_fit(self.ids[s:s + length + 1].long(), length + 1, 0) for s in picks])
        feats = torch.stack([_fit(self.features[s:s + length + 1], length + 1, 0.0) for s in picks])
        return FeatureBatch(ids, torch.ones(size, length), features=feats)


@torch.inference_mode()
def target_features(target, rows: list[dict], name: str, budget: int, log) -> dict[str, torch.Tensor]:
    """The target's last hidden state at every token of ``rows`` (``key`` and ``ids`` each), in order until
    ``budget`` tokens; cached under ``name`` by row key, a cached entry used only when its length is the row's."""
    path = cache_dir() / "features" / f"{name}.pt"
    cached: dict[str, torch.Tensor] = torch.load(path) if path.exists() else {}
    out: dict[str, torch.Tensor] = {}
    total = made = 0
    for row in rows:
        if total >= budget:
            break
        feats = cached.get(row["key"])
        if feats is None or len(feats) != len(row["ids"]):  # missing, or made from another row of that id
            ids = torch.as_tensor(row["ids"], dtype=torch.long, device=target.device)[None]
            with final_hidden(target) as states:
                target(input_ids=ids, logits_to_keep=1)
            feats = cached[row["key"]] = states[0][0].to(torch.float16).cpu()
            made += 1
            if made % SAVE_EVERY == 0:
                _save(cached, path)
                log(f"eagle features: {len(out) + 1} rows, {total + len(feats):,} tokens")
        out[row["key"]] = feats
        total += len(feats)
    if made:
        _save(cached, path)
    return out


def _save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def feature_data(recipe: DrafterRecipe, target_name: str, get_target, log) -> FeatureData:
    """The recipe's distillation sets with the target's features (made first when missing)."""
    from .data_recipe import DataRecipe
    from .datagen import make_data, read_shards

    rows, heldout = [], []
    sets = [src["set"] for src in recipe.data if src["source"] == "distill"]
    for name in sets:
        folder = make_data(DataRecipe.named(name), get_target, log)
        for r in read_shards(folder):  # ids are unique within a set, not across sets
            r["key"] = r["id"] if len(sets) == 1 else f"{name}/{r['id']}"
            (heldout if r["split"] == "heldout" else rows).append(r)
    if not rows:
        from ..errors import MambaspecError

        raise MambaspecError("an eagle head learns from the target's answers: the recipe needs a distill source")
    name = f"{Path(target_name).name}-" + "-".join(s["set"] for s in recipe.data if s["source"] == "distill")
    log(f"eagle: the target's hidden states of the training rows (up to {recipe.eagle_tokens:,} tokens) ...")
    features = target_features(get_target().model, rows, name, recipe.eagle_tokens, log)
    kept = [r for r in rows if r["key"] in features]
    starts, pos = [], 0
    for r in kept:
        starts.append(pos)
        pos += len(r["ids"])
    return FeatureData(torch.cat([torch.as_tensor(r["ids"], dtype=torch.int32) for r in kept]),
                       torch.cat([features[r["key"]] for r in kept]), torch.tensor(starts), heldout)


def build_head(recipe: DrafterRecipe, target, vocab: DraftVocab | None) -> EagleHead:
    """A fresh head shaped like the target's layers, its output rows copied from the target's output layer."""
    cfg = target.config.get_text_config(decoder=True)
    torch.manual_seed(recipe.seed)
    rows = vocab.to_target if vocab is not None else torch.arange(cfg.vocab_size)
    head = EagleHead(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, recipe.eagle_intermediate,
                     len(rows) + (1 if vocab is not None else 0), cfg.max_position_embeddings,
                     rope_theta(cfg), getattr(cfg, "rms_norm_eps", 1e-5))
    with torch.no_grad():
        head.head.weight[: len(rows)] = target.get_output_embeddings().weight[rows].float()
    return head


def eagle_loss(model: EagleHead, batch: FeatureBatch, vocab: DraftVocab | None, embed, device) -> torch.Tensor:
    ids, feats = batch.ids.to(device), batch.features.to(device).float()
    with torch.no_grad():
        tokens = embed(ids[:, 1:])
    pred = model.decoder(inputs_embeds=model.fuse(feats[:, :-1], tokens)).last_hidden_state  # predicts f_{t+1}
    reg = F.smooth_l1_loss(pred, feats[:, 1:])
    labels = ids[:, 2:]
    if vocab is not None:
        labels = vocab.encode(labels)
    logits = model.head(pred[:, :-1]).float()
    ignore = vocab.size - 1 if vocab is not None else -100
    cls = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore)
    return reg + CLS_WEIGHT * cls
