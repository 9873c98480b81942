"""Markdown tables of a scripts/measure.sh run: per benchmark, per method τ, speed-up, draft and verify ms per
round, drafter state, and whether every output matched plain decoding.
Usage: python scripts/measure_table.py [OUT ...] (default runs/measure runs/measure/peers)"""

import sys
from pathlib import Path

import pandas as pd

COLUMNS = {"method": "method", "length": "length", "decode_tokens_per_s": "decode tok/s", "speedup_decode": "speed-up",
           "mean_accept_len": "τ", "mean_tree_nodes": "nodes/round", "no_draft_rounds": "no-draft rounds",
           "drafted_accept_len": "τ of drafted rounds", "predicted_accept_len": "predicted",
           "prediction_error": "prediction error",
           "draft_ms_per_round": "draft ms/round", "verify_ms_per_round": "verify ms/round",
           "drafter_state_bytes": "drafter state (KiB)", "greedy_match": "lossless"}


def table(csv: Path) -> str:
    frame = pd.read_csv(csv)
    frame = frame[[c for c in COLUMNS if c in frame.columns]].copy()
    if frame["length"].isna().all() or (frame["length"].astype(str) == "0").all():
        frame = frame.drop(columns="length")
    frame["drafter_state_bytes"] = (frame["drafter_state_bytes"].fillna(0) / 1024).round(0).astype(int)
    frame["no_draft_rounds"] = (100 * frame["no_draft_rounds"].fillna(0)).round(0).astype(int).astype(str) + " %"
    frame["speedup_decode"] = frame["speedup_decode"].map(lambda v: f"{v:.2f}×")
    frame["greedy_match"] = frame["greedy_match"].fillna("reference")
    frame = frame.round(2).astype(object).fillna("-").rename(columns=COLUMNS)
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False))


def summary(outs: list[Path], benches: list[str]) -> str:
    """One table: methods by workload, each cell "speed-up (τ)" against the ar of its own run; long documents
    split by length. ``outs``: run folders (a method measured in several keeps the first)."""
    cells: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for out in outs:
        for bench in benches:
            _cells(out / bench / "results.csv", bench, cells, columns)
    header = "| method | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    return header + "\n".join(f"| {method} | " + " | ".join(row.get(c, "-") for c in columns) + " |"
                               for method, row in cells.items())


def _cells(csv: Path, bench: str, cells: dict, columns: list) -> None:
    if csv.exists():
        frame = pd.read_csv(csv)
        for length, part in frame.groupby(frame["length"].fillna(0), sort=True):
            column = bench if not length else f"{bench} {int(length) // 1000}k"
            if column not in columns:
                columns.append(column)
            for row in part.itertuples():
                cells.setdefault(row.method, {}).setdefault(column, f"{row.speedup_decode:.2f}× "
                                                                     f"({row.mean_accept_len:.2f})")


def main(outs: list[str]) -> None:
    print(summary([Path(o) for o in outs], ["humaneval", "code", "math", "chat", "summaries", "longdocs",
                                             "chain4-humaneval", "chain4-chat"]))
    for out in outs:
        for csv in sorted(Path(out).glob("*/results.csv")):
            print(f"\n### {csv.parent.relative_to(Path(out).parent)}\n\n{table(csv)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/measure", "runs/measure/peers"])
