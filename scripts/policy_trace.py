"""What the dynamic tree policy decided, round by round, in one `bench` run: a diagnostic for its cost estimates
(a fresh OUT: bench resumes the rows already there, and a resumed run traces nothing).

    python scripts/policy_trace.py [--drafter FOLDER] [--method M] --out runs/trace [--data recipes/eval/chat.jsonl]

Runs ``bench jsonl`` (``ar`` and a dynamic method: ``mamba-dynamic``, or the default
``mamba+lookup-dynamic``) with every ``DynamicTreePolicy.observe`` logged to OUT/rounds.jsonl:
the round's nodes and accepted tokens, whether it drafted, the backoff's plain rounds still to come, and the policy's
estimates then (a drafted round's base time ``base_s``, one drafter step ``step_s``, its read of the committed tokens
``read_s``, the realized gain in plain steps).
Prints the share of undrafted rounds, how many of them were the backoff's, and the step estimate over the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambaspec.bench.runner import BenchConfig, run_bench
from mambaspec.core import dynamic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drafter", default=None, help="Mamba drafter (default: the target's shipped one)")
    ap.add_argument("--data", default="recipes/eval/chat.jsonl")
    ap.add_argument("--method", default="mamba-dynamic", help="the dynamic method traced (e.g. mamba+lookup-dynamic)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default="runs/trace")
    args = ap.parse_args()

    rounds: list[dict] = []
    observe = dynamic.DynamicTreePolicy.observe

    def logged(self, outcome):
        plan, skipping = self._plan, self._skip
        observe(self, outcome)
        row = {"nodes": outcome.nodes, "accepted": outcome.accepted, "drafted": plan is not None,
               "backoff": skipping > 0, "skip_after": self._skip, "context": outcome.context,
               "seconds": outcome.seconds, "forward_s": outcome.forward_s, "draft_s": outcome.draft_s,
               "copied": sum(f is not None for f in outcome.tree.feature[1:]) if outcome.tree is not None else 0}
        if plan is not None:
            row.update(base_s=plan.base_time(), step_s=plan.costs.step, read_s=plan.costs.read,
                       gain=self._gains[-1] if self._gains else None)
        rounds.append(row)

    dynamic.DynamicTreePolicy.observe = logged
    run_bench(BenchConfig(dataset="jsonl", data=args.data, methods=["ar", args.method], drafter=args.drafter,
                          limit=args.limit, out=args.out))
    out = Path(args.out) / "rounds.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    plain = [r for r in rounds if not r["drafted"] or not r["nodes"]]
    steps = [r["step_s"] for r in rounds if r["drafted"]]
    print(f"{len(rounds)} rounds, {len(plain)} undrafted ({sum(r['backoff'] for r in plain)} of them the backoff's, "
          f"{sum(r['drafted'] for r in plain)} where no node paid); "
          f"drafter step estimate {1e3 * min(steps, default=0):.1f}-{1e3 * max(steps, default=0):.1f} ms; {out}")


if __name__ == "__main__":
    main()
