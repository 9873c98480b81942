"""``mambaspec serve``: the speculative engine behind an OpenAI-compatible HTTP server (the ``serve`` extra).

``app.make_app(pipeline, model)`` is the ASGI app; ``worker`` runs one generation at a time in arrival order;
``protocol`` is the OpenAI wire format; ``metrics`` the Prometheus counters. This module itself imports nothing
heavy, so the command line can check its options before torch loads.
"""

from __future__ import annotations

from importlib.util import find_spec

from ..errors import MambaspecError

NEEDS = ("starlette", "uvicorn", "pydantic")


def check_installed() -> None:
    """``MambaspecError`` naming the fix when the ``serve`` extra's packages are missing."""
    missing = [name for name in NEEDS if find_spec(name) is None]
    if missing:
        raise MambaspecError(f"mambaspec serve needs {', '.join(missing)}: pip install 'mambaspec[serve]'")
