"""What verification costs on this machine, kept between runs: the dynamic-tree cost model's samples, and each
drafter's acceptance calibration.

``generate`` (and the Python API's ``Pipeline``) start each process's dynamic policy from the samples of
earlier runs with the same target, options, device, dtype, thread count, CPU and torch; this run's own rounds
weigh more (``core.dynamic.CostModel``). The calibration of the drafter's probabilities against the target's
acceptance is kept per drafter, capped so that a new workload soon outweighs it
(``core.dynamic.AcceptanceModel.from_dict``). Files live in ``$MAMBASPEC_COSTS``, by default
``$MAMBASPEC_CACHE/costs`` (``~/.cache/mambaspec/costs``); delete them to start afresh. ``bench`` does not
read them: its numbers come from its own run alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from pathlib import Path

import torch

from ..config import cache_dir

MAX_SAMPLES = 512  # the newest kept


class CostStore:
    """A JSON file of ``(nodes, context, seconds)`` samples and, per drafter, a calibration."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def load(self) -> list[tuple[int, int, float]]:
        """The samples, or none when the file is missing or unreadable (a cache, never an error)."""
        try:
            return [(int(n), int(c), float(s)) for n, c, s in self._read().get("samples", [])]
        except (ValueError, TypeError):
            return []

    def calibration(self, drafter: str) -> dict:
        """``drafter``'s kept calibration (``AcceptanceModel.as_dict``), or an empty one."""
        kept = self._read().get("calibration", {})
        return kept.get(drafter, {}) if isinstance(kept, dict) else {}

    def save(self, samples: list[tuple[int, int, float]], drafter: str | None = None,
             calibration: dict | None = None) -> None:
        kept = self._read().get("calibration", {})
        kept = kept if isinstance(kept, dict) else {}
        if drafter is not None and calibration is not None:
            kept[drafter] = calibration
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"samples": [list(s) for s in samples[-MAX_SAMPLES:]], "calibration": kept}))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only cache costs only the measurements


def machine_key(target) -> str:
    """What the costs depend on: the target and its options, the device (and its name), dtype, threads and torch."""
    p = next(target.model.parameters())
    return "|".join([target.name, target.optimized, str(p.device), device_name(p.device), str(p.dtype),
                     str(torch.get_num_threads()), platform.machine(), torch.__version__])


def cost_store(target) -> CostStore:
    """The store of ``target`` (a ``LoadedModel``) on this machine."""
    key = machine_key(target)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", target.name).strip("-")[-48:] or "target"
    return CostStore(costs_dir() / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json")


def costs_dir() -> Path:
    """``$MAMBASPEC_COSTS``, default ``$MAMBASPEC_CACHE/costs``."""
    return Path(os.environ.get("MAMBASPEC_COSTS") or cache_dir() / "costs")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
