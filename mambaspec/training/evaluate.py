"""How well a drafter drafts for its target, on held-out distillation rows: top-1 agreement (teacher-forced on
the target's answers) and acceptance length of chain drafting through the real decoding loop, per domain."""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.drafter import ReadsTargetHidden
from ..core.engine import SpeculativeGenerator
from ..drafters.step import StepDrafter
from ..loading.models import LoadedModel


@torch.inference_mode()
def top1_agreement(drafter: StepDrafter, rows: list[dict]) -> float | None:
    """Fraction of answer tokens the drafter's argmax predicts, teacher-forced on the target's own answers
    (None for a drafter that reads the target's hidden states: only the decoding loop measures it)."""
    if isinstance(drafter, ReadsTargetHidden):
        return None
    hits = total = 0
    cand = drafter.candidates
    for row in rows:
        ids, start = [int(t) for t in row["ids"]], row["prompt_len"]
        if len(ids) <= start + 1:
            continue
        inp = drafter.encode(torch.tensor([ids[:-1]], device=drafter.model.device))
        logits = drafter.model(input_ids=inp).logits[0].float()
        pred = cand.target_ids(cand.scores(logits).argmax(-1)[start - 1:].tolist())
        gold = ids[start:]
        hits += sum(p == g for p, g in zip(pred, gold))
        total += len(gold)
    return hits / max(total, 1)


def evaluate_drafter(folder: str | Path, target: LoadedModel, rows: list[dict], new_tokens: int = 64,
                     tree: str = "1,1,1,1", per_domain: int = 8) -> dict:
    """Agreement and chain acceptance length (greedy) on up to ``per_domain`` held-out rows of each domain."""
    from ..loading.pipeline import load_drafter

    drafter = load_drafter(str(folder), target)
    gen = SpeculativeGenerator(target.model, drafter, tokenizer=target.tokenizer, target_options=target.optimized)
    by_domain: dict[str, list[dict]] = {}
    for r in rows:
        group = by_domain.setdefault(r.get("domain", "all"), [])
        if len(group) < per_domain:
            group.append(r)
    key = f"mean_accept_len_{tree.replace(',', '')}"
    results: dict = {"heldout_prompts": sum(len(g) for g in by_domain.values()), "domains": {}}
    all_tokens = all_rounds = 0
    for domain, group in sorted(by_domain.items()):
        tokens = rounds = 0
        for row in group:
            res = gen.generate([int(t) for t in row["ids"][: row["prompt_len"]]], max_new_tokens=new_tokens, tree=tree)
            tokens, rounds = tokens + res.stats.new_tokens, rounds + res.stats.rounds
        agreement = top1_agreement(drafter, group)
        results["domains"][domain] = {"prompts": len(group), key: round(tokens / max(rounds, 1), 4)}
        if agreement is not None:
            results["domains"][domain]["top1_agreement"] = round(agreement, 4)
        all_tokens, all_rounds = all_tokens + tokens, all_rounds + rounds
    if all("top1_agreement" in d for d in results["domains"].values()):
        results["top1_agreement"] = round(sum(d["top1_agreement"] * d["prompts"] for d in results["domains"].values())
                                          / max(results["heldout_prompts"], 1), 4)
    results[key] = round(all_tokens / max(all_rounds, 1), 4)
    return results
