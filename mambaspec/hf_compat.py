"""What differs between the transformers versions mambaspec supports, kept in this one module.

Supported: transformers 5.17 to 5.x (CI tests the lowest and the newest); see ``SUPPORTED``.

- The cache argument of a model's forward. Newer releases take ``cache=`` and keep ``past_key_values=`` /
  ``cache_params=`` as deprecated aliases; 5.17 takes ``past_key_values=`` (attention models) and
  ``cache_params=`` (Mamba), and silently drops an unknown ``cache=`` into ``**kwargs``: the model then runs
  without any cache (the target attends to nothing, the Mamba state is never written). The name is read from
  the forward's signature, so no version number is compared.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

SUPPORTED = ("5.17", "6")  # lowest tested, first major refused (pyproject: transformers>=5.17,<6)
CACHE_NAMES = ("cache", "past_key_values", "cache_params")


@lru_cache(maxsize=None)
def _cache_name(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise TypeError(f"{forward_owner.__name__}.forward takes none of {', '.join(CACHE_NAMES)}: "
                    "this transformers version is not supported (pip install 'transformers>=5.17,<6')")


def cache_argument(model) -> str:
    """The keyword under which ``model``'s forward takes its cache."""
    return _cache_name(type(model))


def with_cache(model, cache) -> dict:
    """``{name: cache}`` for ``model(**inputs, **with_cache(model, cache))``."""
    return {cache_argument(model): cache}


def check_version(version: str) -> str | None:
    """None when ``version`` of transformers is inside the supported range, else a one-line reason."""
    def key(v: str) -> tuple[int, ...]:
        parts = []
        for p in v.split(".")[:2]:
            digits = "".join(ch for ch in p if ch.isdigit())
            parts.append(int(digits or 0))
        return tuple(parts)

    low, high = SUPPORTED
    if key(version) < key(low) or key(version) >= key(high):
        return (f"transformers {version} is outside the supported range {low} <= version < {high}: "
                f"pip install 'transformers>={low},<{high}'")
    return None
