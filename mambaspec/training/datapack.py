"""Packs of a distillation data set committed with the project (``recipes/data/packs/NAME/``, ``DataRecipe.packs``),
so that what one machine spent hours making is not made again on the next.

A pack file holds a run of consecutive shards (the target's answers: every row's token ids and fields, not the
top-k log-probabilities, which the shipped recipes do not train on: ``kd_weight`` 0; a KD run leaves such rows out
of its KL term), and the first one also the prompts (``prompts.jsonl``, ``magpie-raw.jsonl``) and the plan.
Before there is a plan (the target still writes Magpie's user turns, an hour and more on a CPU for broad-v2), the
turns made so far are packed alone into ``PROGRESS``, replaced at each pack and removed once the first shards are
packed (they then carry the turns), so that a data set begun on one machine goes on from there on the next.
Packs only add: ``write_pack`` packs the shards made since the last pack into a new file, so the repository never
holds a shard twice. ``restore_packs`` (called by ``datagen.make_data``) writes every packed shard a data set's
folder lacks; the run then goes on with the rest of the plan, as after an interruption. Packs of a recipe with other
settings (its fingerprint) are refused.
"""

from __future__ import annotations

import io
import json
import lzma
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import write_atomically
from ..errors import MambaspecError

FORMAT = 1
MAGPIE_RAW = "magpie-raw.jsonl"
SIDE_FILES = ("plan.json", "prompts.jsonl", MAGPIE_RAW)
PROGRESS = "prompts-progress.xz"  # the Magpie turns made so far, while the data set has no plan yet


def pack_files(packs: Path) -> list[Path]:
    return sorted(Path(packs).glob("shards-*.xz"))


def span(path: Path) -> tuple[int, int]:
    """Items [first, last] a pack file holds, from its name ``KIND-FIRST-LAST.xz`` (shards, or chunks of labels)."""
    _, first, last = path.name.removesuffix(".xz").split("-")
    return int(first), int(last)


def shard_path(folder: Path, index: int) -> Path:
    """The file of a data set's shard ``index`` (one answered batch of its plan)."""
    return folder / "answers" / f"shard-{index:05d}.pt"


def _compact(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in ("topk_ids", "topk_logp")}
    ids = row["ids"]
    if int(ids.max()) >= 2 ** 16:
        raise MambaspecError("this data set's vocabulary is wider than 65,536 tokens; packs hold 16-bit ids")
    out["ids"] = ids.numpy().astype(np.uint16).tobytes()
    return out


def _expand(row: dict) -> dict:
    return {**row, "ids": torch.from_numpy(np.frombuffer(row["ids"], dtype=np.uint16).astype(np.int32))}


def write_pack(folder: Path, packs: Path, settings: str | None = None,
               log: Callable[[str], None] = print) -> Path | None:
    """Pack the shards of the data set in ``folder`` made since the last pack file in ``packs``, up to the first one
    missing; None when there is nothing new. Before the data set has a plan, pack the Magpie turns made so far
    (``PROGRESS``; ``settings``: the recipe's fingerprint, which that file carries)."""
    folder = Path(folder)
    plan_file = folder / "plan.json"
    existing = pack_files(packs)
    unanswered = not existing and not shard_path(folder, 0).exists()  # a plan without a shard: its turns are progress
    if not plan_file.exists() or unanswered:
        if settings is not None and (folder / MAGPIE_RAW).exists():
            return _write_progress(folder, Path(packs), settings, log)
        if not plan_file.exists():
            raise MambaspecError(
                f"{folder} holds no data set (no plan.json); make it first (pretrain-drafter --data-only)")
    start = span(existing[-1])[1] + 1 if existing else 0
    end = start
    while shard_path(folder, end).exists():
        end += 1
    if end == start:
        return None
    blob: dict = {"format": FORMAT, "settings": json.loads(plan_file.read_text()).get("settings"),
                  "shards": {i: [_compact(r) for r in torch.load(shard_path(folder, i), weights_only=False)]
                             for i in range(start, end)}}
    if not existing:
        blob["files"] = {f: (folder / f).read_text() for f in SIDE_FILES if (folder / f).exists()}
    out = write_blob(Path(packs) / f"shards-{start:05d}-{end - 1:05d}.xz", blob)
    log(f"packed shards {start}-{end - 1} of {folder.name} into {out} ({out.stat().st_size / 2 ** 20:.1f} MiB)")
    if (Path(packs) / PROGRESS).exists():  # the first shards' pack carries the turns now
        (Path(packs) / PROGRESS).unlink()
        log(f"removed {Path(packs) / PROGRESS} (the shards' pack holds its turns)")
    return out


def magpie_batches(text: str) -> dict[int, str]:
    """Magpie's raw turns by batch (``datagen.magpie_prompts`` writes one line a batch)."""
    return {json.loads(line)["batch"]: line for line in text.splitlines() if line.strip()}


def _write_progress(folder: Path, packs: Path, settings: str, log: Callable[[str], None]) -> Path | None:
    text = (folder / MAGPIE_RAW).read_text()
    out = packs / PROGRESS
    if out.exists() and magpie_batches(read_blob(out)["files"][MAGPIE_RAW]).keys() >= magpie_batches(text).keys():
        return None
    write_blob(out, {"format": FORMAT, "settings": settings, "files": {MAGPIE_RAW: text}})
    log(f"packed {len(magpie_batches(text))} batches of Magpie turns of {folder.name} into {out} (no plan yet)")
    return out


def write_blob(out: Path, blob: dict) -> Path:
    """A pack file: ``blob`` saved by torch, xz-compressed, written atomically."""
    buf = io.BytesIO()
    torch.save(blob, buf)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda tmp: tmp.write_bytes(lzma.compress(buf.getvalue(), preset=9)))
    return out


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def _write_rows(path: Path, rows: list[dict]) -> None:
    write_atomically(path, lambda tmp: torch.save(rows, tmp))


def read_blob(path: Path) -> dict:
    return torch.load(io.BytesIO(lzma.decompress(path.read_bytes())), weights_only=False)


def restore_packs(packs: Path, folder: Path, settings: str, log: Callable[[str], None] = print) -> int:
    """Write into ``folder`` (a data set with the fingerprint ``settings``) every shard packed in ``packs`` (and the
    prompts and plan, when the folder has none) that it lacks; the number of shards written."""
    folder = Path(folder)
    _restore_progress(Path(packs) / PROGRESS, folder, settings, log)
    written = 0
    for path in pack_files(packs):
        first, last = span(path)
        if (all(shard_path(folder, i).exists() for i in range(first, last + 1))
                and (first or (folder / "plan.json").exists())):
            continue
        blob = _checked(path, settings)
        (folder / "answers").mkdir(parents=True, exist_ok=True)
        for f, text in blob.get("files", {}).items():
            if not (folder / f).exists():
                _write_text(folder / f, text)
        for i, rows in blob["shards"].items():
            if not shard_path(folder, i).exists():
                _write_rows(shard_path(folder, i), [_expand(r) for r in rows])
                written += 1
    if written:
        log(f"data set {folder.name}: {written} shards restored from {packs} (made on an earlier machine)")
    return written


def _checked(path: Path, settings: str) -> dict:
    blob = read_blob(path)
    if blob.get("format") != FORMAT or blob.get("settings") != settings:
        raise MambaspecError(f"{path} was made with other settings than the data recipe has now; restore "
                             f"the recipe, or delete {path.parent} to make the data set anew")
    return blob


def _restore_progress(path: Path, folder: Path, settings: str, log: Callable[[str], None]) -> None:
    """Add to ``folder``'s Magpie turns the batches packed in ``path`` (``PROGRESS``) that it lacks."""
    if not path.exists() or (folder / "plan.json").exists():
        return
    packed = magpie_batches(_checked(path, settings)["files"][MAGPIE_RAW])
    raw = folder / MAGPIE_RAW
    have = magpie_batches(raw.read_text()) if raw.exists() else {}
    if packed.keys() <= have.keys():
        return
    lines = {**packed, **have}
    folder.mkdir(parents=True, exist_ok=True)
    _write_text(raw, "".join(lines[b] + "\n" for b in sorted(lines)))
    log(f"data set {folder.name}: {len(packed.keys() - have.keys())} batches of Magpie turns restored from {path} "
        f"(made on an earlier machine)")
