"""What a ``pretrain-drafter`` run will do and roughly how long it takes, said before it starts.

The times are rough: rates measured on this project's CPU (2 cores, SmolLM2-135M as the target) and
scaled by the recipe's sizes; another machine, another target or a busy machine differ. What is
already made (data sets, the standard library's tokens, a checkpoint) is counted as done.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import cache_dir
from .datapack import MAGPIE_RAW, PROGRESS, magpie_batches, pack_files, read_blob, shard_path, span
from .recipe import DrafterRecipe

# Batched generation by the target: seconds per (row x new token) slot. broad-v1's answers took about 1.3 h for
# 110 batches x 32 rows x up to 256 new tokens (README, "Drafters").
GENERATE_SLOT_S = 0.0052
# A data set with long answers, documents and conversations (broad-v2) costs about twice that a slot: its prompts and
# answers are longer, and attention over them weighs (47 of its batches in 109 min on 2 free cores, 96 rows decoded
# together, 2026-12-07: 139 s a batch of 32 x ~430 new-token slots).
LONG_SLOT_S = 0.0101
# Training the shipped Mamba2 drafter (hidden 256, 4 layers): 1,200 steps x 4,096 tokens in 29 min. Other sizes
# scale by (hidden_size^2 x layers) ** -0.3: the quickstart's (hidden 128, 2 layers, 8x less) ran at 5,000 tokens/s.
TRAIN_TOKENS_PER_S = 2800
TRAIN_REFERENCE_WORK = 256 * 256 * 4
EAGLE_FEATURE_TOKENS_PER_S = 830  # the target's hidden states for EAGLE: 300k tokens in about 6 min
EAGLE_TRAIN_TOKENS_PER_S = 2300  # training the EAGLE head (the target's width): 400 steps x 2,048 tokens in 6 min
STDLIB_TOKENIZE_S = 10  # the Python standard library's source (3.1 M tokens), tokenized once and cached: 7 s here
QUICKSTART = "recipes/drafters/quickstart.yaml"


def describe_run(recipe: DrafterRecipe, target: str, out: str | Path | None = None, resume: bool = False,
                 data_only: bool = False) -> list[str]:
    """Lines saying what the run will do, step by step, with a rough time each, and the total."""
    from .data_recipe import DataRecipe

    lines, total = [], 0.0
    for src in recipe.data:
        if src["source"] == "distill":
            line, seconds = _data_set(DataRecipe.of_source(src))
            lines.append(line)
            total += seconds
    if data_only:
        return _with_total(lines, total)
    if any(src["source"] == "stdlib-code" for src in recipe.data) and not _stdlib_cached(target):
        lines.append(f"the standard library's source: tokenized once and cached (~{duration(STDLIB_TOKENIZE_S)})")
        total += STDLIB_TOKENIZE_S
    for src in recipe.data:
        if src.get("labels") == "target":
            from .data import DEFAULT_LABEL_TOKENS
            from .relabel import LABEL_TOKENS_PER_S

            n = int(src.get("tokens", DEFAULT_LABEL_TOKENS))
            seconds = n / LABEL_TOKENS_PER_S
            lines.append(f"the target labels {n:,} tokens of {src['source']} with its own predictions, cached "
                         f"(~{duration(seconds)} when not cached yet)")
            total += seconds
    if recipe.arch == "eagle":
        seconds = recipe.eagle_tokens / EAGLE_FEATURE_TOKENS_PER_S
        lines.append(f"the target's hidden states of {recipe.eagle_tokens:,} tokens for the EAGLE head, cached "
                     f"(~{duration(seconds)} when not cached yet)")
        total += seconds
    done = _steps_done(out) if resume and out is not None else 0
    tokens = recipe.seq_len * recipe.batch_size
    rate = (EAGLE_TRAIN_TOKENS_PER_S if recipe.arch == "eagle" else
            TRAIN_TOKENS_PER_S * (TRAIN_REFERENCE_WORK / (recipe.hidden_size ** 2 * recipe.num_layers)) ** 0.3)
    seconds = max(0, recipe.steps - done) * tokens / rate
    if done >= recipe.steps:
        lines.append(f"training: done ({recipe.steps:,} steps)")
    else:
        lines.append(f"training: {recipe.steps:,} steps x {tokens:,} tokens" + (f", from step {done:,}" if done else "")
                     + f" (~{duration(seconds)}), a checkpoint every {recipe.checkpoint_every} steps")
    total += seconds
    lines.append(f"then a held-out evaluation ({recipe.eval_prompts} prompts per domain x {recipe.eval_new_tokens} "
                 f"new tokens) and the model card")
    return _with_total(lines, total)


def _with_total(lines: list[str], seconds: float) -> list[str]:
    return ["plan (rough times, from this project's 2-core CPU with SmolLM2-135M; a busy machine or --threads 1 can "
            "take up to 3x):",
            *(f"  {line}" for line in lines), f"  about {duration(seconds)} in all"]


def _data_set(data) -> tuple[str, float]:
    """One distillation data set: what is left to make of it and how long that takes."""
    folder = data.folder
    name = f"data set {data.name} (recipes/data/{data.name}.yaml, kept in {folder})"
    size, long = data.answers.batch_size, data.long_answers
    # a share of the batches answers up to long.max_new_tokens
    new_tokens = data.answers.max_new_tokens * (1 - long.fraction) + long.max_new_tokens * long.fraction
    slot = size * new_tokens * (LONG_SLOT_S if long.fraction else GENERATE_SLOT_S)
    budget = data.answers.batches
    plan_file = folder / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else _packed_plan(data.packs)
    if plan:
        wanted = budget or plan.get("planned") or plan["batches"]
        here = {i for i in range(wanted) if shard_path(folder, i).exists()}
        restore = {i for i in _packed_shards(data.packs) if i < wanted} - here
        made = len(here) + len(restore)
        some = f"all {len(restore)}" if len(restore) == made else f"{len(restore)} of them"
        packs = f" ({some} restored at the start from recipes/data/packs/{data.name})" if restore else ""
        if made >= wanted:
            return f"{name}: {f'its first {budget} batches ' if budget else ''}made{packs}", 0.0
        seconds = (wanted - made) * slot
        return (f"{name}: {made} of {wanted} batches answered{packs}; the target answers the other {wanted - made} "
                f"(~{duration(seconds)})"), seconds
    parts, seconds = [], 0.0
    attempts = data.magpie.attempts
    if attempts and not (folder / "prompts.jsonl").exists():
        raw = folder / MAGPIE_RAW
        turns = magpie_batches(raw.read_text()) if raw.exists() else {}
        done = len(turns | _packed_turns(data.packs)) * data.magpie.batch_size  # a run restores the packed ones
        left = max(attempts - done, 0)
        t = left * data.magpie.max_new_tokens * GENERATE_SLOT_S
        parts.append(f"the target writes {left:,} user turns{f' (of {attempts:,})' if done else ''} (~{duration(t)})")
        seconds += t
    if data.documents:
        parts.append("documents are gathered from man pages and Python's documentation")
    prompts = (sum(int(n) for n in data.templates.values()) + int(data.stdlib_functions) + attempts
               + data.documents.short + data.documents.long)
    batches = budget or -(-prompts // size)
    t = batches * slot
    parts.append(f"it answers {'the first ' if budget else 'about '}{batches:,} batches of {size} prompts "
                 f"(~{duration(t)})")
    seconds += t
    return f"{name}: not made yet; " + ", ".join(parts) + "; an interrupted run continues where it stopped", seconds


def _packed_shards(packs: Path) -> set[int]:
    """The shards of a data set committed as packs (``training.datapack``), which a run restores before it goes on."""
    return {i for f in pack_files(packs) for i in range(span(f)[0], span(f)[1] + 1)}


def _packed_plan(packs: Path) -> dict | None:
    """A data set's plan as the first of its packs carries it; None when it has no packs yet."""
    files = pack_files(packs)
    if not files or span(files[0])[0] != 0:
        return None
    plan = read_blob(files[0]).get("files", {}).get("plan.json")
    return json.loads(plan) if plan else None


def _packed_turns(packs: Path) -> dict[int, str]:
    """Magpie's user turns packed before the data set had a plan (``PROGRESS``), by batch."""
    path = Path(packs) / PROGRESS
    return magpie_batches(read_blob(path)["files"][MAGPIE_RAW]) if path.exists() else {}


def _stdlib_cached(target: str) -> bool:
    return any((cache_dir() / "tokens").glob(f"{Path(target).name}-*-stdlib-code.pt"))


def _steps_done(out: str | Path) -> int:
    """The last step in ``out``'s metrics (a cheap stand-in for the checkpoint's step)."""
    path = Path(out) / "metrics.csv"
    if not path.exists():
        return 0
    steps = [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    return max((int(s) for s in steps if s.isdigit()), default=0)


def duration(seconds: float) -> str:
    """A rough time as people say it: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{max(1, round(seconds / 10) * 10) if seconds >= 10 else max(1, round(seconds))} s"
    if seconds < 60 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
