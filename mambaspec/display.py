"""What the command line prints: stats and arms tables, progress, streamed text.

Generated text goes to stdout and nothing else does (``--json`` prints one object there instead);
tables, notes and progress go to stderr. On a terminal progress is a rich bar; otherwise (a log
file, ``nohup``, CI) it is a plain line per step, flushed at once, so a long run never looks hung.
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _width(stream) -> int | None:
    """None (rich's own width) on a terminal or when COLUMNS is set; wide otherwise, so tables stay whole."""
    return None if stream.isatty() or "COLUMNS" in os.environ else 250


def consoles() -> tuple[Console, Console]:
    """(stdout, stderr) consoles for the current streams (the CLI makes them per command)."""
    return (Console(file=sys.stdout, highlight=False, width=_width(sys.stdout)),
            Console(file=sys.stderr, highlight=False, width=_width(sys.stderr)))


class Reporter:
    """Progress and notes on stderr: ``status`` lines, ``update(label, done, total)`` per task."""

    def __init__(self, console: Console, unit: str = "prompts") -> None:
        self.console = console
        self.unit = unit
        self.start = time.perf_counter()
        self.live = console.is_terminal
        self._bar: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def __enter__(self) -> Reporter:
        if self.live:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(self.unit), TimeElapsedColumn(), console=self.console)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.start)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    def status(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(f"[dim]{message}[/]", soft_wrap=True)
        else:
            self.console.print(f"[{self._elapsed()}] {message}", soft_wrap=True, highlight=False, markup=False)
            self.console.file.flush()

    def update(self, label: str, done: int, total: int, **fields) -> None:
        extra = "".join(f", {k} {v}" for k, v in fields.items())
        if self._bar is not None:
            if label not in self._tasks:
                self._tasks[label] = self._bar.add_task(label + extra, total=total)
            self._bar.update(self._tasks[label], completed=done, total=total, description=label + extra)
            return
        if self._last.get(label) == done and not fields:
            return
        self._last[label] = done
        self.status(f"{label}: {done}/{total} {self.unit}{extra}")


class Streamer:
    """Writes text pieces to stdout as they come."""

    def __init__(self) -> None:
        self.wrote = False

    def __call__(self, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()
        self.wrote = True


STATS = [  # (stat, format, meaning)
    ("drafter", "{}", "the drafter (none = plain target decoding)"),
    ("target_options", "{}", "how the target's forward was made cheap (--linear, --quantize, --compile)"),
    ("tree", "{}", "draft tree shape (N1,...,Nγ; () without a drafter), or what chose it every round (auto, dynamic)"),
    ("new_tokens", "{}", "tokens generated"),
    ("stopped", "{}", "why generation stopped: eos, stop (a --stop string), max_new_tokens, context"),
    ("seconds", "{:.2f}", "wall time, prefill included, model loading excluded"),
    ("tokens_per_s", "{:.1f}", "new_tokens / seconds"),
    ("decode_tokens_per_s", "{:.1f}", "new_tokens / (seconds - prefill_s)"),
    ("prefill_s", "{:.3f}", "target and drafter reading the prompt"),
    ("rounds", "{}", "draft-verify rounds = target forwards after prefill"),
    ("mean_accept_len", "{:.2f}", "tokens committed per round (accepted drafts + 1)"),
    ("mean_tree_nodes", "{:.1f}", "draft tokens verified per round"),
    ("no_draft_rounds", "{:.0%}", "rounds that verified the pending token alone (nothing paid)"),
    ("draft_s", "{:.3f}", "drafter: building trees, feeding accepted tokens"),
    ("verify_s", "{:.3f}", "target: verification forwards, acceptance, cache compaction"),
    ("target_forward_s", "{:.3f}", "part of verify_s inside the target's forward"),
    ("other_s", "{:.3f}", "everything else in the loop"),
    ("peak_mem_mb", "{:.0f}", "MiB; CUDA: max allocated; CPU: peak resident memory"),
    ("drafter_state_bytes", "{:,}", "drafter state / KV cache after the prompt"),
    ("target_kv_bytes", "{:,}", "target KV cache after the prompt"),
]


def stats_table(stats) -> Table:
    t = Table(title="generation stats", header_style="bold")
    for col in ("stat", "value", "meaning"):
        t.add_column(col, justify="right" if col == "value" else "left", style="dim" if col == "meaning" else None)
    for key, fmt, meaning in STATS:
        t.add_row(key, fmt.format(getattr(stats, key)), meaning)
    for key, value in stats.policy_report.items():
        if key != "arms":
            t.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value), "the tree policy's own numbers")
    return t


RANKED_BY = {"replayed": "est. tokens/s: replayed tokens/round ÷ round cost (per confidence context when choosing)",
             "measured": "mean tokens/s of its rounds", "modeled": "the paper's −(1+λγ)/N_accept"}


def dynamic_table(row: dict) -> Table:
    """``tune --policy dynamic``'s summary: what dynamic trees drafted and how well their predictions held."""
    t = Table(title=f"dynamic trees, drafter {row['drafter']}", header_style="bold",
              caption="predicted / measured: tokens per round that drafted, expected by the policy and committed")
    cells = {"prompts": f"{row['prompts']}", "new tokens": f"{row['new_tokens']}",
             "tok/s": f"{row['tokens_per_s']:.1f}", "τ": f"{row['mean_accept_len']:.2f}",
             "nodes/round": f"{row['mean_tree_nodes']:.2f}", "no-draft rounds": f"{100 * row['no_draft_rounds']:.0f} %",
             "predicted / measured": (f"{row['predicted_accept_len']:.2f} / {row['drafted_accept_len']:.2f}"
                                      if "predicted_accept_len" in row else "-"),
             "error": f"{100 * row['prediction_error']:.1f} %" if "prediction_error" in row else "-"}
    for col in cells:
        t.add_column(col, justify="right")
    t.add_row(*cells.values())
    return t


def arms_table(arms: list[dict], title: str, best: str | None = None, reward: str = "replayed",
               policy: str = "ucb") -> Table:
    """Per-arm statistics; ``policy``: ``ucb`` (a bandit chose the arms, ranked by value) or ``fixed`` (every arm
    ran every prompt, the best is the fastest)."""
    ranked = (f"every arm ran every prompt; the best (green) has the highest tokens/s; value = {RANKED_BY[reward]}"
              if policy == "fixed" else f"the bandit ranks arms by value = {RANKED_BY[reward]}")
    t = Table(title=title, header_style="bold", caption=f"{ranked}; tokens/round and tokens/s are over the rounds the "
              "arm ran, replayed over all rounds")
    this_run = any("run_pulls" in a for a in arms)
    columns = ("arm", "tree", "pulls (this run)" if this_run else "pulls", "tokens/round", "tokens/s",
               "ms/round", "replayed tokens/round", "value")
    for col in columns:
        t.add_column(col, justify="left" if col in ("arm", "tree") else "right")
    for a in arms:
        pulls = f"{a['pulls']} ({a['run_pulls']})" if this_run else str(a["pulls"])
        replayed = a.get("replayed_accept_len", 0.0)
        t.add_row(a["name"], f"({a['tree']})", pulls, f"{a['mean_accept_len']:.2f}", f"{a['tokens_per_s']:.1f}",
                  f"{a['round_cost_ms']:.1f}", f"{replayed:.2f}" if replayed else "-",
                  f"{a['value']:.2f}" if "value" in a else "-", style="bold green" if a["name"] == best else None)
    return t
