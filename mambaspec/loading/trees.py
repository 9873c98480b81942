"""What ``tree=`` means, in one place: a shape such as ``"2,1,1"``, ``"dynamic"``, ``"auto"``, a ``TreeShape`` or a
policy object, resolved to a ``core.policy.TreePolicy``; the shipped arms file of ``auto`` and its reading.

``core/`` takes only shapes and policy objects; the names and the files live here. Light to import (no torch): the
command line checks ``--tree`` and ``--arms`` with it before the heavy imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from ..config import load_yaml, recipes_dir
from ..core.bandit import DEFAULT_C, DEFAULT_EDGES, Arm, UCBPolicy, arms_from_entries, parse_edges
from ..core.shape import TreeShape
from ..errors import MambaspecError

if TYPE_CHECKING:
    from ..core.policy import TreePolicy

DEFAULT_TREE = "dynamic"  # generate's, the Python API's and serve's: grown each round as far as it pays, measured best
BENCH_TREE = "2,1,1"  # bench's fixed-tree methods (on purpose, said in its --help): small, as on a CPU every node costs
TREE_POLICIES = ("auto", "dynamic")  # besides shapes: a UCB bandit over shapes, dynamic trees


def policy_name(tree: object) -> str | None:
    """``"dynamic"`` or ``"auto"`` when ``tree`` names a policy, else None (a shape or a policy object)."""
    name = tree.strip().lower() if isinstance(tree, str) else None
    return name if name in TREE_POLICIES else None


def default_arms_path() -> Path:
    """The shipped arms of ``--tree auto``: ``recipes/trees.yaml``."""
    return recipes_dir() / "trees.yaml"


def load_arms(path: str | Path | None = None) -> list[Arm]:
    """Arms from YAML (None: the shipped ones): a list of ``{name, tree}`` (``pulls``/``reward_sum``/... from a tuned
    file warm-start)."""
    path = Path(path) if path is not None else default_arms_path()
    if not path.is_file():
        raise MambaspecError(f"arms file not found: {path}; check the path, or omit it for the shipped "
                             f"{default_arms_path()}")
    raw = load_yaml(path, "arms file", expect=object)
    return arms_from_entries(raw, f"arms file {path}")


def save_arms(arms: list[Arm], path: str | Path, comment: str = "") -> None:
    """A tuned arms file (arms with their statistics) that ``load_arms`` reads back as a warm start."""
    text = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    text += yaml.safe_dump([a.as_dict() for a in arms], sort_keys=False)
    Path(path).write_text(text)


def resolve_tree(tree: object = DEFAULT_TREE, *, arms: str | Path | None = None, c: float = DEFAULT_C,
                 reward: str = "replayed", edges: str | tuple[float, ...] = DEFAULT_EDGES,
                 dynamic: Callable[[], TreePolicy] | None = None) -> TreePolicy:
    """The tree policy for ``tree``: a policy object as it is; ``"dynamic"``: dynamic trees (``dynamic()`` when given,
    e.g. the pipeline's, which starts from the kept costs); ``"auto"``: a UCB bandit over ``arms`` (None: the shipped
    arms file) with ``c``, ``reward`` and ``edges``; a ``TreeShape`` or a shape such as ``"2,1,1"``: that fixed tree."""
    if hasattr(tree, "choose"):
        return tree  # type: ignore[return-value]
    name = policy_name(tree)
    if name == "dynamic":
        if dynamic is not None:
            return dynamic()
        from ..core.dynamic import DynamicTreePolicy

        return DynamicTreePolicy()
    if name == "auto":
        return UCBPolicy(load_arms(arms), c=c, reward=reward, edges=parse_edges(edges))
    from ..core.policy import FixedTree  # here: core.policy imports torch

    return FixedTree(TreeShape.parse(tree))  # type: ignore[arg-type]
