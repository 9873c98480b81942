"""``mambaspec bench``: drafters, peers and plain decoding side by side, on the same prompts.

Every method (``methods.METHODS``) runs in one process, on the same prompts, dtype and device,
after an untimed warm-up, prompt by prompt (every method on a prompt before the next prompt, so
that a drift of the machine's speed hits all methods alike). Greedy outputs are compared with
``ar``'s, prompt by prompt: the bench is also a lossless check. Results go to ``OUT/results.csv``,
one row per (dataset, length, method), the rows of a length written as soon as it is done, with
the configuration in every row; a rerun with the same ``out`` and configuration skips the rows
already there. Each prompt's new token ids and text go to ``OUT/outputs.jsonl``.
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ..config import DEFAULT_TARGET
from ..core.bandit import DEFAULT_C, DEFAULT_EDGES, check_options
from ..core.drafter import innermost
from ..core.engine import GenerationResult, SpeculativeGenerator
from ..core.sampling import SamplingConfig
from ..core.shape import TreeShape
from ..drafters.eagle import EagleDrafter
from ..drafters.mamba import MAMBA_TYPES
from ..errors import MambaspecError
from ..loading.models import default_bench_drafter, load_model, resolve_device, resolve_dtype, weights_id
from ..loading.options import ModelOptions
from ..loading.pipeline import check_drafter_for, load_drafter
from ..loading.trees import BENCH_TREE, policy_name
from .datasets import BenchPrompt, build_prompts, dataset_spec, load_rows
from .methods import METHODS, BenchModels, MethodRun
from .peers import hf_generate
from .report import check_matplotlib, count, plot_results
from .results import (CSV_NAME, OUTPUTS_NAME, PeakMemory, append_outputs, append_row, environment, read_outputs,
                      read_results, rows_of)

WARMUP_PROMPT_TOKENS = 256  # the warm-up reads the end of the first prompt, up to this many tokens
WARMUP_NEW_TOKENS = 16
Progress = Callable[[str, int, int], None]  # (what runs, prompts done, prompts in all)


@dataclass
class BenchConfig:
    """What ``mambaspec bench`` runs; ``None`` drafters mean the target's defaults (``recipes/models.yaml``)."""

    dataset: str
    data: str | None = None  # a local file replacing the dataset's source
    methods: list[str] | None = None  # None: every method whose drafter is available
    target: str = DEFAULT_TARGET
    drafter: str | None = None  # the Mamba drafter; "none" = no mamba method
    transformer_drafter: str | None = None  # for transformer and hf-assisted; "none" = neither
    eagle_drafter: str | None = None  # for eagle (a self-speculation head of the target); "none" = no eagle
    tree: str = BENCH_TREE
    arms: str | None = None  # mamba-auto's arms file (None: recipes/trees.yaml); a tuned file warm-starts it
    ucb_c: float = DEFAULT_C
    confidence_buckets: str = ",".join(map(str, DEFAULT_EDGES))  # mamba-auto's contexts (core.bandit)
    max_new_tokens: int = 128
    temperature: float = 0.0
    limit: int | None = None  # prompts per (dataset, length)
    lengths: list[int] | None = None  # exact prompt lengths in target tokens; None = as the dataset has them
    options: ModelOptions = field(default_factory=ModelOptions)  # the target's (ar runs the same model)
    out: str = "runs/bench"
    plot: bool = False
    prompt_lookup_tokens: int = 10
    lookup_global: bool = False  # our lookup drafters also index the outputs of the row's earlier prompts
    seed: int = 0

    def drafter_names(self) -> dict[str, str | None]:
        """The drafter each kind of method uses (None: none available)."""
        given = {"mamba": self.drafter, "transformer": self.transformer_drafter, "eagle": self.eagle_drafter}
        names = {k: v if v is not None else default_bench_drafter(self.target, k) for k, v in given.items()}
        return {k: None if v in (None, "", "none") else v for k, v in names.items()}


@dataclass
class BenchResult:
    frame: pd.DataFrame  # this configuration's rows for the requested datasets, lengths and methods (CSV order)
    csv_path: Path
    outputs_path: Path
    resumed: int = 0  # rows found already done
    plots: list[Path] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        return rows_of(self.frame)


def run_bench(cfg: BenchConfig, on_progress: Progress | None = None,
              log: Callable[[str], None] = lambda message: None) -> BenchResult:
    """Run every (length, method) of ``cfg`` not yet in ``cfg.out``'s CSV; return this configuration's rows.

    ``on_progress(label, done, total)`` follows the prompts of each row; ``log`` receives notes
    (what loads, methods skipped, rows resumed, prompts too short for a length).
    """
    methods = _check(cfg)
    rows = load_rows(dataset_spec(cfg.dataset), cfg.data)
    methods = _sampled_drafters(cfg, methods, log)
    log(f"loading target {cfg.target} ...")
    models, methods = _load_models(cfg, methods, log)
    context = models.plain.context_length
    for n in cfg.lengths or []:
        if n + cfg.max_new_tokens > context:
            raise MambaspecError(f"length {n} + {cfg.max_new_tokens} new tokens exceeds the target's context of "
                                 f"{context} tokens; use shorter lengths or fewer new tokens")
    config, measured_on = _config_columns(cfg, models), environment(models.target.device)
    config_id = _config_id(config, cfg, measured_on)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, outputs_path = out / CSV_NAME, out / OUTPUTS_NAME
    frame = read_results(csv_path)
    done = {_key((r["dataset"], r["length"], r["method"])) for r in rows_of(frame[frame["config_id"] == config_id])}
    env = {**measured_on, "config_id": config_id, **config}
    built: dict[str, MethodRun] = {}
    keys, resumed = [], 0
    for length in cfg.lengths or [None]:
        group = [(cfg.dataset, float(length) if length else None, m) for m in methods]
        keys += group
        todo = [m for k, m in zip(group, methods) if _key(k) not in done]
        resumed += len(group) - len(todo)
        if todo:
            prompts = _prompts(cfg, rows, models, length, context, log)
            _run_length(cfg, models, built, todo, prompts, length, env, out, on_progress, log)
    if resumed:
        log(f"{resumed} rows already in {csv_path} for this configuration: skipped")
    frame = read_results(csv_path)
    frame = frame[frame["config_id"] == config_id]
    wanted = {_key(k) for k in keys}
    frame = frame[[_key((r["dataset"], r["length"], r["method"])) in wanted for r in rows_of(frame)]]
    result = BenchResult(frame.reset_index(drop=True), csv_path, outputs_path, resumed)
    if cfg.plot:
        result.plots = plot_results(result.rows, out)
    return result


def tree_name(tree: str) -> str:
    """``--tree`` as the CSV records it: a shape in brackets, ``dynamic`` or ``auto`` (an error for anything else)."""
    return policy_name(tree) or str(TreeShape.parse(tree))


def _key(k: tuple) -> tuple:
    dataset, length, method = k
    return dataset, (None if length is None or length != length else float(length)), method


def _check(cfg: BenchConfig) -> list[str]:
    """Fail on bad settings before anything loads; the methods to run, ar first (the reference)."""
    spec = dataset_spec(cfg.dataset)
    unknown = [m for m in cfg.methods or [] if m not in METHODS]
    if unknown:
        raise MambaspecError(f"unknown method '{unknown[0]}'; use {', '.join(METHODS)}")
    if cfg.methods == []:
        raise MambaspecError(f"no method named; use {', '.join(METHODS)}")
    if cfg.max_new_tokens < 1:
        raise MambaspecError(f"max_new_tokens must be at least 1, got {cfg.max_new_tokens}")
    if cfg.limit is not None and cfg.limit < 1:
        raise MambaspecError(f"limit must be at least 1, got {cfg.limit}")
    methods = [m for m in METHODS if cfg.methods is None or m in cfg.methods or m == "ar"]  # ar: the reference
    if "mamba-auto" in methods:
        check_options(cfg.ucb_c, "replayed", cfg.confidence_buckets)
    if cfg.lengths and spec.context is None:
        raise MambaspecError(f"dataset '{cfg.dataset}' has no long context to cut, so it takes no lengths")
    tree_name(cfg.tree)
    if cfg.plot:
        check_matplotlib()
    return methods


def _sampled_drafters(cfg: BenchConfig, methods: list[str], log: Callable[[str], None]) -> list[str]:
    """When sampling, a drafter that drafts through text (another tokenizer than the target's) is greedy only: seen
    from the tokenizers before anything loads, refused when the methods were named, else its methods are skipped."""
    if cfg.temperature == 0:
        return methods
    names, sampling = cfg.drafter_names(), SamplingConfig(temperature=cfg.temperature)
    for kind in ("mamba", "transformer", "eagle"):
        users = [m for m in methods if METHODS[m].needs == kind and m != "hf-assisted"]  # transformers' own: its rules
        if not users or names[kind] is None:
            continue
        try:
            check_drafter_for(cfg.target, names[kind], "auto", sampling)
        except MambaspecError as e:
            if cfg.methods is not None:
                raise
            log(f"skipping {', '.join(users)}: {e}")
            methods = [m for m in methods if m not in users]
    return methods


def _load_models(cfg: BenchConfig, methods: list[str], log: Callable[[str], None]) -> tuple[BenchModels, list[str]]:
    """Load the target and the drafters the methods need; without an explicit method list, a method whose
    drafter is unavailable is dropped (and said so)."""
    target = load_model(cfg.target, cfg.options, role="target")  # optimized once, for every method
    plain = SpeculativeGenerator(target.model, None, tokenizer=target.tokenizer, target_options=target.optimized)
    models = BenchModels(target, plain, lookup_global=cfg.lookup_global)
    names = cfg.drafter_names()
    for kind, what in (("mamba", "a Mamba"), ("transformer", "a Transformer"), ("eagle", "an EAGLE")):
        users = [m for m in methods if METHODS[m].needs == kind]
        if not users:
            continue
        try:
            if names[kind] is None:
                raise MambaspecError(f"method {', '.join(users)} needs {what} drafter; name one")
            log(f"loading {kind} drafter {names[kind]} ...")
            drafter = load_drafter(names[kind], target)
            found = _kind_of(innermost(drafter))
            if found != kind:
                raise MambaspecError(f"drafter {names[kind]} is not {what} model (it is {found}); name {what} drafter")
        except MambaspecError as e:
            if cfg.methods is not None:
                raise
            log(f"skipping {', '.join(users)}: {e}")
            methods = [m for m in methods if m not in users]
            continue
        models.drafters[kind] = drafter
    return models, methods


def _kind_of(drafter) -> str:
    if isinstance(drafter, EagleDrafter):
        return "eagle"
    return "mamba" if drafter.model.config.model_type in MAMBA_TYPES else "transformer"


def _config_id(config: dict, cfg: BenchConfig, measured_on: dict) -> str:
    """What makes rows comparable, and a rerun's rows skippable: the settings, the thread count and versions, the
    content of a --data file (the same path with other prompts is another workload) and the models' weights (a
    drafter retrained under the same name or folder is another drafter: ``weights_id``). Not the git commit: an
    interrupted run resumes after a commit; measure changed code into another --out."""
    basis = {**config, **{k: measured_on[k] for k in ("threads", "torch", "transformers", "mambaspec")}}
    basis["weights"] = {k: weights_id(config[k]) for k in ("target", "drafter", "transformer_drafter", "eagle_drafter")
                        if config.get(k)}
    if cfg.data and Path(cfg.data).is_file():
        basis["data_sha1"] = hashlib.sha1(Path(cfg.data).read_bytes()).hexdigest()
    return hashlib.sha1(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:10]


def _config_columns(cfg: BenchConfig, models: BenchModels) -> dict:
    names = cfg.drafter_names()
    device = models.target.device
    opts = cfg.options
    return {"target": cfg.target, "drafter": names["mamba"] if "mamba" in models.drafters else "",
            "transformer_drafter": names["transformer"] if "transformer" in models.drafters else "",
            "eagle_drafter": names["eagle"] if "eagle" in models.drafters else "",
            "tree": tree_name(cfg.tree), "arms": cfg.arms or "", "ucb_c": cfg.ucb_c,
            "confidence_buckets": cfg.confidence_buckets, "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature, "limit": cfg.limit or "", "data": cfg.data or "",
            "device": str(device), "dtype": str(resolve_dtype(opts.dtype, resolve_device(opts.device))).replace(
                "torch.", ""), "linear": opts.linear, "quantize": opts.quantize, "compile": opts.compile,
            "target_options": models.target.optimized, "seed": cfg.seed,
            "prompt_lookup_tokens": cfg.prompt_lookup_tokens, "lookup_global": cfg.lookup_global}


def _prompts(cfg: BenchConfig, rows, models: BenchModels, length: int | None, context: int,
             log: Callable[[str], None]) -> list[BenchPrompt]:
    prompts, short = build_prompts(dataset_spec(cfg.dataset), rows, models.target.tokenizer, length=length,
                                   max_tokens=context - cfg.max_new_tokens, limit=cfg.limit)
    if short:
        log(f"length {length}: {count(short, 'prompt')} passed over (context shorter than {length} tokens)")
    return prompts


def _run_length(cfg: BenchConfig, models: BenchModels, built: dict[str, MethodRun], todo: list[str],
                prompts: list[BenchPrompt], length: int | None, env: dict, out: Path, on_progress: Progress | None,
                log: Callable[[str], None]) -> None:
    """Run the methods ``todo`` on the prompts of one length, prompt by prompt: every method on a prompt before the
    next prompt, so that a drift of the machine's speed hits all methods alike. Then append each method's outputs
    and CSV row (ar's first: the others are compared with it)."""
    for method in todo:
        if method not in built:
            log(f"{method}: warming up")
            built[method] = METHODS[method].build(models, cfg)
            warm = prompts[0].ids[-WARMUP_PROMPT_TOKENS:]
            (built[method].warm_up or built[method].run)(warm, min(WARMUP_NEW_TOKENS, cfg.max_new_tokens), cfg.seed)
    label = {m: f"{cfg.dataset}{f' · {length} tokens' if length else ''} · {m}" for m in todo}
    device = models.target.device
    results: dict[str, list[GenerationResult]] = {m: [] for m in todo}
    peak = dict.fromkeys(todo, 0)
    for i, prompt in enumerate(prompts):
        for method in todo:
            if on_progress:
                on_progress(label[method], i, len(prompts))
            with PeakMemory(device) as mem:
                results[method].append(built[method].run(prompt.ids, cfg.max_new_tokens, cfg.seed + i))
            peak[method] = max(peak[method], mem.peak_bytes)
    for method in todo:
        if on_progress:
            on_progress(label[method], len(prompts), len(prompts))
        _write_row(cfg, models, built, method, prompts, results[method], peak[method], length, env, out)
    gc.collect()


def _write_row(cfg: BenchConfig, models: BenchModels, built: dict[str, MethodRun], method: str,
               prompts: list[BenchPrompt], results: list[GenerationResult], peak: int, length: int | None, env: dict,
               out: Path) -> None:
    """One method's row of one length, compared with ar's outputs and speed; its outputs before it."""
    device = models.target.device
    where = {"config_id": env["config_id"], "dataset": cfg.dataset, "length": str(length or "")}
    row = {**env, **where, "length": length or "", "method": method, "tree": built[method].tree,
           **summarize(results, peak),
           "mem_measure": PeakMemory(device).kind, "method_detail": built[method].detail,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    csv_path, outputs_path = out / CSV_NAME, out / OUTPUTS_NAME
    if cfg.temperature == 0:
        compare_with_ar(row, prompts, results, read_outputs(outputs_path, {**where, "method": "ar"}))
        if method == "ar":
            row.update(reference_check(models, prompts[0], results[0], cfg.max_new_tokens))
    ar = rows_of(read_results(csv_path))
    ar = next((r for r in ar if r["config_id"] == env["config_id"] and r["method"] == "ar"
               and _key((r["dataset"], r["length"], "ar")) == _key((cfg.dataset, length or None, "ar"))), None)
    speedups(row, ar)
    tokenizer = models.target.tokenizer
    append_outputs(outputs_path, where, method, [  # before the CSV row: a row in the CSV has its outputs
        {"prompt_id": p.id, "new_token_ids": r.new_token_ids,
         "text": tokenizer.decode(r.new_token_ids, skip_special_tokens=True)} for p, r in zip(prompts, results)])
    append_row(csv_path, row)


def summarize(results: list[GenerationResult], peak_bytes: int) -> dict:
    """One row's metrics from its prompts: throughputs as total tokens over total time."""
    s = [r.stats for r in results]
    n = len(s)
    rounds = sum(x.rounds for x in s)
    decode_s = sum(x.seconds - x.prefill_s for x in s)
    decode_tokens = sum(x.decode_tokens_per_s * (x.seconds - x.prefill_s) for x in s)
    per_round = lambda key: round(sum(getattr(x, key) * x.rounds for x in s) / max(rounds, 1), 4)  # noqa: E731
    return {
        "prompts": n,
        "prompt_tokens": round(sum(len(r.prompt_ids) for r in results) / n, 1),
        "new_tokens": sum(x.new_tokens for x in s),
        "decode_tokens_per_s": round(decode_tokens / decode_s, 3) if decode_s > 0 else 0.0,
        "tokens_per_s": round(sum(x.new_tokens for x in s) / sum(x.seconds for x in s), 3),
        "mean_accept_len": per_round("mean_accept_len"),
        "rounds": rounds,
        "mean_tree_nodes": per_round("mean_tree_nodes"),
        "no_draft_rounds": per_round("no_draft_rounds"),
        "draft_ms_per_round": round(1000 * sum(x.draft_s for x in s) / max(rounds, 1), 3),
        "verify_ms_per_round": round(1000 * sum(x.verify_s for x in s) / max(rounds, 1), 3),
        "prefill_s": round(sum(x.prefill_s for x in s) / n, 4),
        "seconds": round(sum(x.seconds for x in s), 3),
        "peak_mem_mb": round(peak_bytes / 2**20, 1),
        "drafter_state_bytes": round(sum(x.drafter_state_bytes for x in s) / n),
        "target_kv_bytes": round(sum(x.target_kv_bytes for x in s) / n),
        **predictions(s),
    }


def predictions(stats: list) -> dict:
    """A dynamic policy's predicted against measured tokens per drafted round, over all prompts (empty for others):
    ``prediction_error`` = |predicted - measured| / measured of the means."""
    reports = [(x.policy_report.get("drafted_rounds", 0), x.policy_report) for x in stats]
    drafted = sum(k for k, _ in reports)
    if not drafted:
        return {}
    predicted = sum(k * r["predicted_accept_len"] for k, r in reports if k) / drafted
    measured = sum(k * r["measured_accept_len"] for k, r in reports if k) / drafted
    return {"drafted_accept_len": round(measured, 4), "predicted_accept_len": round(predicted, 4),
            "prediction_error": round(abs(predicted - measured) / measured, 4)}


def compare_with_ar(row: dict, prompts: list[BenchPrompt], results: list[GenerationResult],
                    reference: dict[str, list[int]]) -> None:
    """Greedy lossless check: the method's new tokens against ar's, prompt by prompt."""
    if row["method"] == "ar" or not reference:
        return
    mismatched = sum(reference.get(p.id) != r.new_token_ids for p, r in zip(prompts, results))
    row["greedy_match"] = "no" if mismatched else "yes"
    row["mismatched_prompts"] = mismatched


def reference_check(models: BenchModels, prompt: BenchPrompt, ar: GenerationResult, max_new_tokens: int) -> dict:
    """``ar`` itself against an outside reference: transformers' own greedy ``generate`` (its loop, its cache) on
    the same model and prompt. Every method is compared with ``ar``, so an error of the whole engine would
    otherwise pass unseen. ``reference_margin``: at the first token where they differ, the gap between the two
    tokens' logits in the model's plain forward (a near-tie, under half precision, is rounding; a large gap is
    an error)."""
    model = models.target.model
    ref = hf_generate(model, prompt.ids, max_new_tokens, SamplingConfig(), sorted(models.plain.eos_token_ids))
    ours, theirs = ar.new_token_ids, ref.new_token_ids
    if ours == theirs:
        return {"reference_match": "yes", "reference_margin": ""}
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    margin = ""
    if at < min(len(ours), len(theirs)):
        with torch.inference_mode():
            ids = torch.tensor([prompt.ids + ours[:at]], device=model.device)
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
        margin = round(abs(float(logits[ours[at]] - logits[theirs[at]])), 4)
    return {"reference_match": f"no (token {at})", "reference_margin": margin}


def speedups(row: dict, ar_row: dict | None) -> None:
    if row["method"] == "ar":
        row["speedup_decode"] = row["speedup_e2e"] = 1.0
    elif ar_row is not None and ar_row["decode_tokens_per_s"] and ar_row["tokens_per_s"]:
        row["speedup_decode"] = round(row["decode_tokens_per_s"] / ar_row["decode_tokens_per_s"], 3)
        row["speedup_e2e"] = round(row["tokens_per_s"] / ar_row["tokens_per_s"], 3)
