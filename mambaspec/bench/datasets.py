"""Benchmark prompts: the datasets of ``recipes/datasets.yaml`` (or local files) turned into target token ids.

A dataset's recipe says where its rows come from (a file shipped by a Python package, the hub
through ``datasets``, or ``--data FILE``) and how a row becomes a prompt (a ``str.format``
template, optionally wrapped in the target's chat template).

``--lengths``: a prompt of exactly N target tokens, chat template included. The row's long
field (its ``context``) is cut in the middle, keeping its beginning and end as LongBench does
(Bai et al. 2023, arXiv 2308.14508, §3: "truncate in the middle"); the instruction and the
question around it are kept whole, so the question stays at the end. The ids are assembled
from the template's text before and after the context and the context's own tokens, so the
count is exact by construction.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from ..config import hub_reachable, load_yaml, recipes_dir
from ..errors import MambaspecError

LINE = "__line__"  # the key under which rows read from a local file keep their line number

_CONTEXT_MARK = "<<mambaspec:context>>"  # stands for the context while the template text is split around it


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of ``recipes/datasets.yaml``."""

    name: str
    format: str
    fields: tuple[str, ...] = ()
    description: str = ""
    hub_id: str | None = None
    config: str | None = None
    split: str = "test"
    package_file: str | None = None  # "module:relative/path" of a file an installed package ships
    id_field: str | None = None
    context: str | None = None  # the long field that --lengths cuts
    chat: bool = True


@dataclass
class BenchPrompt:
    id: str
    ids: list[int] = field(repr=False)


@lru_cache(maxsize=1)
def dataset_specs() -> dict[str, DatasetSpec]:
    path = recipes_dir() / "datasets.yaml"
    raw = load_yaml(path, "the dataset registry")
    known = {f.name for f in fields(DatasetSpec)} - {"name"}
    specs = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "format" not in entry or set(entry) - known:
            raise MambaspecError(f"{path}: entry '{name}' needs a format and only the keys {', '.join(sorted(known))}")
        specs[name] = DatasetSpec(name=name, **{**entry, "fields": tuple(entry.get("fields", ()))})
    return specs


def dataset_spec(name: str) -> DatasetSpec:
    specs = dataset_specs()
    if name not in specs:
        raise MambaspecError(f"unknown dataset '{name}'; use one of {', '.join(specs)}")
    return specs[name]


def parse_lengths(text: str) -> list[int]:
    """``"1k,2k,4k,8k"`` -> ``[1000, 2000, 4000, 8000]`` (k = 1000 tokens; plain numbers too: ``1024,2048``)."""
    lengths = []
    for part in text.replace(" ", "").split(","):
        try:
            n = float(part[:-1]) * 1000 if part.lower().endswith("k") else float(part)
        except ValueError:
            n = 0
        if n < 1 or n != int(n):
            raise MambaspecError(f"invalid --lengths '{text}': use token counts such as 1k,2k,4k or 1024,2048")
        lengths.append(int(n))
    return lengths


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local file: JSON lines (``.jsonl``, ``.jsonl.gz``), a JSON array (``.json``) or parquet."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MambaspecError(f"cannot read --data {path}: no such file")
    if path.suffix == ".parquet":
        try:
            import pandas
        except ImportError:
            raise MambaspecError("reading parquet needs pandas and pyarrow: pip install 'mambaspec[data]'") from None
        try:
            return pandas.read_parquet(path).to_dict("records")
        except Exception as err:  # pyarrow raises its own types for corrupt files
            raise MambaspecError(f"cannot read --data {path} as parquet: {_first_line(err)}") from None
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise MambaspecError(f"cannot read --data {path}: {_first_line(err)}") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        rows = _loads(text, path, 1)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise MambaspecError(f"cannot read --data {path}: every row must be a JSON object")
        rows = [{**r, LINE: f"item {i}"} for i, r in enumerate(rows, 1)]
    else:  # JSON lines: blank lines are skipped, every other line is a row and keeps its line number
        rows = [(i, _loads(line, path, i)) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        bad = next((i for i, r in rows if not isinstance(r, dict)), None)
        if bad is not None:
            raise MambaspecError(f"cannot read --data {path}: line {bad} is not a JSON object")
        rows = [{**r, LINE: f"line {i}"} for i, r in rows]
    if not rows:
        raise MambaspecError(f"--data {path} has no rows")
    return rows


def _loads(text: str, path: Path, line: int) -> Any:
    """``text`` (starting on ``line`` of the file) as JSON; an error names the line and column where it broke."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MambaspecError(f"cannot read --data {path}: line {line + err.lineno - 1} is not valid JSON ({err.msg}: "
                             f"column {err.colno})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


def load_rows(spec: DatasetSpec, data: str | None = None) -> Iterable[dict]:
    """The dataset's rows, every one checked to make a prompt (``check_rows``): from ``data`` when given, else the
    package file, else the hub. Cheap next to loading a model, so a bad row is refused before one loads."""
    rows = _source_rows(spec, data)
    check_rows(spec, rows)
    return rows


def check_rows(spec: DatasetSpec, rows: Iterable[dict]) -> None:
    """Every row has the dataset's fields and makes a non-empty prompt (``format_prompt``), or the first that does not
    is named."""
    for i, row in enumerate(rows):
        format_prompt(spec, row, i)


def _source_rows(spec: DatasetSpec, data: str | None) -> Iterable[dict]:
    if data:
        return read_rows(data)
    if spec.package_file:
        module, _, relative = spec.package_file.partition(":")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise MambaspecError(f"dataset '{spec.name}' ships with the Python package '{module}', which is not "
                                 f"installed; pip install it or pass --data FILE")
        return read_rows(Path(found.submodule_search_locations[0]) / relative)
    needs = f"pass --data FILE (a local .jsonl/.jsonl.gz/.json/.parquet file with the fields {', '.join(spec.fields)})"
    if not spec.hub_id:
        raise MambaspecError(f"dataset '{spec.name}' reads a local file: {needs}")
    if not hub_reachable():
        raise MambaspecError(f"dataset '{spec.name}' comes from the hub ({spec.hub_id}), which is not reachable; "
                             f"{needs}")
    try:
        import datasets
    except ImportError:
        raise MambaspecError(f"dataset '{spec.name}' needs the datasets package (pip install 'mambaspec[data]'), "
                             f"or {needs}") from None
    try:
        return datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
    except Exception as err:  # datasets raises many types (network, missing config, scripts)
        raise MambaspecError(f"could not load {spec.hub_id} ({spec.config or 'default'}, {spec.split}): "
                             f"{_first_line(err)}; {needs}") from None


def _where(spec: DatasetSpec, row: dict, index: int) -> str:
    return f"{row[LINE]} of the data file" if LINE in row else f"row {index + 1} of dataset '{spec.name}'"


def format_prompt(spec: DatasetSpec, row: dict, index: int = 0) -> str:
    """The row's prompt text (before any chat template); ``index`` counts from 0."""
    missing = [f for f in spec.fields if f not in row]
    if missing:
        raise MambaspecError(f"{_where(spec, row, index)} has no field '{missing[0]}' "
                             f"(dataset '{spec.name}' needs {', '.join(spec.fields)})")
    try:
        text = spec.format.format_map(row).strip()
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise MambaspecError(f"{_where(spec, row, index)} does not fit the format of dataset '{spec.name}': "
                             f"{_first_line(err)}") from None
    if not text:
        raise MambaspecError(f"{_where(spec, row, index)} makes an empty prompt (dataset '{spec.name}': "
                             f"{', '.join(spec.fields)}); give it some text or remove the row")
    return text


def fit_prompt(spec: DatasetSpec, row: dict, tokenizer, length: int, index: int = 0) -> list[int] | None:
    """Exactly ``length`` token ids: the row's prompt with its context cut in the middle.

    None when the context is too short to fill ``length``.
    """
    if spec.context is None:
        raise MambaspecError(f"dataset '{spec.name}' has no long context to cut; --lengths works with "
                             f"{', '.join(n for n, s in dataset_specs().items() if s.context)}")
    text = format_prompt(spec, {**row, spec.context: _CONTEXT_MARK}, index)
    templated = spec.chat and bool(getattr(tokenizer, "chat_template", None))
    if templated:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    before, mark, after = text.partition(_CONTEXT_MARK)
    if not mark:
        raise MambaspecError(f"the format of dataset '{spec.name}' does not use its context field '{spec.context}'")
    # Special tokens are in the template's text; without a template the tokenizer adds its own (BOS) in front.
    head = tokenizer(before, add_special_tokens=not templated)["input_ids"]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    keep = length - len(head) - len(tail)
    if keep < 0:
        raise MambaspecError(f"length {length} is shorter than the prompt of dataset '{spec.name}' without its "
                             f"context ({len(head) + len(tail)} tokens); ask for a longer --lengths")
    context = tokenizer(str(row[spec.context]), add_special_tokens=False)["input_ids"]
    if len(context) < keep:
        return None
    return head + context[: keep - keep // 2] + context[len(context) - keep // 2:] + tail


def build_prompts(
    spec: DatasetSpec,
    rows: Iterable[dict],
    tokenizer,
    length: int | None = None,
    max_tokens: int | None = None,
    limit: int | None = None,
) -> tuple[list[BenchPrompt], int]:
    """Up to ``limit`` prompts, and how many rows were passed over because their context is too short.

    With ``length`` every prompt is exactly that many tokens. Without it prompts keep their own
    length; one longer than ``max_tokens`` has its context cut to fit (an error for a dataset
    without a context field).
    """
    from ..core.engine import encode_prompt

    prompts: list[BenchPrompt] = []
    short = 0
    for i, row in enumerate(rows):
        if limit is not None and len(prompts) >= limit:
            break
        pid = str(row.get(spec.id_field, i)) if spec.id_field else str(i)
        if length is not None:
            ids = fit_prompt(spec, row, tokenizer, length, i)
            if ids is None:
                short += 1
                continue
        else:
            ids = encode_prompt(tokenizer, format_prompt(spec, row, i), chat=spec.chat)
            if max_tokens is not None and len(ids) > max_tokens:
                if spec.context is None:
                    raise MambaspecError(f"prompt {pid} of dataset '{spec.name}' has {len(ids)} tokens, more than the "
                                         f"{max_tokens} the target's context leaves; lower --max-new-tokens")
                ids = fit_prompt(spec, row, tokenizer, max_tokens, i)
                if ids is None:
                    raise MambaspecError(f"prompt {pid} of dataset '{spec.name}' cannot be cut to {max_tokens} tokens")
        prompts.append(BenchPrompt(pid, ids))
    if not prompts:
        what = f"a context long enough for {length} tokens" if length is not None else "any row"
        raise MambaspecError(f"dataset '{spec.name}' has no prompt with {what}; give longer documents with --data")
    return prompts, short
