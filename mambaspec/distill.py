"""Sequence-level knowledge distillation data: the target's own greedy answers to prompts.

Rows are appended to a JSONL file as each batch finishes (``{"id", "ids", "prompt_len"}``, ids
in the target's vocabulary: chat-formatted prompt followed by the answer), so an interrupted run
loses at most one batch and a rerun continues where it stopped (Kim & Rush 2016, sequence-level
KD; the standard way drafters are aligned with a target, e.g. DistillSpec arXiv 2310.08461).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .engine import encode_prompt


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text().splitlines():
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut by an interruption
    return ids


def load_rows(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


@torch.inference_mode()
def generate_distillation_data(
    model,
    tokenizer,
    prompts: list[dict],
    out: Path,
    max_new_tokens: int = 160,
    batch_size: int = 16,
    progress=None,
) -> int:
    """Append the target's greedy answers to ``prompts`` (``{"id", "prompt"}``) to ``out``; returns rows added."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen = done_ids(out)
    todo = [p for p in prompts if p["id"] not in seen]
    encoded = [(p["id"], encode_prompt(tokenizer, p["prompt"], chat=True)) for p in todo]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    added = 0
    # Batches of similar length waste less on padding; order within the run stays deterministic.
    for start in range(0, len(encoded), batch_size * 8):
        block = sorted(encoded[start:start + batch_size * 8], key=lambda r: len(r[1]))
        for b in range(0, len(block), batch_size):
            batch = block[b:b + batch_size]
            width = max(len(ids) for _, ids in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in batch], device=model.device)
            attn = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch], device=model.device)
            gen = model.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=eos)
            with out.open("a") as f:
                for (pid, ids), row in zip(batch, gen[:, width:].tolist()):
                    answer = []
                    for t in row:
                        answer.append(t)
                        if t == eos:
                            break
                    f.write(json.dumps({"id": pid, "prompt_len": len(ids), "ids": ids + answer}) + "\n")
            added += len(batch)
            if progress is not None:
                progress(len(batch), sum(len(r) for r in gen[:, width:].tolist()))
    return added
