"""Bench results for people: rich tables (methods side by side) and matplotlib plots against length."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ..errors import MambaspecError

TABLE_COLUMNS = [  # (title, key, format, best: "max" / "min" / None)
    ("decode tok/s", "decode_tokens_per_s", "{:.1f}", "max"),
    ("speed-up", "speedup_decode", "{:.2f}×", "max"),
    ("tok/s e2e", "tokens_per_s", "{:.1f}", "max"),
    ("speed-up e2e", "speedup_e2e", "{:.2f}×", "max"),
    ("accept len", "mean_accept_len", "{:.2f}", "max"),
    ("draft ms/round", "draft_ms_per_round", "{:.1f}", None),
    ("verify ms/round", "verify_ms_per_round", "{:.1f}", None),
    ("prefill s", "prefill_s", "{:.3f}", "min"),
    ("peak MiB", "peak_mem_mb", "{:.0f}", "min"),
    ("drafter state", "drafter_state_bytes", None, None),
    ("target KV", "target_kv_bytes", None, None),
]


def count(n: int, noun: str) -> str:
    """``1 prompt``, ``2 prompts``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def results_tables(rows: list[dict]) -> list[Table]:
    """One rich table per (dataset, length): methods side by side, the best of each column in bold green,
    greedy mismatches with ``ar`` in red."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["length"]), []).append(r)
    tables = []
    for (dataset, length), group in groups.items():
        first = group[0]
        title = (f"{dataset}{f' · {int(length)} tokens' if length else ''} · "
                 f"{count(int(first['prompts']), 'prompt')} · "
                 f"{first['max_new_tokens']} new tokens · {first['device']} {first['dtype']}")
        t = Table(title=title, header_style="bold")
        t.add_column("method")
        for col in TABLE_COLUMNS:
            t.add_column(col[0], justify="right")
        t.add_column("lossless")
        best = {}
        for _, key, _, how in TABLE_COLUMNS:
            values = [r[key] for r in group if r[key] is not None]
            if how and len(values) > 1:
                best[key] = max(values) if how == "max" else min(values)
        for r in group:
            cells = [r["method"]]
            for _, key, fmt, _ in TABLE_COLUMNS:
                v = r[key]
                text = "-" if v is None else (_human_bytes(v) if fmt is None else fmt.format(v))
                cells.append(f"[bold green]{text}[/]" if v is not None and best.get(key) == v else text)
            cells.append(_lossless_cell(r))
            t.add_row(*cells)
        tables.append(t)
    return tables


def _lossless_cell(row: dict) -> str:
    if row["method"] == "ar":
        match = str(row.get("reference_match") or "")
        if match.startswith("no"):
            return f"[bold red]✗ transformers' generate differs ({match[3:].strip('()')})[/]"
        return "reference" + (" [green](= transformers' generate)[/]" if match == "yes" else "")
    if float(row["temperature"]):
        return "n/a (sampling)"
    if row["greedy_match"] == "yes":
        return "[green]✓ same as ar[/]"
    if row["greedy_match"] == "no":
        return f"[bold red]✗ {int(row['mismatched_prompts'])}/{int(row['prompts'])} differ[/]"
    return "-"


def _human_bytes(n: float) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MambaspecError("--plot needs matplotlib: pip install 'mambaspec[plot]'") from None


PANELS = {  # figure -> [(column, axis label, scale)]
    "throughput": [("decode_tokens_per_s", "decode tokens/s", 1), ("speedup_decode", "speed-up over ar (decode)", 1)],
    "memory": [("peak_mem_mb", "peak memory (MiB)", 1), ("drafter_state_bytes", "drafter state / KV (MiB)", 2**20),
               ("target_kv_bytes", "target KV cache (MiB)", 2**20)],
}


def plot_results(rows: list[dict], out: Path) -> list[Path]:
    """PNGs per dataset: throughput (and speed-up over ar) and memory (peak, drafter state, target KV cache) per
    method, against the prompt length when the bench cut prompts to lengths, else as labelled bars."""
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        subset = [r for r in rows if r["dataset"] == dataset]
        first = subset[0]
        shapes = sorted({str(r["tree"]) for r in subset if str(r["tree"] or "").startswith("(")})
        trees = f"fixed-tree methods {', '.join(shapes)}, " if shapes else ""  # the others: dynamic, auto or none
        subtitle = (f"target {first['target']}, {trees}{first['max_new_tokens']} new tokens, "
                    f"{first['device']} {first['dtype']}, {count(int(first['threads']), 'thread')}")
        for name, keys in PANELS.items():
            fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
            for ax, (key, label, scale) in zip(axes[0], keys):
                _panel(ax, subset, key, label, scale)
            fig.suptitle(f"{dataset}: {name}\n{subtitle}", fontsize=10)
            fig.tight_layout()
            path = out / f"{dataset}-{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def _panel(ax, rows: list[dict], key: str, label: str, scale: float) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_length = any(r["length"] for r in rows)
    for i, m in enumerate(methods):
        pts = sorted((r["length"] or 0, (r[key] or 0) / scale) for r in rows if r["method"] == m)
        if by_length:  # markers and dashes tell apart methods whose lines coincide
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="osD^v*"[i % 6],
                    linestyle=("-", "--", ":", "-.")[i % 4], label=m)
        else:
            bar = ax.bar(i, pts[0][1])
            ax.bar_label(bar, fmt="%.2f×" if key.startswith("speedup") else "%.1f", fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(label, fontsize=10)
    if by_length:
        ax.set_xlabel("prompt length (tokens)")
        ax.legend(fontsize=8)
    else:
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylim(bottom=0)  # from zero: a few MiB between methods are not drawn as a large gap
    if key.startswith("speedup"):
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.grid(alpha=0.3)
