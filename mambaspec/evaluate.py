"""How well a drafter drafts for its target: top-1 agreement and acceptance length on held-out prompts."""

from __future__ import annotations

from pathlib import Path

import torch

from .engine import SpeculativeGenerator
from .models import LoadedModel


@torch.inference_mode()
def top1_agreement(drafter, rows: list[dict]) -> float:
    """Fraction of answer tokens the drafter's argmax predicts, teacher-forced on the target's own answers."""
    hits = total = 0
    for row in rows:
        ids, start = row["ids"], row["prompt_len"]
        if len(ids) <= start + 1:
            continue
        inp = torch.tensor([ids[:-1]], device=drafter.model.device)
        if drafter.draft_vocab is not None:
            inp = drafter.draft_vocab.encode(inp)
        logits = drafter.model(input_ids=inp).logits[0].float()
        pred = drafter._fit_vocab(logits).argmax(-1)[start - 1:]
        gold = torch.tensor(ids[start:], device=pred.device)
        hits += int((pred == gold).sum())
        total += gold.numel()
    return hits / max(total, 1)


def evaluate_drafter(folder: str | Path, target: LoadedModel, rows: list[dict], new_tokens: int = 64,
                     tree: str = "1,1,1,1") -> dict:
    """Agreement and mean acceptance length of chain drafting (greedy) through the real decoding loop."""
    from .pipeline import load_drafter

    drafter = load_drafter(str(folder), target, device=str(target.device))
    drafter.vocab_size = target.model.get_output_embeddings().weight.shape[0]
    agreement = top1_agreement(drafter, rows)
    gen = SpeculativeGenerator(target.model, drafter, tokenizer=target.tokenizer)
    tokens = rounds = 0
    seconds = 0.0
    for row in rows:
        result = gen.generate(row["ids"][: row["prompt_len"]], max_new_tokens=new_tokens, tree=tree)
        tokens += result.stats.new_tokens
        rounds += result.stats.rounds
        seconds += result.stats.seconds
    return {"heldout_prompts": len(rows), "top1_agreement": agreement,
            f"mean_accept_len_{tree.replace(',', '')}": tokens / max(rounds, 1),
            "tokens_per_s": tokens / max(seconds, 1e-9)}
