"""The layout keeps its promises: layers import downwards only, functions stay short, no module reads another's
private attributes."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mambaspec"
MODULES = {p: ast.parse(p.read_text()) for p in sorted(ROOT.rglob("*.py"))}
# layer -> layers it must never import (the CLI and its display are imported by nothing but __main__)
FORBIDDEN = {
    "core": {"drafters", "bench", "training", "cli", "display", "loading", "serve"},
    "drafters": {"bench", "training", "loading", "cli", "display", "serve"},
    "cpu": {"core", "drafters", "bench", "training", "loading", "cli", "display", "serve"},
    "loading": {"bench", "training", "cli", "display", "serve"},
    "bench": {"training", "cli", "display", "serve"},
    "training": {"bench", "cli", "display", "serve"},
    "serve": {"drafters", "cpu", "bench", "training", "cli", "display"},  # a front end over loading/ and core/
}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(path: Path, tree: ast.Module) -> set[str]:
    """The mambaspec layers a module imports (absolute or relative imports, at any depth in the file)."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if not node.module else [target]
            else:
                names = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        else:
            continue
        for parts in names:
            if parts and parts[0] == "mambaspec" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("path", list(MODULES), ids=lambda p: str(p.relative_to(ROOT)))
def test_layers_import_downwards(path):
    layer = _layer(path)
    imported = _imported(path, MODULES[path]) - {layer}
    assert not imported & FORBIDDEN.get(layer, set()), f"{layer} imports {imported & FORBIDDEN[layer]}"
    if layer != "__main__":
        assert "cli" not in imported, "nothing but __main__ imports the CLI"
    if layer != "cli":
        assert "serve" not in imported, "nothing but the CLI imports the server"


def test_core_reads_no_files():
    """core/ takes shapes and policy objects; names and files (the arms, recipes) are read in loading/."""
    found = [f"{p.relative_to(ROOT)}: {sorted(_imported(p, tree) & {'config'})} {ast.unparse(n)}"
             for p, tree in MODULES.items() if _layer(p) == "core" for n in ast.walk(tree)
             if (isinstance(n, ast.Import) and any(a.name == "yaml" for a in n.names))
             or (isinstance(n, ast.ImportFrom) and (n.module == "yaml" or (n.module or "").endswith("config")))]
    assert not found, found


def test_functions_are_short():
    long = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p, tree in MODULES.items() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long


def test_no_module_reads_another_modules_private_attributes():
    defined: dict[str, set[Path]] = {}
    for p, tree in MODULES.items():
        for n in ast.walk(tree):
            name = (n.name if isinstance(n, (ast.FunctionDef, ast.ClassDef)) else
                    n.attr if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) else
                    n.target.id if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) else None)
            if name and name.startswith("_") and not name.startswith("__"):
                defined.setdefault(name, set()).add(p)
    reads = [f"{p.relative_to(ROOT)}:{n.lineno} {ast.unparse(n)}"
             for p, tree in MODULES.items() for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load) and n.attr in defined
             and ast.unparse(n.value) not in ("self", "cls") and p not in defined[n.attr]]
    assert not reads, reads
