"""A draft vocabulary: the drafter predicts only the K target tokens that matter most.

On a CPU the drafter's output layer over a 49,152-token vocabulary is about two thirds of a
drafter step (design.md §3); a pruned draft vocabulary (FR-Spec, arXiv 2502.14856; EAGLE-3)
shrinks it. Drafter id ``i < K`` stands for target id ``target_ids[i]``; drafter id ``K`` is a
shared input bucket for every other target token (never proposed as a draft).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

META_FILE = "mambaspec.json"


class DraftVocab:
    def __init__(self, target_ids: list[int], target_vocab_size: int) -> None:
        if len(set(target_ids)) != len(target_ids):
            raise ValueError("draft vocabulary has duplicate target ids")
        self.target_ids = list(target_ids)
        self.target_vocab_size = target_vocab_size
        k = len(target_ids)
        self.to_draft = torch.full((target_vocab_size,), k, dtype=torch.long)
        self.to_draft[torch.tensor(target_ids)] = torch.arange(k)
        self.to_target = torch.tensor(target_ids, dtype=torch.long)

    @property
    def size(self) -> int:
        """Rows of the drafter's embedding: K draft tokens plus the shared bucket."""
        return len(self.target_ids) + 1

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Target ids -> drafter ids (tokens outside the draft vocabulary -> the bucket)."""
        return self.to_draft.to(ids.device)[ids]

    def logits_to_target(self, logits: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Drafter logits (..., K+1) -> target-width logits, -inf outside the draft vocabulary."""
        width = width or self.target_vocab_size
        out = logits.new_full((*logits.shape[:-1], width), float("-inf"))
        k = len(self.target_ids)
        out[..., self.to_target.to(logits.device)] = logits[..., :k]
        return out

    @classmethod
    def from_counts(cls, counts: torch.Tensor, k: int, always: list[int] = ()) -> DraftVocab:
        """The ``k`` most frequent target ids (``always`` included, e.g. EOS)."""
        order = torch.argsort(counts, descending=True, stable=True).tolist()
        chosen = list(dict.fromkeys([*always, *order]))[:k]
        return cls(sorted(chosen), counts.numel())


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def vocab_from_meta(meta: dict) -> DraftVocab | None:
    if "draft_vocab" not in meta:
        return None
    return DraftVocab(meta["draft_vocab"], meta["target_vocab_size"])
