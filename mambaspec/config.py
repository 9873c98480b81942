"""Where things live (the recipes folder, the cache) and the one way YAML files are read."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import MambaspecError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_TARGET = "smollm2-135m"


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file beside it: a kill leaves the old file or the new one, whole. The
    temporary name is the process's own, so two runs that make the same file at once (two trainings restoring one
    data set's packs) each rename a whole file of their own."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def recipes_dir() -> Path:
    """The recipes folder: inside the installed package, or at the top of a source checkout."""
    for candidate in (PACKAGE_DIR / "recipes", PACKAGE_DIR.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise MambaspecError("the recipes folder is missing from this install; reinstall mambaspec")


def cache_dir() -> Path:
    """``$MAMBASPEC_CACHE``, default ``~/.cache/mambaspec``: converted models, distillation data."""
    return Path(os.environ.get("MAMBASPEC_CACHE", Path.home() / ".cache" / "mambaspec"))


def load_yaml(path: str | Path, what: str = "file", expect: type = dict) -> Any:
    """The YAML document in ``path``; a missing file, a syntax error (with its line) or a document of the
    wrong kind (``expect``: dict or list) raises ``MambaspecError`` naming ``what`` and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MambaspecError(f"{what} not found: {path}; check the path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise MambaspecError(f"cannot read {what} {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or err.__class__.__name__
        raise MambaspecError(f"{what} {path} is not valid YAML{where} ({problem}); fix the file") from None
    if raw is None and expect in (dict, list):
        raw = expect()
    if expect in (dict, list) and not isinstance(raw, expect):
        kind = "a mapping of settings" if expect is dict else "a list"
        raise MambaspecError(f"{what} {path} must hold {kind}")
    return raw


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the model hub answers; checked once, in well under a second when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=3):
            return True
    except OSError:
        return False
