"""The table of scripts/policy_bench.sh: per workload and variant, plain decoding's speed and each method's decode
speed-up over it (τ, share of rounds that drafted nothing, greedy match).  Usage: python scripts/policy_table.py OUT"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    print("| workload | variant | ar tok/s | mamba-dynamic | mamba+lookup-dynamic (default) |")
    print("|---|---|---|---|---|")
    workloads = sorted({p.parent.name for p in out.glob("*/*/results.csv")}, key=lambda w: (w.split("-")[1], w))
    for workload in workloads:
        for variant in ("old-shipped", "new-shipped", "new-long"):
            path = out / variant / workload / "results.csv"
            if not path.exists():
                continue
            rows = {r["method"]: r for r in csv.DictReader(path.open())}
            cells = []
            for method in ("mamba-dynamic", "mamba+lookup-dynamic"):
                r = rows.get(method)
                if r is None:
                    cells.append("-")
                    continue
                share = float(r["no_draft_rounds"])  # a fraction of the rounds
                same = "" if r["greedy_match"] == "yes" else f" (outputs differ from ar's: {r['greedy_match']})"
                cells.append(f"{float(r['speedup_decode']):.2f}× ({float(r['mean_accept_len']):.2f}, "
                             f"{share:.0%}){same}")
            ar = float(rows["ar"]["decode_tokens_per_s"]) if "ar" in rows else float("nan")
            print(f"| {workload} | {variant} | {ar:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
