"""Text labelled by the target: what the target itself predicts after every token of a text stream.

A drafter is scored by how often it proposes the token the target would choose, not the text's own
next token. On real text the two differ: on the Python standard library's source SmolLM2-135M's
argmax is the real next token only ~60 % of the time, so a language-model stream teaches the drafter
to disagree with its target on the rest. ``labels: target`` on a text source (``stdlib-code``, ``files``)
trains on the target's argmax instead, at every position of a sample of the stream's windows — the
real text stays the drafter's input.

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
import io
import lzma
import math
import time
from pathlib import Path
from typing import Callable

import torch

import numpy as np

from ..config import cache_dir, recipes_dir, write_atomically
from ..errors import MambaspecError

WINDOW = 1024
CHUNK_WINDOWS = 8  # windows per cached chunk (about a minute of a 2-core CPU with SmolLM2-135M)
BATCH_WINDOWS = 2  # windows per target forward (full-vocabulary logits of each: ~200 MB at 1,024 tokens)
LABEL_TOKENS_PER_S = 250  # the target's prefill with full logits: 170-320 tokens/s measured here (2 cores, SmolLM2-135M)


def packs_of(folder: Path) -> Path:
    """Where the chunks of the labels cached in ``folder`` are packed in the repository."""
    return recipes_dir() / "data" / "packs" / "labels" / folder.name


def _chunk(folder: Path, c: int) -> Path:
    return folder / f"chunk-{c:05d}.pt"


def pack_labels(folder: Path, log: Callable[[str], None] = print) -> Path | None:
    """Pack the chunks of ``folder`` made since its last pack, up to the first one missing; None if none are new."""
    packs = packs_of(folder)
    existing = sorted(packs.glob("chunks-*.xz"))
    start = int(existing[-1].stem.split("-")[2]) + 1 if existing else 0
    end = start
    while _chunk(folder, end).exists():
        end += 1
    if end == start:
        return None
    blob = {}
    for c in range(start, end):
        made = torch.load(_chunk(folder, c))
        blob[c] = {"starts": made["starts"], "labels": made["labels"].numpy().astype(np.uint16).tobytes()}
    buf = io.BytesIO()
    torch.save(blob, buf)
    out = packs / f"chunks-{start:05d}-{end - 1:05d}.xz"
    packs.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda tmp: tmp.write_bytes(lzma.compress(buf.getvalue(), preset=9)))
    log(f"packed label chunks {start}-{end - 1} of {folder.name} into {out} ({out.stat().st_size / 2 ** 20:.1f} MiB)")
    return out


def restore_labels(folder: Path) -> int:
    """Write the packed chunks ``folder`` lacks; how many."""
    written = 0
    for path in sorted(packs_of(folder).glob("chunks-*.xz")):
        blob = torch.load(io.BytesIO(lzma.decompress(path.read_bytes())))
        for c, made in blob.items():
            if not _chunk(folder, c).exists():
                labels = torch.from_numpy(np.frombuffer(made["labels"], dtype=np.uint16).astype(np.int32))
                chunk = {"starts": made["starts"], "labels": labels.view(len(made["starts"]), -1)}
                folder.mkdir(parents=True, exist_ok=True)
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


def windows_needed(tokens: int, n_tokens: int) -> int:
    return min(math.ceil(tokens / WINDOW), n_tokens // WINDOW)


def sample(ids: torch.Tensor, tokens: int, seed: int) -> torch.Tensor:
    """The first ``ceil(tokens / WINDOW)`` windows of the seeded order, end to end: the text ``target_labelled``
    labels, for training on the same text with its own next tokens (a source's ``tokens`` without ``labels``)."""
    starts = window_order(len(ids), seed)[:windows_needed(tokens, len(ids))]
    if not starts:
        raise MambaspecError(f"a source with tokens: needs at least {WINDOW} tokens of text; give more text")
    return torch.cat([ids[s:s + WINDOW] for s in starts])


@torch.inference_mode()
def target_labelled(ids: torch.Tensor, tokens: int, model, target_key: str, seed: int,
                    log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, labels)`` of the sample: the sampled windows end to end, and at every position the target's argmax
    after the window's tokens up to it (``labels[i]`` predicts what follows ``ids[i]``). ``model``: the target (a
    transformers causal LM), read only where chunks are missing."""
    order = window_order(len(ids), seed)
    needed = windows_needed(tokens, len(ids))
    if not needed:
        raise MambaspecError(f"a source with tokens: needs at least {WINDOW} tokens of text; give more text")
    folder = labels_folder(ids, target_key, seed)
    folder.mkdir(parents=True, exist_ok=True)
    restored = restore_labels(folder)
    if restored:
        log(f"{restored} chunks of labels restored from {packs_of(folder)} (made on an earlier machine)")
    n_chunks = math.ceil(needed / CHUNK_WINDOWS)  # whole chunks of the full order: a larger sample reuses them all
    chunk_of = lambda c: order[c * CHUNK_WINDOWS:(c + 1) * CHUNK_WINDOWS]  # noqa: E731
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
    out_ids, out_labels = [], []
    for c in range(n_chunks):
        made = torch.load(_chunk(folder, c))
        if made["starts"] != chunk_of(c):
            raise MambaspecError(f"{folder}: chunk {c} holds other windows than this sample's; remove the folder "
                                 f"and run again")
        out_ids += [ids[s:s + WINDOW] for s in made["starts"]]
        out_labels += list(made["labels"])
    x, y = torch.cat(out_ids[:needed]).view(needed, WINDOW), torch.stack(out_labels[:needed])
    same = (y[:, :-1] == x[:, 1:]).float().mean().item()  # within a window: the text's next token is known
    log(f"target labels of {needed * WINDOW:,} tokens: the text's own next token at {same:.1%} of positions")
    return x.reshape(-1).to(torch.int32), y.reshape(-1).to(torch.int32)


def _argmax(model, windows: torch.Tensor) -> torch.Tensor:
    """The target's greedy next token at every position of each window, ``(B, WINDOW)``."""
    device = next(model.parameters()).device
    logits = model(input_ids=windows.to(device), use_cache=False).logits
    return logits.argmax(-1).cpu()
