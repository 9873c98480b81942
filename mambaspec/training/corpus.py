"""Training text that can be had on any machine with Python, no hub needed.

- ``stdlib_code()``: the source of the Python standard library that ships with the interpreter
  (tests excluded) — plain language-model pretraining text.
- ``stdlib_function_prompts()``: coding prompts made from standard-library functions: the
  signature and docstring of a public function, without its body (the shape of a HumanEval
  prompt, with none of HumanEval's problems). The target answers them to make
  sequence-level distillation data.

No prompt or solution from any benchmark the project evaluates on enters these sets.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path

SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip"}


def stdlib_files() -> list[Path]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in lib.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(lib).parts))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def stdlib_code(max_chars: int | None = None) -> list[str]:
    """Source files of the standard library, one string per file."""
    texts, total = [], 0
    for path in stdlib_files():
        text = _read(path)
        if not text:
            continue
        texts.append(text)
        total += len(text)
        if max_chars and total >= max_chars:
            break
    return texts


def stdlib_function_prompts(limit: int | None = None, seed: int = 0) -> list[dict]:
    """``{"id", "prompt"}`` for public standard-library functions with a docstring of some substance."""
    prompts = []
    for path in stdlib_files():
        text = _read(path)
        if not text:
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 60 or len(doc) > 1500:
                continue
            args = ast.unparse(node.args)
            ret = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            body = "\n".join("    " + line if line else "" for line in doc.splitlines())
            prompt = f'def {node.name}({args}){ret}:\n    """{body.strip()}\n    """\n'
            prompts.append({"id": f"{path.stem}.{node.name}.{node.lineno}", "prompt": prompt})
    random.Random(seed).shuffle(prompts)
    return prompts[:limit] if limit else prompts
