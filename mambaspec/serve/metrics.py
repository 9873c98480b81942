"""The server's counters, in Prometheus' text format (``GET /metrics``).

Rounds, tokens, tokens per round and acceptance by depth are counted as rounds happen (a cancelled request's
rounds included); drafting, verification and prefill seconds, draft nodes and drafted rounds when a generation
finishes (they come from its ``GenerationStats``).
"""

from __future__ import annotations

import threading
from collections import Counter

from ..core.stats import GenerationStats

ROUND_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16)  # tokens committed per round
DEPTHS = 8  # acceptance counted at draft depths 1..DEPTHS

# Every metric: its name (after ``mambaspec_``), Prometheus type and help text, one per line.
_TABLE = """
requests_total            counter    Requests to the generation endpoints, by endpoint and HTTP status.
requests_cancelled_total  counter    Generations stopped because their client went away.
prompt_tokens_total       counter    Prompt tokens of the generations run.
completion_tokens_total   counter    Tokens generated (a cancelled generation's included).
rounds_total              counter    Draft-verify rounds: one target forward each.
tokens_per_round          histogram  Tokens committed per round: accepted draft tokens + the target's own.
accepted_at_depth_total   counter    Rounds that accepted a draft token at this tree depth; over drafted_rounds_total: \
the acceptance rate by depth.
drafted_rounds_total      counter    Rounds that verified at least one draft token (finished generations).
draft_tokens_total        counter    Draft tokens (tree nodes) verified (finished generations).
draft_seconds_total       counter    Drafter time: building trees and feeding accepted tokens (finished).
verify_seconds_total      counter    Target verification forwards and acceptance (finished generations).
prefill_seconds_total     counter    Reading prompts, target and drafter (finished generations).
generation_seconds_total  counter    Wall time of generations, prefill included (finished).
queue_wait_seconds_total  counter    Time requests waited for the engine before their generation began.
queue_length              gauge      Requests waiting for the engine.
engine_busy               gauge      1 while a generation runs (one at a time).
"""
HELP = {name: (kind, text) for name, kind, text in (line.split(maxsplit=2) for line in _TABLE.strip().splitlines())}


class Metrics:
    """Thread-safe counters: the engine's worker thread adds, the event loop reads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: Counter = Counter()  # (name, labels) -> value
        self.rounds_by_tokens: Counter = Counter()

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        with self.lock:
            self.values[name, tuple(sorted(labels.items()))] += value

    def request(self, endpoint: str, status: int) -> None:
        self.add("requests_total", endpoint=endpoint, status=str(status))

    def started(self, prompt_tokens: int, queue_s: float) -> None:
        self.add("prompt_tokens_total", prompt_tokens)
        self.add("queue_wait_seconds_total", queue_s)

    def round(self, tokens: int) -> None:
        with self.lock:
            self.values["rounds_total", ()] += 1
            self.values["completion_tokens_total", ()] += tokens
            self.rounds_by_tokens[tokens] += 1
            for depth in range(1, min(tokens - 1, DEPTHS) + 1):
                self.values["accepted_at_depth_total", (("depth", str(depth)),)] += 1

    def finished(self, s: GenerationStats) -> None:
        for name, value in (("drafted_rounds_total", round(s.rounds * (1 - s.no_draft_rounds))),
                            ("draft_tokens_total", round(s.rounds * s.mean_tree_nodes)),
                            ("draft_seconds_total", s.draft_s), ("verify_seconds_total", s.verify_s),
                            ("prefill_seconds_total", s.prefill_s), ("generation_seconds_total", s.seconds)):
            self.add(name, value)

    def render(self, queue_length: int, busy: bool) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        with self.lock:
            values = Counter(self.values)
            by_tokens = Counter(self.rounds_by_tokens)
        values["queue_length", ()] = queue_length
        values["engine_busy", ()] = int(busy)
        lines = []
        for name, (kind, text) in HELP.items():
            lines += [f"# HELP mambaspec_{name} {text}", f"# TYPE mambaspec_{name} {kind}"]
            if kind == "histogram":
                lines += _histogram(f"mambaspec_{name}", by_tokens)
                continue
            series = sorted((labels, v) for (n, labels), v in values.items() if n == name) or [((), 0)]
            lines += [f"mambaspec_{name}{_labels(labels)} {_number(v)}" for labels, v in series]
        return "\n".join(lines) + "\n"


def _histogram(name: str, counts: Counter) -> list[str]:
    lines = [f'{name}_bucket{{le="{edge}"}} {sum(n for t, n in counts.items() if t <= edge)}'
             for edge in ROUND_BUCKETS]
    total = sum(counts.values())
    return lines + [f'{name}_bucket{{le="+Inf"}} {total}', f"{name}_sum {sum(t * n for t, n in counts.items())}",
                    f"{name}_count {total}"]


def _labels(labels: tuple) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}"


def parse(text: str) -> dict[str, float]:
    """Series name (with labels) -> value, from ``render``'s text: for tests and scripts."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}
