"""A draft vocabulary: the drafter predicts only the K target tokens that matter most.

On a CPU the drafter's output layer over a 49,152-token vocabulary is about two thirds of a
drafter step; a pruned draft vocabulary (FR-Spec, arXiv 2502.14856; EAGLE-3) shrinks it.
Drafter id ``i < K`` stands for target id ``target_ids[i]``; drafter id ``K`` is a shared input
bucket for every other target token (never proposed as a draft).

``Candidates`` maps between a drafter's output columns and target ids, with or without a draft
vocabulary: the columns a drafter may propose, their target ids, and back.
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
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``to_draft`` and ``to_target`` on ``device``, copied there once (not at every drafter step: on a GPU
        each copy of the target-wide table would be a blocking host-to-device transfer)."""
        if device not in self._tables:
            self._tables[device] = (self.to_draft.to(device), self.to_target.to(device))
        return self._tables[device]

    @property
    def size(self) -> int:
        """Rows of the drafter's embedding: K draft tokens plus the shared bucket."""
        return len(self.target_ids) + 1

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Target ids -> drafter ids (tokens outside the draft vocabulary -> the bucket)."""
        return self.tables(ids.device)[0][ids]

    @classmethod
    def from_counts(cls, counts: torch.Tensor, k: int, always: list[int] = ()) -> DraftVocab:
        """The ``k`` most frequent target ids (``always`` included, e.g. EOS)."""
        order = torch.argsort(counts, descending=True, stable=True).tolist()
        chosen = list(dict.fromkeys([*always, *order]))[:k]
        return cls(sorted(chosen), counts.numel())


class Candidates:
    """The columns of a drafter's output that it may propose, as target ids.

    With a draft vocabulary: columns ``0..K-1`` (the bucket is never proposed). Without one: the
    columns the target's vocabulary also has (a model with padded rows proposes none of the pads).
    """

    def __init__(self, vocab: DraftVocab | None, target_width: int, own_width: int) -> None:
        self.vocab = vocab
        self.target_width = target_width
        self.width = len(vocab.target_ids) if vocab is not None else min(target_width, own_width)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., own width) logits -> (..., width) logits of the proposable columns."""
        return logits[..., : self.width]

    def target_ids(self, columns: list[int]) -> list[int]:
        if self.vocab is None:
            return list(columns)
        return self.vocab.to_target[torch.tensor(columns, dtype=torch.long)].tolist()

    def column(self, target_id: int) -> int | None:
        """The column proposing ``target_id``, None when the drafter can never propose it."""
        if self.vocab is None:
            return target_id if target_id < self.width else None
        col = int(self.vocab.to_draft[target_id]) if target_id < self.vocab.target_vocab_size else self.width
        return col if col < self.width else None

    def columns(self, row: torch.Tensor) -> torch.Tensor:
        """A target-width row (..., target width) -> its values at the proposable columns (..., width)."""
        if self.vocab is None:
            return row[..., : self.width]
        return row[..., self.vocab.tables(row.device)[1]]

    def to_target_width(self, rows: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(B, width) rows (probabilities or logits) -> (B, target width), ``fill`` elsewhere."""
        out = rows.new_full((rows.shape[0], self.target_width), fill)
        if self.vocab is None:
            out[:, : self.width] = rows
        else:
            out[:, self.vocab.tables(rows.device)[1]] = rows
        return out


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def vocab_from_meta(meta: dict) -> DraftVocab | None:
    if "draft_vocab" not in meta:
        return None
    return DraftVocab(meta["draft_vocab"], meta["target_vocab_size"])
