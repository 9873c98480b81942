"""``mambaspec tune``: learn which tree shape pays on this workload and this hardware.

``ucb`` runs one bandit across all prompts (its state carries over, so it learns the workload);
``fixed`` runs every arm on every prompt with a fixed tree (a sweep, the reference the bandit
is judged against). Both report per-arm pulls, mean reward, acceptance length and tokens/s, and
write a tuned arms file (arms with their statistics) that ``generate --arms`` and ``bench``
accept as a warm start. ``dynamic`` runs dynamic trees (``core.dynamic``) across the prompts, as
``generate`` does, and reports what they drafted and how well their predictions held
(``dynamic.csv``); the verification costs it measured go to this machine's cost store
(``loading.costs``), which ``generate`` starts from.
"""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..config import DEFAULT_TARGET
from ..core.bandit import DEFAULT_C, DEFAULT_EDGES, Arm, UCBPolicy
from ..core.bandit import check_options as check_policy_options
from ..core.sampling import SamplingConfig
from ..errors import MambaspecError
from ..loading.options import ModelOptions
from ..loading.trees import load_arms, save_arms

if TYPE_CHECKING:  # light to import: the command line checks tune's options before torch loads
    from ..core.engine import SpeculativeGenerator

POLICIES = ("ucb", "fixed", "dynamic")
SHAPE_POLICIES = ("ucb", "fixed")
WARMUP_TOKENS = 16
FIRM_PULLS = 30  # rounds of an arm below which its numbers are called noise


@dataclass
class TuneResult:
    """What ``tune`` found, whatever the policy: per-arm statistics (``ucb``, ``fixed``; no arms under ``dynamic``)
    and the run's summary (``dynamic``: what the trees drafted, predicted against measured)."""

    arms: list[Arm]
    best: Arm | None  # None without arms
    policy: str
    tokens: int
    seconds: float  # generation wall time over all prompts, prefill included
    values: list[float]  # per arm, what the bandit ranks it by (UCBPolicy.value), e.g. replayed tokens/s
    prompts: int = 0  # prompts tuned on
    summary: dict = field(default_factory=dict)  # dynamic: tune_dynamic's summary row (else empty)
    saved: str = ""  # one line: where the outputs went and how to use them (set by tune_dataset)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def rows(self) -> list[dict]:
        """Per arm: its statistics and its value."""
        return [{**a.as_dict(), "value": round(v, 6)} for a, v in zip(self.arms, self.values)]


def tune(
    generator: SpeculativeGenerator,
    prompts: list[list[int]],
    arms: list[Arm],
    policy: str = "ucb",
    c: float = DEFAULT_C,
    reward: str = "replayed",
    edges: str | tuple[float, ...] = DEFAULT_EDGES,
    max_new_tokens: int = 128,
    rounds: int | None = None,
    sampling: SamplingConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    checkpoint: Callable[[TuneResult], None] | None = None,
) -> TuneResult:
    """Run ``policy`` over ``prompts``; ``rounds`` stops the bandit after that many rounds in all.

    ``checkpoint`` receives the statistics so far after every prompt (so an interrupted run keeps them).
    """
    if policy not in SHAPE_POLICIES:
        raise MambaspecError(f"unknown policy '{policy}'; use one of {', '.join(SHAPE_POLICIES)}")
    if not prompts:
        raise MambaspecError("no prompts to tune on")
    arms = copy.deepcopy(arms)
    for shape in dict.fromkeys(a.shape for a in arms):  # untimed: the first forwards of a new size are slow
        generator.generate(prompts[0], max_new_tokens=WARMUP_TOKENS, tree=shape, sampling=sampling)
    tokens, seconds = 0, 0.0
    scorer = UCBPolicy(arms, c=c, reward=reward, edges=edges)  # UCBPolicy.value for any of these arms

    def result(done: list[Arm]) -> TuneResult:
        return TuneResult(arms, best_arm(done, policy, scorer.value), policy, tokens, seconds,
                          [scorer.value(a) for a in arms], len(prompts))

    if policy == "ucb":
        for i, prompt in enumerate(prompts):
            res = generator.generate(prompt, max_new_tokens=max_new_tokens, tree=scorer, sampling=sampling)
            tokens, seconds = tokens + res.stats.new_tokens, seconds + res.stats.seconds
            if progress:
                progress(i + 1, len(prompts))
            if checkpoint:
                checkpoint(result(arms))
            if rounds is not None and scorer.t >= rounds:
                break
        return result(arms)
    for k, arm in enumerate(arms):
        solo = UCBPolicy([arm], c=c, reward=reward, edges=edges)  # one arm: a fixed tree that keeps the same statistics
        for i, prompt in enumerate(prompts):
            res = generator.generate(prompt, max_new_tokens=max_new_tokens, tree=solo, sampling=sampling)
            tokens, seconds = tokens + res.stats.new_tokens, seconds + res.stats.seconds
            if progress:
                progress(k * len(prompts) + i + 1, len(arms) * len(prompts))
        if checkpoint:
            checkpoint(result(arms[:k + 1]))
    return result(arms)


def best_arm(arms: list[Arm], policy: str, value: Callable[[Arm], float]) -> Arm:
    """The arm to name best. ``fixed``: every arm ran every prompt, so the highest tokens/s over its own rounds (what
    was measured, like for like). ``ucb``: the highest ``value`` (what the bandit ranks by), among the arms that ran
    at least ``FIRM_PULLS`` rounds when any did (a few rounds' estimate is noise)."""
    pulled = [a for a in arms if a.pulls] or arms
    if policy == "fixed":
        return max(pulled, key=lambda a: a.tokens_per_s)
    firm = [a for a in pulled if a.pulls >= FIRM_PULLS] or pulled
    return max(firm, key=value)


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise MambaspecError(f"unknown policy '{policy}'; use one of {', '.join(POLICIES)}")


def check_options(policy: str, c: float, reward: str, edges: str | tuple[float, ...]) -> None:
    """Fail on a bad policy, c, reward or confidence buckets before anything is loaded."""
    check_policy(policy)
    check_policy_options(c, reward, edges)


def write_tune_outputs(result: TuneResult, out: str | Path, comment: str = "") -> tuple[Path, Path]:
    """``arms.csv`` (per-arm statistics) and ``tuned_arms.yaml`` (a warm start for the bandit)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, yaml_path = out / "arms.csv", out / "tuned_arms.yaml"
    rows = result.rows()
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0].keys(), "best", "policy"])
        w.writeheader()
        for a, row in zip(result.arms, rows):
            w.writerow({**row, "best": a is result.best, "policy": result.policy})
    save_arms(result.arms, yaml_path, comment=comment)
    return csv_path, yaml_path


def tune_dynamic(pipe, prompts: list[list[int]], max_new_tokens: int = 128, sampling: SamplingConfig | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Dynamic trees over ``prompts`` through ``pipe`` (one policy across them; its measured costs are kept for
    ``generate``): the bench's summary of the run (tokens/s, τ, nodes per round, no-draft rounds, predicted
    against measured tokens per drafted round)."""
    from .runner import summarize

    if not prompts:
        raise MambaspecError("no prompts to tune on")
    # untimed warm-up (first forwards of a new size are slow), with a fixed tree: no costs are learnt from it
    pipe.generator.generate(prompts[0], max_new_tokens=WARMUP_TOKENS, tree="2,1,1", sampling=sampling)
    results = []
    for i, ids in enumerate(prompts):
        results.append(pipe.generate(ids, max_new_tokens=max_new_tokens, tree="dynamic", sampling=sampling))
        if progress:
            progress(i + 1, len(prompts))
    row = {k: v for k, v in summarize(results, 0).items() if k not in ("peak_mem_mb", "prefill_s")}
    return {"drafter": pipe.drafter.name, **row}


def tune_dataset(
    arms_file: str | Path | None = None,
    dataset: str = "humaneval",
    data: str | None = None,
    limit: int | None = 20,
    target: str = DEFAULT_TARGET,
    drafter: str | None = None,
    policy: str = "ucb",
    rounds: int | None = None,
    c: float = DEFAULT_C,
    reward: str = "replayed",
    edges: str | tuple[float, ...] = DEFAULT_EDGES,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    options: ModelOptions | None = None,
    out: str | Path = "runs/tune",
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[TuneResult, Path, Path | None]:
    """``mambaspec tune``: load the models and the prompts (the sources of ``bench``), tune, write
    ``arms.csv`` and ``tuned_arms.yaml`` into ``out`` (after every prompt too); returns both paths. With
    ``policy="dynamic"``: the ``tune_dynamic`` summary and ``dynamic.csv`` (no arms file)."""
    check_options(policy, c, reward, edges)
    for name, value in (("limit", limit), ("rounds", rounds), ("max_new_tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise MambaspecError(f"{name} must be at least 1, got {value}")
    arms = load_arms(arms_file) if policy != "dynamic" else []
    if drafter is None:  # dynamic trees as generate runs them (its drafter); shapes: the target's model drafter
        from ..loading.models import default_bench_drafter, default_drafter

        drafter = default_drafter(target) if policy == "dynamic" else default_bench_drafter(target, "mamba")
    sampling = SamplingConfig(temperature=temperature)
    from ..loading.pipeline import check_drafter_for

    check_drafter_for(target, drafter, "auto", sampling)  # a greedy-only drafter is refused before anything loads
    pipe, prompts = _load(dataset, data, limit, target, drafter, max_new_tokens, options, log)
    if policy == "dynamic":
        log("dynamic trees over the prompts (after an untimed warm-up)")
        row = tune_dynamic(pipe, prompts, max_new_tokens, sampling, progress)
        return _dynamic_result(row, Path(out) / "dynamic.csv", dataset, target), Path(out) / "dynamic.csv", None
    comment = (f"tuned by `mambaspec tune --policy {policy}` on {dataset} ({len(prompts)} prompts, "
               f"{max_new_tokens} new tokens), target {target}, drafter {pipe.drafter.name}, c={c}, {reward} reward"
               + (f", confidence buckets {edges}" if reward == "replayed" else ""))

    def save(partial: TuneResult) -> None:
        write_tune_outputs(partial, out, comment=comment)

    log(f"warming up the {len(arms)} arms' shapes (untimed)")
    result = tune(pipe.generator, prompts, arms, policy=policy, c=c, reward=reward, edges=edges,
                  max_new_tokens=max_new_tokens, rounds=rounds, sampling=sampling, progress=progress, checkpoint=save)
    csv_path, yaml_path = write_tune_outputs(result, out, comment=comment)
    result.saved = (f"per-arm CSV: {csv_path}; tuned arms: {yaml_path} (use with generate --tree auto --arms, "
                    f"or bench --arms)")
    return result, csv_path, yaml_path


def _dynamic_result(row: dict, path: Path, dataset: str, target: str) -> TuneResult:
    """``dynamic.csv`` (the summary row) written, and the result that holds the row."""
    from ..loading.costs import costs_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*row, "dataset", "target"])
        w.writeheader()
        w.writerow({**row, "dataset": dataset, "target": target})
    seconds = row["new_tokens"] / row["tokens_per_s"] if row["tokens_per_s"] else 0.0
    return TuneResult([], None, "dynamic", int(row["new_tokens"]), seconds, [], int(row["prompts"]), summary=row,
                      saved=f"CSV: {path}; the measured verification costs are kept for generate on this machine "
                            f"({costs_dir()})")


def _load(dataset, data, limit, target, drafter, max_new_tokens, options, log) -> tuple:
    """The pipeline (target and drafter) and the prompts' token ids."""
    from ..loading.pipeline import load_pipeline
    from .datasets import build_prompts, dataset_spec, load_rows

    spec = dataset_spec(dataset)
    rows = load_rows(spec, data)
    log(f"loading target {target} and its drafter ...")
    pipe = load_pipeline(target, drafter, options)
    if pipe.drafter.name == "none":
        raise MambaspecError("tune needs a drafter: name one (the target has no default drafter)")
    context = pipe.generator.context_length
    prompts, _ = build_prompts(spec, rows, pipe.target.tokenizer, max_tokens=context - max_new_tokens, limit=limit)
    return pipe, [p.ids for p in prompts]
