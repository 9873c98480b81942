"""Prompts for distillation data, from what any machine with Python has: no hub, no benchmark.

- ``template_prompts``: task x topic templates (``recipes/data/prompt-parts.yaml``), math word
  problems with random numbers, code in several languages, rewriting of document sentences.
- ``document_prompts``: man pages, Python's pydoc topics and standard-library docstrings, cut to a
  token length, with a task (summarise, main points, questions) around them.
- ``stdlib_function_prompts`` (``corpus``): HumanEval-shaped prompts from standard-library functions.
- Magpie prompts, which the target writes itself, are made in ``datagen.magpie_prompts``.

Every prompt is ``{"id", "domain", "source", "prompt"}``; ids are stable for a given recipe seed,
so a resumed run finds what it already answered.
"""

from __future__ import annotations

import ast
import os
import random
import re
import subprocess
from pathlib import Path
from typing import Iterator

from ..config import load_yaml, recipes_dir
from ..errors import MambaspecError
from .corpus import stdlib_files

MAN_DIR = Path("/usr/share/man/man1")


def heldout_pydoc_topics() -> set[str]:
    """The pydoc topics of the held-out long-document set, never used for training."""
    spec = load_yaml(recipes_dir() / "eval" / "longdocs.yaml")
    return {t for doc in spec["documents"] for t in doc["topics"]}


# ------------------------------------------------------------------------------------ templates

DOMAIN_OF_KIND = {"explain": "chat", "advice": "chat", "writing": "chat", "code_write": "code",
                  "code_explain": "code", "sql": "code", "rewrite": "rewrite", "math": "math"}


def _math_problem(parts: dict, rng: random.Random) -> str:
    a, b, c = rng.randint(2, 40), rng.randint(2, 12), rng.randint(1, 9)
    values = {"a": a, "b": b, "c": c, "p": rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 75]),
              "big": rng.randint(50, 900), "name": rng.choice(parts["names"])}
    return rng.choice(parts["math_problems"]).format(**values)


def _short_functions(limit: int, rng: random.Random) -> list[str]:
    """Source of short standard-library functions (5-30 lines), for explain/fix/translate tasks."""
    found = []
    files = stdlib_files()
    for path in rng.sample(files, min(len(files), 250)):
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and 5 <= (node.end_lineno or 0) - node.lineno <= 30:
                found.append(ast.get_source_segment(text, node) or "")
    found = [f for f in found if f and "\t" not in f]
    rng.shuffle(found)
    return found[:limit]


def template_prompts(counts: dict[str, int], seed: int, sentences: list[str]) -> list[dict]:
    """``counts[kind]`` prompts of each template kind; ``sentences`` feed the rewriting tasks."""
    parts = load_yaml(recipes_dir() / "data" / "prompt-parts.yaml")
    rng = random.Random(seed)
    unknown = set(counts) - set(parts["templates"])
    if unknown:
        raise MambaspecError(f"template kind '{sorted(unknown)[0]}' is not in prompt-parts.yaml; "
                             f"use {', '.join(parts['templates'])}")
    code = _short_functions(counts.get("code_explain", 0), rng) if counts.get("code_explain") else []
    prompts, seen = [], set()
    for kind, n in counts.items():
        made = 0
        for attempt in range(n * 20):
            if made >= n:
                break
            fill = {"topic": rng.choice(parts["topics"]), "audience": rng.choice(parts["audiences"]),
                    "tone": rng.choice(parts["tones"]), "language": rng.choice(parts["languages"]),
                    "code_task": rng.choice(parts["code_tasks"]), "sql_task": rng.choice(parts["sql_tasks"]),
                    "problem": _math_problem(parts, rng)}
            if kind == "code_explain":
                if not code:
                    break
                fill["code"] = code[made % len(code)]
            if kind == "rewrite":
                if not sentences:
                    break
                fill["text"] = rng.choice(sentences)
            text = rng.choice(parts["templates"][kind]).format(**fill)
            if text in seen:
                continue
            seen.add(text)
            prompts.append({"id": f"tpl-{kind}-{made}", "domain": DOMAIN_OF_KIND.get(kind, "chat"),
                            "source": f"template:{kind}", "prompt": text})
            made += 1
    return prompts


# ------------------------------------------------------------------------------------ documents

def man_page_text(path: Path) -> str | None:
    """A man page rendered as plain text (``man -l``), whitespace tidied; None if it cannot be rendered."""
    env = {**os.environ, "MANWIDTH": "90", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    try:
        out = subprocess.run(["man", "-P", "cat", "-l", str(path)], capture_output=True, text=True, timeout=20,
                             env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode or not out.stdout.strip():
        return None
    lines = [re.sub(r"[ \t]+", " ", line.replace("\u2010", "-")).strip() for line in out.stdout.splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text if len(text) > 400 else None


def man_pages(limit: int, rng: random.Random) -> Iterator[tuple[str, str]]:
    """``(name, text)`` of up to ``limit`` man pages from section 1, in a seeded random order."""
    if not MAN_DIR.is_dir():
        return
    from concurrent.futures import ThreadPoolExecutor

    files = sorted(MAN_DIR.glob("*.1*"))
    rng.shuffle(files)
    made, chunk = 0, 4 * (os.cpu_count() or 1)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # `man` processes side by side; the same pages, in order
        for start in range(0, len(files), chunk):
            for path, text in zip(files[start:start + chunk], pool.map(man_page_text, files[start:start + chunk])):
                if made >= limit:
                    return
                if text:
                    made += 1
                    yield f"man:{path.name.split('.')[0]}", text


def pydoc_topics(exclude: set[str]) -> list[tuple[str, str]]:
    import pydoc_data.topics as topics

    return [(f"pydoc:{k}", v.strip()) for k, v in sorted(topics.topics.items()) if k not in exclude and len(v) > 400]


def stdlib_docstrings(rng: random.Random, limit: int) -> list[tuple[str, str]]:
    """Module and class docstrings of the standard library with some prose in them."""
    found = []
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, SyntaxError):
            continue
        for node in [tree, *(n for n in tree.body if isinstance(n, ast.ClassDef))]:
            doc = ast.get_docstring(node)
            if doc and len(doc) > 600:
                found.append((f"doc:{path.stem}.{getattr(node, 'name', '')}", doc))
    rng.shuffle(found)
    return found[:limit]


def cut_to_tokens(text: str, tokenizer, n: int) -> str:
    """The start of ``text`` up to about ``n`` tokens, ending at a line break when one is near."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n:
        return text
    cut = tokenizer.decode(ids[:n])
    nl = cut.rfind("\n")
    return cut[:nl] if nl > len(cut) * 0.8 else cut


def document_prompts(short: int, long: int, short_tokens: tuple[int, int], long_tokens: tuple[int, int],
                     tokenizer, seed: int, log=print) -> tuple[list[dict], list[str]]:
    """Document tasks (``short`` + ``long`` prompts) and sentences from the documents (for rewriting)."""
    parts = load_yaml(recipes_dir() / "data" / "prompt-parts.yaml")
    rng = random.Random(seed)
    docs = pydoc_topics(heldout_pydoc_topics()) + stdlib_docstrings(rng, 400)
    log(f"documents: rendering man pages ({len(docs)} pydoc topics and docstrings so far) ...")
    docs += list(man_pages(short + long, rng))
    rng.shuffle(docs)
    lengths = {}
    for name, text in docs:
        lengths[name] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    long_docs = [(n, t) for n, t in docs if lengths[n] >= long_tokens[0]]
    prompts: list[dict] = []
    tasks = parts["document_tasks"]
    for i in range(long):
        if not long_docs:
            break
        name, text = long_docs[i % len(long_docs)]
        n = rng.randint(long_tokens[0], min(long_tokens[1], lengths[name]))
        body = cut_to_tokens(text, tokenizer, n)
        prompts.append({"id": f"doc-long-{i}", "domain": "longdoc", "source": name,
                        "prompt": rng.choice(tasks).format(document=body)})
    for i in range(short):
        name, text = docs[i % len(docs)]
        n = rng.randint(short_tokens[0], short_tokens[1])
        body = cut_to_tokens(text, tokenizer, n)
        prompts.append({"id": f"doc-short-{i}", "domain": "summary", "source": name,
                        "prompt": rng.choice(tasks).format(document=body)})
    sentences = []
    for _, text in docs:
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if 120 <= len(para) <= 600 and para.count(" ") > 15:
                sentences.append(para)
    rng.shuffle(sentences)
    return prompts, sentences[:2000]
