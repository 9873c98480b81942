"""Text labelled by the target: what the target itself predicts after every token of a text stream.

A drafter is scored by how often it proposes the token the target would choose, not the text's own
next token. On real text the two differ: on the Python standard library's source SmolLM2-135M's
argmax is the real next token at 63.9 % of positions (the log of ``recipes/drafters/relabel/target.yaml``), so a
language-model stream teaches the drafter to disagree with its target on the rest. ``labels: target`` on a text
source (``stdlib-code``, ``files``) trains on the target's argmax instead, at every position of a sample of the
stream's windows — the real text stays the drafter's input.

The sample: the stream cut into windows of ``WINDOW`` tokens, in a seeded order, the first
``ceil(tokens / WINDOW)`` of them; the target reads each window from its start (its prediction at
position i sees the window's tokens up to i). Chunks of windows are cached under
``$MAMBASPEC_CACHE/labels/KEY/`` as they are made, so an interrupted run goes on where it stopped, and a
larger ``tokens`` later extends the same sample. ``pack_labels`` packs the chunks made since the last pack into
``recipes/data/packs/labels/KEY/`` (16-bit labels, xz; commit them) and ``target_labelled`` restores packed chunks
first, so a fresh machine with the same target weights and text labels only what no machine labelled before.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import cache_dir, recipes_dir, write_atomically
from ..errors import MambaspecError
from .datapack import read_blob, span, write_blob

WINDOW = 1024
CHUNK_WINDOWS = 8  # windows per cached chunk (25-50 s of a 2-core CPU with SmolLM2-135M)
BATCH_WINDOWS = 2  # windows per target forward (full-vocabulary logits of each: ~200 MB at 1,024 tokens)
# The target's prefill with full logits: 220-330 tokens/s in the log of recipes/drafters/relabel/target.yaml's run
# (2026-12-07, 2 cores shared with a data job, SmolLM2-135M).
LABEL_TOKENS_PER_S = 250


def packs_of(folder: Path) -> Path:
    """Where the chunks of the labels cached in ``folder`` are packed in the repository."""
    return recipes_dir() / "data" / "packs" / "labels" / folder.name


def _chunk(folder: Path, c: int) -> Path:
    return folder / f"chunk-{c:05d}.pt"


def pack_labels(folder: Path, log: Callable[[str], None] = print) -> Path | None:
    """Pack the chunks of ``folder`` made since its last pack, up to the first one missing; None if none are new."""
    packs = packs_of(folder)
    existing = sorted(packs.glob("chunks-*.xz"))
    start = span(existing[-1])[1] + 1 if existing else 0
    end = start
    while _chunk(folder, end).exists():
        end += 1
    if end == start:
        return None
    blob = {}
    for c in range(start, end):
        made = torch.load(_chunk(folder, c))
        blob[c] = {"starts": made["starts"], "labels": made["labels"].numpy().astype(np.uint16).tobytes()}
    out = write_blob(packs / f"chunks-{start:05d}-{end - 1:05d}.xz", blob)
    log(f"packed label chunks {start}-{end - 1} of {folder.name} into {out} ({out.stat().st_size / 2 ** 20:.1f} MiB)")
    return out


def restore_labels(folder: Path) -> int:
    """Write the packed chunks ``folder`` lacks; how many."""
    written = 0
    for path in sorted(packs_of(folder).glob("chunks-*.xz")):
        first, last = span(path)
        if all(_chunk(folder, c).exists() for c in range(first, last + 1)):
            continue
        for c, made in read_blob(path).items():
            if not _chunk(folder, c).exists():
                labels = torch.from_numpy(np.frombuffer(made["labels"], dtype=np.uint16).astype(np.int32))
                chunk = {"starts": made["starts"], "labels": labels.view(len(made["starts"]), -1)}
                write_atomically(_chunk(folder, c), lambda tmp: torch.save(chunk, tmp))
                written += 1
    return written


def labels_folder(ids: torch.Tensor, target_key: str, seed: int) -> Path:
    """Where the labels of this stream by this target (``weights_id``) are cached."""
    digest = hashlib.sha1(ids.to(torch.int32).numpy().tobytes()).hexdigest()[:12]
    return cache_dir() / "labels" / f"{target_key or 'target'}-{digest}-w{WINDOW}-s{seed}"


def window_order(n_tokens: int, seed: int) -> list[int]:
    """The start of every whole window of the stream, in the sample's seeded order."""
    n = n_tokens // WINDOW
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [w * WINDOW for w in order]


def sample_starts(n_tokens: int, tokens: int, seed: int) -> list[int]:
    """The starts of the sample's windows: the first ``ceil(tokens / WINDOW)`` of the seeded order."""
    starts = window_order(n_tokens, seed)[:math.ceil(tokens / WINDOW)]
    if not starts:
        raise MambaspecError(f"a source with tokens: needs at least {WINDOW} tokens of text; give more text")
    return starts


def sample(ids: torch.Tensor, tokens: int, seed: int) -> torch.Tensor:
    """The sample's windows end to end: the text ``target_labelled`` labels, for training on the same text with its
    own next tokens (a source's ``tokens`` without ``labels``)."""
    return torch.cat([ids[s:s + WINDOW] for s in sample_starts(len(ids), tokens, seed)])


@torch.inference_mode()
def target_labelled(ids: torch.Tensor, tokens: int, model, target_key: str, seed: int,
                    log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, labels)`` of the sample: the sampled windows end to end, and at every position the target's argmax
    after the window's tokens up to it (``labels[i]`` predicts what follows ``ids[i]``). ``model``: the target (a
    transformers causal LM), read only where chunks are missing."""
    starts = sample_starts(len(ids), tokens, seed)
    order = window_order(len(ids), seed)  # chunks are whole runs of the full order: a larger sample reuses them
    chunk_of = lambda c: order[c * CHUNK_WINDOWS:(c + 1) * CHUNK_WINDOWS]  # noqa: E731
    folder = labels_folder(ids, target_key, seed)
    folder.mkdir(parents=True, exist_ok=True)
    restored = restore_labels(folder)
    if restored:
        log(f"{restored} chunks of labels restored from {packs_of(folder)} (made on an earlier machine)")
    n_chunks = math.ceil(len(starts) / CHUNK_WINDOWS)
    missing = [c for c in range(n_chunks) if not _chunk(folder, c).exists()]
    if missing:
        log(f"the target labels {len(missing) * CHUNK_WINDOWS * WINDOW:,} tokens of text (~"
            f"{len(missing) * CHUNK_WINDOWS * WINDOW / LABEL_TOKENS_PER_S / 60:.0f} min here; cached in {folder})")
    t0 = time.perf_counter()
    for done, c in enumerate(missing, 1):
        chunk = chunk_of(c)
        labels = [_argmax(model, torch.stack([ids[s:s + WINDOW] for s in chunk[b:b + BATCH_WINDOWS]]).long())
                  for b in range(0, len(chunk), BATCH_WINDOWS)]
        made = {"starts": chunk, "labels": torch.cat(labels).to(torch.int32)}
        write_atomically(_chunk(folder, c), lambda tmp: torch.save(made, tmp))
        rate = done * CHUNK_WINDOWS * WINDOW / (time.perf_counter() - t0)
        log(f"labelled chunk {done} of {len(missing)} ({rate:.0f} tokens/s)")
    rows = []
    for c in range(n_chunks):
        made = torch.load(_chunk(folder, c))
        if made["starts"] != chunk_of(c):
            raise MambaspecError(f"{folder}: chunk {c} holds other windows than this sample's; remove the folder "
                                 f"and run again")
        rows += list(made["labels"])
    x, y = torch.stack([ids[s:s + WINDOW] for s in starts]), torch.stack(rows[:len(starts)])
    same = (y[:, :-1] == x[:, 1:]).float().mean().item()  # within a window: the text's next token is known
    log(f"target labels of {x.numel():,} tokens: the text's own next token at {same:.1%} of positions")
    return x.reshape(-1).to(torch.int32), y.reshape(-1).to(torch.int32)


def _argmax(model, windows: torch.Tensor) -> torch.Tensor:
    """The target's greedy next token at every position of each window, ``(B, WINDOW)``."""
    device = next(model.parameters()).device
    logits = model(input_ids=windows.to(device), use_cache=False).logits
    return logits.argmax(-1).cpu()
