"""The size sweep's frontier (issue 12) from scripts/sweep.sh's outputs: per drafter its parameters, held-out
chain-of-4 acceptance per domain (eval.json), draft cost per step, and the bench's speed-up on the held-out
code and chat mixes (default tree, ar in the same run). Usage: python scripts/sweep_table.py [runs/sweep]"""

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch


def step_ms(folder: Path) -> float:
    """Median ms of one batched drafter step for a 4-node frontier (the drafter alone, 2 threads)."""
    from mambaspec import ModelOptions
    from mambaspec.drafters import make_drafter
    from mambaspec.drafters.vocab import vocab_from_meta
    from mambaspec.loading.models import load_model

    loaded = load_model(str(folder), ModelOptions(device="cpu"), role="drafter")
    drafter = make_drafter(loaded.model, draft_vocab=vocab_from_meta(loaded.meta))
    drafter.prefill(list(range(1000, 1200)))
    state = drafter.state.select([0, 0, 0, 0])
    tokens = torch.tensor([[11], [12], [13], [14]])
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        drafter._run(state, tokens)
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main(root: str) -> None:
    root = Path(root)
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / "eval.json").exists()):
        ev = json.loads((folder / "eval.json").read_text())
        meta = json.loads((folder / "mambaspec.json").read_text())
        row = {"drafter": folder.name, "parameters (M)": round(meta["parameters"] / 1e6, 2),
               "τ chain-4 held-out": ev["mean_accept_len_1111"], "top-1 agreement": ev.get("top1_agreement"),
               **{f"τ {d}": v["mean_accept_len_1111"] for d, v in ev["domains"].items()},
               "draft ms/step (4 nodes)": round(step_ms(folder), 2)}
        for mix in ("code", "chat"):
            csv = root / f"bench-{mix}" / "results.csv"
            if csv.exists():
                df = pd.read_csv(csv)
                hit = df[(df["method"] == "mamba") & (df["drafter"] == str(folder))]
                if len(hit):
                    row[f"{mix}: τ (2,1,1)"] = hit.iloc[-1]["mean_accept_len"]
                    row[f"{mix}: speed-up"] = hit.iloc[-1]["speedup_decode"]
                    row[f"{mix}: draft ms/round"] = hit.iloc[-1]["draft_ms_per_round"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    print("| " + " | ".join(frame.columns) + " |")
    print("|" + "---|" * len(frame.columns))
    for _, r in frame.iterrows():
        print("| " + " | ".join("-" if v != v or v is None else str(v) for v in r.values) + " |")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/sweep")
