"""τ against tokens seen: evaluate a training run's snapshots (and any other drafters) on the same held-out rows.

    python scripts/learning_curve.py runs/long/mamba2-smollm2 [--also mambaspec/shipped/mamba2-smollm2] [--out CSV]
    python scripts/learning_curve.py RUN --split train      # the same on training rows: how much is memorised

Every drafter runs the recipe's held-out evaluation (chain of 4, greedy, through the real decoding loop; top-1
agreement teacher-forced on the target's answers) on the same rows of the run's distillation set: the snapshots
under RUN/snapshots/step-N (recipe ``snapshot_every``), the run's final drafter when it is written, and the
folders given with --also. Writes one CSV row per drafter and domain (default RUN/learning_curve.csv); rerun to
resume (drafters already in the CSV are skipped).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from mambaspec.drafters.vocab import META_FILE
from mambaspec.loading.models import load_model
from mambaspec.loading.options import ModelOptions
from mambaspec.training.datagen import DataRecipe, read_shards
from mambaspec.training.evaluate import evaluate_drafter

FIELDS = ["drafter", "step", "tokens_seen", "domain", "prompts", "tau_chain4", "top1_agreement"]


def drafters_of(run: Path, also: list[str]) -> list[tuple[Path, int | None]]:
    snaps = sorted((run / "snapshots").glob("step-*")) if (run / "snapshots").is_dir() else []
    found = [(p, int(p.name.split("-")[1])) for p in snaps if (p / META_FILE).exists()]
    if (run / META_FILE).exists():
        found.append((run, json.loads((run / META_FILE).read_text())["steps"]))
    return found + [(Path(a), None) for a in also]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a pretrain-drafter --out folder")
    ap.add_argument("--also", action="append", default=[], help="another drafter folder to evaluate (repeatable)")
    ap.add_argument("--set", default=None, help="distillation set whose held-out rows to use (default: the run's)")
    ap.add_argument("--split", choices=["heldout", "train"], default="heldout",
                    help="the rows to draft on: held-out (default) or training rows (greedy ones, in a fixed shuffle): "
                         "against held-out, how much of the drafter's acceptance is memorised")
    ap.add_argument("--per-domain", type=int, default=6, help="prompts per domain")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--out", default=None, help="CSV (default RUN/learning_curve.csv)")
    args = ap.parse_args()
    run = Path(args.run)
    drafters = drafters_of(run, args.also)
    if not drafters:
        raise SystemExit(f"no drafter in {run} yet (no snapshots/step-N, no final model) and none given with --also")
    first = json.loads((drafters[0][0] / META_FILE).read_text())["recipe"]
    name = args.set or next(s["set"] for s in first["data"] if s["source"] == "distill")
    rows = list(read_shards(DataRecipe.named(name).folder, split=args.split))
    if args.split == "train":
        rows = [r for r in rows if r.get("mode") == "greedy"]
        random.Random(0).shuffle(rows)
    out = Path(args.out or run / ("learning_curve.csv" if args.split == "heldout" else "learning_curve-train.csv"))
    done = {r["drafter"] for r in csv.DictReader(out.open())} if out.exists() else set()
    target = load_model(args.target, ModelOptions(device="cpu", dtype="float32"))
    for folder, step in drafters:
        if str(folder) in done:
            continue
        meta = json.loads((folder / META_FILE).read_text())
        step = meta["steps"] if step is None else step
        tokens = step * meta["recipe"]["seq_len"] * meta["recipe"]["batch_size"]  # constant per step (curriculum)
        res = evaluate_drafter(folder, target, rows, args.new_tokens, per_domain=args.per_domain)
        lines = [dict(domain=d, prompts=v["prompts"], tau_chain4=v["mean_accept_len_1111"],
                      top1_agreement=v.get("top1_agreement")) for d, v in res["domains"].items()]
        lines.append(dict(domain="all", prompts=res["heldout_prompts"], tau_chain4=res["mean_accept_len_1111"],
                          top1_agreement=res.get("top1_agreement")))
        new = not out.exists()
        with out.open("a", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            w.writerows({"drafter": str(folder), "step": step, "tokens_seen": tokens, **line} for line in lines)
        print(f"{folder}: tau {res['mean_accept_len_1111']:.3f}, top-1 {res.get('top1_agreement')}", flush=True)


if __name__ == "__main__":
    main()
