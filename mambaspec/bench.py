"""``mambaspec bench``: drafters, peers and plain decoding side by side, on the same prompts.

Every method runs in one process, on the same prompts, dtype and device, after an untimed
warm-up. A method is one entry of ``METHODS`` (name -> how to build its runner):

- ``ar``: plain target decoding through our loop (``SpeculativeGenerator`` with no drafter);
- ``mamba`` / ``transformer``: our loop with the Mamba / the Transformer drafter and ``--tree``;
- ``hf-assisted``: transformers' ``generate(assistant_model=...)`` with the Transformer drafter
  (Leviathan et al. 2023 chain drafting as transformers implements it, its default settings);
- ``prompt-lookup``: transformers' ``generate(prompt_lookup_num_tokens=...)`` (n-gram drafts
  copied from the prompt, Saxena 2023).

A later method (e.g. ``mamba-auto``, the tree chosen per round by a bandit) is one more entry:
``Method("mamba-auto", "mamba", _engine_method("mamba", tree=lambda cfg: <a TreePolicy>))``.

Greedy outputs are compared with ``ar``'s, prompt by prompt: the bench is also a lossless check.
Results go to ``OUT/results.csv``, one row per (dataset, length, method) written as soon as it
is done, with the configuration in every row; a rerun with the same ``--out`` and configuration
skips the rows already there. Each prompt's new token ids go to ``OUT/outputs.jsonl``.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import platform
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .bandit import DEFAULT_C, DEFAULT_EDGES, UCBPolicy, check_options, load_arms
from .drafters import MAMBA_TYPES, Drafter
from .engine import GenerationResult, SpeculativeGenerator
from .errors import MambaspecError
from .models import PACKAGE_DIR, LoadedModel, load_model, recipes_dir, registry, resolve_device, resolve_dtype
from .optimize import optimize_model
from .peers import full_vocab_assistant, hf_generate
from .pipeline import DEFAULT_TARGET, load_drafter
from .prompts import BenchPrompt, build_prompts, dataset_spec, load_rows
from .report import check_matplotlib, plot_results
from .sampling import SamplingConfig
from .tree import DEFAULT_TREE, TreeShape

CSV_NAME = "results.csv"
OUTPUTS_NAME = "outputs.jsonl"
WARMUP_PROMPT_TOKENS = 256  # the warm-up reads the end of the first prompt, up to this many tokens
WARMUP_NEW_TOKENS = 16

Runner = Callable[[list[int], int, int | None], GenerationResult]  # (prompt ids, max new tokens, seed)


@dataclass
class BenchConfig:
    """What ``mambaspec bench`` runs; ``None`` drafters mean the target's defaults (``recipes/models.yaml``)."""

    dataset: str
    data: str | None = None  # a local file replacing the dataset's source
    methods: list[str] | None = None  # None: every method whose drafter is available
    target: str = DEFAULT_TARGET
    drafter: str | None = None  # the Mamba drafter; "none" = no mamba method
    transformer_drafter: str | None = None  # for transformer and hf-assisted; "none" = neither
    tree: str = DEFAULT_TREE
    arms: str | None = None  # mamba-auto's arms file (None: recipes/trees.yaml); a tuned file warm-starts it
    ucb_c: float = DEFAULT_C
    confidence_buckets: str = ",".join(map(str, DEFAULT_EDGES))  # mamba-auto's contexts (bandit.UCBPolicy)
    max_new_tokens: int = 128
    temperature: float = 0.0
    limit: int | None = None  # prompts per (dataset, length)
    lengths: list[int] | None = None  # exact prompt lengths in target tokens; None = as the dataset has them
    device: str = "auto"
    dtype: str = "auto"
    linear: str = "auto"  # the target's and drafters' linear layers (optimize.optimize_model); ar uses the same
    quantize: str = "none"
    compile: bool = False
    out: str = "runs/bench"
    plot: bool = False
    prompt_lookup_tokens: int = 10
    seed: int = 0

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature)


@dataclass
class BenchModels:
    """The loaded target and drafters shared by every method."""

    target: LoadedModel
    plain: SpeculativeGenerator  # the ar generator; also the source of EOS ids and the context length
    mamba: Drafter | None = None
    transformer: Drafter | None = None


@dataclass
class MethodRun:
    run: Runner
    detail: str  # what the method ran with, for the CSV (tree, HF settings)
    warm_up: Runner | None = None  # the untimed warm-up, when it must differ from ``run``


@dataclass(frozen=True)
class Method:
    name: str
    drafter: str | None  # which drafter it needs: "mamba", "transformer" or None
    build: Callable[[BenchModels, BenchConfig], MethodRun]


@dataclass
class BenchResult:
    rows: list[dict]  # this configuration's rows for the requested datasets, lengths and methods (CSV order)
    csv_path: Path
    outputs_path: Path
    resumed: int = 0  # rows found already done
    plots: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------ methods

def _engine_method(drafter: str | None,
                   tree: Callable[[BenchConfig], object] = lambda cfg: TreeShape.parse(cfg.tree)):
    """Our decoding loop with ``BenchModels.<drafter>`` (None: plain decoding) and the tree ``tree(cfg)``."""

    def build(models: BenchModels, cfg: BenchConfig) -> MethodRun:
        gen = models.plain if drafter is None else SpeculativeGenerator(
            models.target.model, getattr(models, drafter), tokenizer=models.target.tokenizer)
        shape = tree(cfg)
        sampling = cfg.sampling

        def run(ids: list[int], max_new: int, seed: int | None) -> GenerationResult:
            return gen.generate(ids, max_new_tokens=max_new, tree=shape, sampling=sampling, seed=seed)

        def warm_up(ids: list[int], max_new: int, seed: int | None) -> None:
            # a policy warms every arm's shape without learning from it (first forwards of a new size are slow)
            for arm_shape in dict.fromkeys(a.shape for a in shape.arms):
                gen.generate(ids, max_new_tokens=max_new, tree=arm_shape, sampling=sampling, seed=seed)

        detail = f"our loop, tree {shape}" if isinstance(shape, TreeShape) else f"our loop, {shape}"
        return MethodRun(run, "our loop, no drafter" if drafter is None else detail,
                         warm_up=None if isinstance(shape, TreeShape) else warm_up)

    return build


def _auto_tree(cfg: BenchConfig) -> UCBPolicy:
    """mamba-auto's tree: one UCB bandit over the arms file, learning across the prompts of a row."""
    return UCBPolicy(load_arms(cfg.arms or recipes_dir() / "trees.yaml"), c=cfg.ucb_c, edges=cfg.confidence_buckets)


def _build_hf_assisted(models: BenchModels, cfg: BenchConfig) -> MethodRun:
    target = models.target.model
    drafter = models.transformer
    inner = getattr(drafter, "inner", drafter)  # a crosstok.CrossTokenizerDrafter drafts with `inner`, in its tokens
    if inner is drafter:
        assistant = full_vocab_assistant(drafter, target.config.get_text_config().vocab_size)
        tokenizers = {}
    else:  # transformers' universal assisted generation translates the drafts through text
        own = inner.draft_vocab.target_vocab_size if inner.draft_vocab else inner.model.config.vocab_size
        assistant = full_vocab_assistant(inner, own)
        tokenizers = {"tokenizer": models.target.tokenizer, "assistant_tokenizer": inner.tokenizer}
    eos = sorted(models.plain.eos_token_ids)
    settings = {k: getattr(assistant.generation_config, k, None) for k in
                ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}

    def run(ids: list[int], max_new: int, seed: int | None) -> GenerationResult:
        return hf_generate(target, ids, max_new, cfg.sampling, eos, seed, assistant=assistant,
                           drafter_name=drafter.name, **tokenizers)

    return MethodRun(run, "transformers assisted generation, " + (
        ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
        or "its default draft length and confidence threshold"))


def _build_prompt_lookup(models: BenchModels, cfg: BenchConfig) -> MethodRun:
    eos = sorted(models.plain.eos_token_ids)

    def run(ids: list[int], max_new: int, seed: int | None) -> GenerationResult:
        return hf_generate(models.target.model, ids, max_new, cfg.sampling, eos, seed,
                           prompt_lookup_tokens=cfg.prompt_lookup_tokens)

    return MethodRun(run, f"prompt_lookup_num_tokens={cfg.prompt_lookup_tokens}, max_matching_ngram_size=2")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ar", None, _engine_method(None)),
    Method("mamba", "mamba", _engine_method("mamba")),
    Method("mamba-auto", "mamba", _engine_method("mamba", tree=_auto_tree)),
    Method("transformer", "transformer", _engine_method("transformer")),
    Method("hf-assisted", "transformer", _build_hf_assisted),
    Method("prompt-lookup", None, _build_prompt_lookup),
)}


# ------------------------------------------------------------------------------------- memory

class PeakMemory:
    """Peak memory over a block: CUDA ``max_memory_allocated``, or on CPU the process's resident set
    sampled every ``interval`` seconds by a background thread (psutil)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device = device
        self.interval = interval
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_sampled"
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        proc = psutil.Process()
        self.peak_bytes = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)

        self._stop.clear()
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        import psutil

        self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)


# ------------------------------------------------------------------------------------ the CSV

CONFIG_COLUMNS = ["target", "drafter", "transformer_drafter", "tree", "arms", "ucb_c", "confidence_buckets", "max_new_tokens", "temperature", "limit",
                  "data", "device", "dtype", "linear", "quantize", "compile", "target_options", "seed", "prompt_lookup_tokens"]
COLUMNS = [
    "config_id", "dataset", "length", "method",
    "prompts", "prompt_tokens", "new_tokens", "decode_tokens_per_s", "tokens_per_s", "speedup_decode",
    "speedup_e2e", "mean_accept_len", "rounds", "mean_tree_nodes", "draft_ms_per_round", "verify_ms_per_round",
    "prefill_s", "seconds", "peak_mem_mb", "mem_measure", "drafter_state_bytes", "target_kv_bytes",
    "greedy_match", "mismatched_prompts", "method_detail",
    *CONFIG_COLUMNS, "device_name", "threads", "torch", "transformers", "mambaspec", "git_commit", "date",
]
NUMERIC = {"length", "prompts", "prompt_tokens", "new_tokens", "decode_tokens_per_s", "tokens_per_s",
           "speedup_decode", "speedup_e2e", "mean_accept_len", "rounds", "mean_tree_nodes", "draft_ms_per_round",
           "verify_ms_per_round", "prefill_s", "seconds", "peak_mem_mb", "drafter_state_bytes", "target_kv_bytes",
           "mismatched_prompts"}


def read_csv(path: Path) -> list[dict]:
    """Rows of a results CSV, numbers as floats (empty cells as None)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames and reader.fieldnames != COLUMNS:
            raise MambaspecError(f"{path} was written with other columns (another mambaspec version); "
                                 f"pass another --out")
        return [{k: (float(v) if v else None) if k in NUMERIC else v for k, v in row.items()} for row in reader]


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})


def _read_outputs(path: Path, where: dict) -> dict[str, list[int]]:
    """Prompt id -> new token ids of the outputs.jsonl records matching ``where`` (the last one wins)."""
    if not path.exists():
        return {}
    found = {}
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            if all(r[k] == v for k, v in where.items()):
                found[r["prompt_id"]] = r["new_token_ids"]
    return found


def _environment(device: torch.device) -> dict:
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                        if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "mambaspec": __version__, "git_commit": _git_commit()}


def _git_commit() -> str:
    """The source checkout's commit (``+dirty`` with uncommitted changes); empty outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(PACKAGE_DIR), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode:
            return ""
        dirty = subprocess.run(["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


# --------------------------------------------------------------------------------- the bench

def _summarize(results: list[GenerationResult], peak_bytes: int) -> dict:
    """One row's metrics from its prompts: throughputs as total tokens over total time."""
    s = [r.stats for r in results]
    n = len(s)
    rounds = sum(x.rounds for x in s)
    decode_s = sum(x.seconds - x.prefill_s for x in s)
    decode_tokens = sum(x.decode_tokens_per_s * (x.seconds - x.prefill_s) for x in s)
    return {
        "prompts": n,
        "prompt_tokens": round(sum(len(r.prompt_ids) for r in results) / n, 1),
        "new_tokens": sum(x.new_tokens for x in s),
        "decode_tokens_per_s": round(decode_tokens / decode_s, 3) if decode_s > 0 else 0.0,
        "tokens_per_s": round(sum(x.new_tokens for x in s) / sum(x.seconds for x in s), 3),
        "mean_accept_len": round(sum(x.mean_accept_len * x.rounds for x in s) / max(rounds, 1), 4),
        "rounds": rounds,
        "mean_tree_nodes": round(sum(x.mean_tree_nodes * x.rounds for x in s) / max(rounds, 1), 3),
        "draft_ms_per_round": round(1000 * sum(x.draft_s for x in s) / max(rounds, 1), 3),
        "verify_ms_per_round": round(1000 * sum(x.verify_s for x in s) / max(rounds, 1), 3),
        "prefill_s": round(sum(x.prefill_s for x in s) / n, 4),
        "seconds": round(sum(x.seconds for x in s), 3),
        "peak_mem_mb": round(peak_bytes / 2**20, 1),
        "drafter_state_bytes": round(sum(x.drafter_state_bytes for x in s) / n),
        "target_kv_bytes": round(sum(x.target_kv_bytes for x in s) / n),
    }


def _compare_with_ar(row: dict, prompts: list[BenchPrompt], results: list[GenerationResult],
                     reference: dict[str, list[int]]) -> None:
    """Greedy lossless check: the method's new tokens against ar's, prompt by prompt."""
    if row["method"] == "ar" or not reference:
        return
    mismatched = sum(reference.get(p.id) != r.new_token_ids for p, r in zip(prompts, results))
    row["greedy_match"] = "no" if mismatched else "yes"
    row["mismatched_prompts"] = mismatched


def _speedups(row: dict, ar_row: dict | None) -> None:
    if row["method"] == "ar":
        row["speedup_decode"] = row["speedup_e2e"] = 1.0
    elif ar_row is not None and ar_row["decode_tokens_per_s"] and ar_row["tokens_per_s"]:
        row["speedup_decode"] = round(row["decode_tokens_per_s"] / ar_row["decode_tokens_per_s"], 3)
        row["speedup_e2e"] = round(row["tokens_per_s"] / ar_row["tokens_per_s"], 3)


def _resolve_drafters(cfg: BenchConfig) -> tuple[str | None, str | None]:
    entry = registry().get(cfg.target)
    mamba = cfg.drafter if cfg.drafter is not None else (entry.default_drafter if entry else None)
    transformer = cfg.transformer_drafter if cfg.transformer_drafter is not None else (
        entry.default_transformer_drafter if entry else None)
    return (None if mamba in (None, "", "none") else mamba,
            None if transformer in (None, "", "none") else transformer)


def _load_models(cfg: BenchConfig, methods: list[str], log: Callable[[str], None]) -> tuple[BenchModels, list[str]]:
    """Load the target and the drafters the methods need; without an explicit --methods, a method whose
    drafter is unavailable is dropped (and said so)."""
    names = dict(zip(("mamba", "transformer"), _resolve_drafters(cfg)))
    kinds = {"mamba": (True, "--drafter", "a Mamba"), "transformer": (False, "--transformer-drafter", "a Transformer")}
    target = load_model(cfg.target, device=cfg.device, dtype=cfg.dtype)
    optimize_model(target.model, linear=cfg.linear, quantize=cfg.quantize, compile=cfg.compile)  # for every method
    models = BenchModels(target, SpeculativeGenerator(target.model, None, tokenizer=target.tokenizer))
    for kind in ("mamba", "transformer"):
        users = [m for m in methods if METHODS[m].drafter == kind]
        if not users:
            continue
        is_mamba, option, what = kinds[kind]
        try:
            if names[kind] is None:
                raise MambaspecError(f"method {', '.join(users)} needs {what} drafter: pass {option}")
            drafter = load_drafter(names[kind], target, device=str(target.device), dtype=cfg.dtype,
                                   linear=cfg.linear)
            if (drafter.model.config.model_type in MAMBA_TYPES) != is_mamba:  # (also under a cross-tokenizer wrapper)
                raise MambaspecError(f"{option} {names[kind]} is not {what} model "
                                     f"({drafter.model.config.model_type}); pass {what} drafter")
        except MambaspecError as e:
            if cfg.methods is not None:
                raise
            log(f"skipping {', '.join(users)}: {e}")
            methods = [m for m in methods if m not in users]
            continue
        setattr(models, kind, drafter)
    return models, methods


def run_bench(
    cfg: BenchConfig,
    on_progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> BenchResult:
    """Run every (length, method) of ``cfg`` not yet in ``cfg.out``'s CSV; return this configuration's rows.

    ``on_progress(label, done, total)`` follows the prompts of each row; ``log`` receives notes
    (methods skipped, rows resumed, prompts too short for a length).
    """
    spec = dataset_spec(cfg.dataset)
    unknown = [m for m in cfg.methods or [] if m not in METHODS]
    if unknown:
        raise MambaspecError(f"unknown method '{unknown[0]}'; use {', '.join(METHODS)}")
    if cfg.methods == []:
        raise MambaspecError(f"--methods names no method; use {', '.join(METHODS)}")
    methods = [m for m in METHODS if cfg.methods is None or m in cfg.methods]  # ar first: the reference
    if cfg.max_new_tokens < 1:
        raise MambaspecError(f"--max-new-tokens must be at least 1, got {cfg.max_new_tokens}")
    if cfg.limit is not None and cfg.limit < 1:
        raise MambaspecError(f"--limit must be at least 1, got {cfg.limit}")
    if "mamba-auto" in methods:
        check_options(cfg.ucb_c, "replayed", cfg.confidence_buckets)  # fail before loading
    if cfg.lengths and spec.context is None:
        raise MambaspecError(f"dataset '{cfg.dataset}' has no long context to cut, so it takes no --lengths")
    TreeShape.parse(cfg.tree)
    sampling = cfg.sampling
    if cfg.plot:
        check_matplotlib()
    rows = load_rows(spec, cfg.data)
    device = resolve_device(cfg.device)
    models, methods = _load_models(cfg, methods, log)
    context = models.plain.context_length
    for n in cfg.lengths or []:
        if n + cfg.max_new_tokens > context:
            raise MambaspecError(f"length {n} + {cfg.max_new_tokens} new tokens exceeds the target's context of "
                                 f"{context} tokens; use shorter --lengths or fewer --max-new-tokens")

    mamba_name, transformer_name = _resolve_drafters(cfg)
    config = {"target": cfg.target, "drafter": mamba_name if models.mamba else "",
              "transformer_drafter": transformer_name if models.transformer else "",
              "tree": str(TreeShape.parse(cfg.tree)), "arms": cfg.arms or "", "ucb_c": cfg.ucb_c,
              "confidence_buckets": cfg.confidence_buckets, "max_new_tokens": cfg.max_new_tokens,
              "temperature": cfg.temperature, "limit": cfg.limit or "", "data": cfg.data or "",
              "device": str(device), "dtype": str(resolve_dtype(cfg.dtype, device)).replace("torch.", ""),
              "linear": cfg.linear, "quantize": cfg.quantize, "compile": cfg.compile,
              "target_options": getattr(models.target.model, "_mambaspec_optimized", "stock"),
              "seed": cfg.seed, "prompt_lookup_tokens": cfg.prompt_lookup_tokens}
    config_id = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, outputs_path = out / CSV_NAME, out / OUTPUTS_NAME
    env = _environment(device)
    done = {(r["dataset"], r["length"], r["method"]): r for r in read_csv(csv_path) if r["config_id"] == config_id}

    resumed = 0
    built: dict[str, MethodRun] = {}
    keys = []
    for length in cfg.lengths or [None]:
        lkey = float(length) if length else None
        group = [(cfg.dataset, lkey, m) for m in methods]
        keys += group
        todo = [m for k, m in zip(group, methods) if k not in done]
        resumed += len(group) - len(todo)
        if not todo:
            continue
        prompts, short = build_prompts(spec, rows, models.target.tokenizer, length=length,
                                       max_tokens=context - cfg.max_new_tokens, limit=cfg.limit)
        if short:
            log(f"length {length}: {short} rows passed over (context shorter than {length} tokens)")
        where = {"config_id": config_id, "dataset": cfg.dataset, "length": str(length or "")}
        for method in todo:
            if method not in built:
                built[method] = METHODS[method].build(models, cfg)
                warm = prompts[0].ids[-WARMUP_PROMPT_TOKENS:]
                (built[method].warm_up or built[method].run)(warm, min(WARMUP_NEW_TOKENS, cfg.max_new_tokens), cfg.seed)
            label = f"{cfg.dataset}{f' · {length} tokens' if length else ''} · {method}"
            results, peak = _run_prompts(built[method].run, prompts, cfg, device, label, on_progress)
            row = {**where, "length": length or "", "method": method, **_summarize(results, peak),
                   "mem_measure": PeakMemory(device).kind, "method_detail": built[method].detail, **config, **env,
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            if sampling.greedy:
                _compare_with_ar(row, prompts, results, _read_outputs(outputs_path, {**where, "method": "ar"}))
            _speedups(row, done.get((cfg.dataset, lkey, "ar")))
            with outputs_path.open("a") as f:  # before the CSV row: a row in the CSV has its outputs
                for p, r in zip(prompts, results):
                    f.write(json.dumps({**where, "method": method, "prompt_id": p.id,
                                        "new_token_ids": r.new_token_ids}) + "\n")
            _append_csv(csv_path, row)
            done[(cfg.dataset, lkey, method)] = read_csv(csv_path)[-1]
            gc.collect()
    if resumed:
        log(f"{resumed} rows already in {csv_path} for this configuration: skipped")
    result = BenchResult([done[k] for k in keys if k in done], csv_path, outputs_path, resumed)
    if cfg.plot:
        result.plots = plot_results(result.rows, out)
    return result


def _run_prompts(run: Runner, prompts: list[BenchPrompt], cfg: BenchConfig, device: torch.device, label: str,
                 on_progress: Callable[[str, int, int], None] | None) -> tuple[list[GenerationResult], int]:
    results, peak = [], 0
    for i, prompt in enumerate(prompts):
        if on_progress:
            on_progress(label, i, len(prompts))
        with PeakMemory(device) as mem:
            results.append(run(prompt.ids, cfg.max_new_tokens, cfg.seed + i))
        peak = max(peak, mem.peak_bytes)
    if on_progress:
        on_progress(label, len(prompts), len(prompts))
    return results, peak


