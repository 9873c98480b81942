"""The ``mambaspec`` command line. It only parses and prints; the work is done by the library."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .bandit import DEFAULT_C, DEFAULT_EDGES
from .errors import MambaspecError
from .tree import DEFAULT_TREE

app = typer.Typer(
    help="Speculative decoding with Mamba drafters: generate, benchmark, tune trees, train drafters.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# A pipe or a log file gets whole tables (rich would squeeze them to 80 columns); COLUMNS still wins.
out = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 250)
err = Console(stderr=True, highlight=False)

DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda or auto (cuda when a GPU is visible).")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16.")
LinearOpt = typer.Option("auto", "--linear", help="Linear layers: auto (oneDNN-packed weights on CPU float32, 2-3x faster GEMMs for a few rows), onednn, or torch (stock).")
QuantizeOpt = typer.Option("none", "--quantize", help="int8: dynamic int8 linear layers on CPU (faster, but a different model than float32: compare with ar run the same way).")
RewardHelp = ("The tree bandit's reward: `replayed` (tokens/s: every arm's acceptance replayed on every "
              "round from the drafter's ranks, each arm's cost per round measured; greedy, else as measured), "
              "`measured` (tokens/s of the rounds each arm ran) or `modeled` (the paper's -(1+λγ)/N_accept).")
EdgesHelp = ("Contexts of the replayed reward: the drafter's top-1 probability at the root cuts rounds into contexts at these "
             "edges, and each context learns its own best arm (`none`: one context).")
EDGES = ",".join(map(str, DEFAULT_EDGES))
CompileOpt = typer.Option(False, "--compile/--no-compile", help="torch.compile the target's forward (compilation runs in an untimed warm-up).")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def _fail(error: MambaspecError) -> None:
    err.print(f"[bold red]error:[/] {error}", soft_wrap=True)
    raise typer.Exit(error.exit_code)


class _Streamer:
    """Prints text as tokens are accepted (holds back an incomplete UTF-8 character)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.printed = tokenizer, [], ""

    def __call__(self, new: list[int]) -> None:
        self.ids.extend(new)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        sys.stdout.write(text[len(self.printed):])
        sys.stdout.flush()
        self.printed = text


def stats_table(stats) -> Table:
    t = Table(title="generation stats", show_header=True, header_style="bold")
    t.add_column("stat")
    t.add_column("value", justify="right")
    t.add_column("meaning", style="dim")
    rows = [
        ("drafter", stats.drafter, "the drafter (none = plain target decoding)"),
        ("target_options", stats.target_options, "how the target's forward was made cheap (--linear, --quantize, --compile)"),
        ("tree", stats.tree, "draft tree shape (N1,...,Nγ); () = no drafting"),
        ("new_tokens", f"{stats.new_tokens}", f"tokens generated (stopped: {stats.stopped})"),
        ("seconds", f"{stats.seconds:.2f}", "wall time, prefill included, model loading excluded"),
        ("tokens_per_s", f"{stats.tokens_per_s:.1f}", "new_tokens / seconds"),
        ("decode_tokens_per_s", f"{stats.decode_tokens_per_s:.1f}", "new_tokens / (seconds - prefill_s)"),
        ("prefill_s", f"{stats.prefill_s:.3f}", "target and drafter reading the prompt"),
        ("rounds", f"{stats.rounds}", "draft-verify rounds = target forwards after prefill"),
        ("mean_accept_len", f"{stats.mean_accept_len:.2f}", "tokens committed per round (accepted drafts + 1)"),
        ("mean_tree_nodes", f"{stats.mean_tree_nodes:.1f}", "draft tokens verified per round"),
        ("draft_s", f"{stats.draft_s:.3f}", "drafter: building trees, feeding accepted tokens"),
        ("verify_s", f"{stats.verify_s:.3f}", "target: verification forwards, acceptance, cache compaction"),
        ("target_forward_s", f"{stats.target_forward_s:.3f}", "part of verify_s inside the target's forward"),
        ("other_s", f"{stats.other_s:.3f}", "everything else in the loop"),
        ("peak_mem_mb", f"{stats.peak_mem_mb:.0f}", "CUDA: max allocated; CPU: peak resident memory"),
        ("drafter_state_bytes", f"{stats.drafter_state_bytes:,}", "drafter state / KV cache after the prompt"),
        ("target_kv_bytes", f"{stats.target_kv_bytes:,}", "target KV cache after the prompt"),
    ]
    for row in rows:
        t.add_row(*row)
    return t


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The text to continue (wrapped in the chat template unless --raw)."),
    target: str = typer.Option("smollm2-135m", "--target", "-t", help="Target model: a name (see `mambaspec models`), hub id, folder or .gguf file."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Drafter: a name, hub id or folder, or `none` for plain decoding. Default: the target's shipped drafter, if any."),
    cross_tokenizer: str = typer.Option("auto", "--cross-tokenizer", help="A drafter with another tokenizer than the target's: `auto` translates its drafts through text when the tokenizers differ (greedy only), `on` always does, `off` refuses such a drafter."),
    tree: str = typer.Option(DEFAULT_TREE, "--tree", help="Draft tree shape N1,...,Nγ (1,1,1,1 = chain of 4; 3,2,2,1,1 = 45 nodes), or `auto`: a UCB bandit picks the shape every round."),
    arms: Optional[str] = typer.Option(None, "--arms", help="With --tree auto: the arms file (default recipes/trees.yaml; a `tune` output warm-starts the bandit)."),
    ucb_c: float = typer.Option(DEFAULT_C, "--ucb-c", help="With --tree auto: the UCB exploration constant c."),
    reward: str = typer.Option("replayed", "--reward", help=RewardHelp),
    edges: str = typer.Option(EDGES, "--confidence-buckets", help=EdgesHelp),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Exact number of tokens to generate (fewer only at EOS or the context limit)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default); > 0 samples, losslessly."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold (1 = off)."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k sampling (0 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for sampling."),
    chat: bool = typer.Option(True, "--chat/--raw", help="Apply the tokenizer's chat template (default when it has one) or feed the raw text."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    device_map: Optional[str] = typer.Option(None, "--device-map", help="`auto` shards the target over several GPUs (accelerate)."),
    linear: str = LinearOpt,
    quantize: str = QuantizeOpt,
    compile_: bool = CompileOpt,
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object (text, token ids, stats) and nothing else on stdout."),
) -> None:
    """Generate text with speculative decoding and print the stats."""
    _quiet_libraries()
    from .pipeline import default_drafter, load_pipeline
    from .sampling import SamplingConfig

    try:
        shape = tree_or_policy(tree, arms, ucb_c, reward, edges)
        sampling = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k)
        if max_new_tokens < 1:
            raise MambaspecError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        if not prompt.strip():
            raise MambaspecError("the prompt is empty; give some text to continue")
        pipe = load_pipeline(target, drafter, device=device, dtype=dtype, device_map=device_map,
                             cross_tokenizer=cross_tokenizer, linear=linear, quantize=quantize, compile=compile_)
        if drafter is None and default_drafter(target) == "none" and not as_json:
            err.print(f"[dim]hint: no shipped drafter for '{target}'; decoding without one "
                      f"(pass --drafter NAME to speculate)[/]")
        if hasattr(shape, "arms") and not as_json:
            for line in policy_notes(shape, pipe.drafter, sampling):
                err.print(f"[dim]note: {line}[/]", soft_wrap=True)
        if compile_:  # compilation happens here, outside the timed generation
            pipe.generate(prompt, chat=chat, max_new_tokens=min(8, max_new_tokens), tree=shape, sampling=sampling)
        streamer = None if as_json else _Streamer(pipe.target.tokenizer)
        result = pipe.generate(prompt, chat=chat, max_new_tokens=max_new_tokens, tree=shape,
                               sampling=sampling, seed=seed, on_tokens=streamer)
    except MambaspecError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)
    if as_json:
        print(json.dumps({"text": result.text, "new_token_ids": result.new_token_ids,
                          "prompt_tokens": len(result.prompt_ids), "stats": result.stats.as_dict()}))
        return
    sys.stdout.write("\n")
    out.print(stats_table(result.stats))
    if result.stats.arms:
        out.print(arms_table(result.stats.arms, f"tree arms: {result.stats.tree_policy}", reward=reward))


def tree_or_policy(tree: str, arms: str | None, c: float, reward: str, edges: str = EDGES):
    """A fixed TreeShape, or for `auto` a UCB policy over the arms file."""
    from .bandit import UCBPolicy, check_options, load_arms
    from .models import recipes_dir
    from .tree import TreeShape

    check_options(c, reward, edges)  # bad values fail even unused
    if tree.strip().lower() == "auto":
        return UCBPolicy(load_arms(arms or recipes_dir() / "trees.yaml"), c=c, reward=reward, edges=edges)
    if arms is not None:
        raise MambaspecError("--arms is only used with --tree auto")
    return TreeShape.parse(tree)


def policy_notes(policy, drafter, sampling) -> list[str]:
    """What a user of --tree auto should know about this run before it starts."""
    if drafter.name == "none":
        return ["--tree auto has nothing to choose without a drafter: plain decoding"]
    notes = []
    if policy.wants_ranks and (not sampling.greedy or getattr(drafter, "inner", None) is not None):
        why = "sampling" if not sampling.greedy else "a drafter with another tokenizer"
        notes.append(f"the replayed reward needs greedy decoding with the target's tokenizer; with {why} each arm "
                     f"is judged on its own rounds (as --reward measured)")
    if not any(a.pulls for a in policy.arms):
        notes.append(f"the bandit starts cold: it tries each of the {len(policy.arms)} arms {policy.first_tries}x "
                     f"first; for short "
                     f"generations warm-start it from `mambaspec tune` (--arms runs/tune/tuned_arms.yaml)")
    return notes


def arms_table(arms: list[dict], title: str, best: str | None = None, reward: str = "replayed") -> Table:
    ranked_by = {"replayed": "est. tokens/s: replayed tokens/round ÷ round cost (per confidence context when choosing)",
                 "measured": "mean tokens/s of its rounds", "modeled": "the paper's −(1+λγ)/N_accept"}
    t = Table(title=title, header_style="bold", caption=f"the bandit ranks arms by value = {ranked_by[reward]}; "
              "tokens/round and tokens/s are over the rounds the arm ran, replayed over all rounds")
    this_run = any("run_pulls" in a for a in arms)
    columns = ("arm", "tree", "pulls (this run)" if this_run else "pulls", "tokens/round", "tokens/s",
               "ms/round", "replayed tokens/round", "value")
    for col in columns:
        t.add_column(col, justify="left" if col in ("arm", "tree") else "right")
    for a in arms:
        style = "bold green" if a["name"] == best else None
        pulls = f"{a['pulls']} ({a['run_pulls']})" if this_run else str(a["pulls"])
        replayed = a.get("replayed_accept_len", 0.0)
        t.add_row(a["name"], f"({a['tree']})", pulls, f"{a['mean_accept_len']:.2f}", f"{a['tokens_per_s']:.1f}",
                  f"{a['round_cost_ms']:.1f}", f"{replayed:.2f}" if replayed else "-",
                  f"{a['value']:.2f}" if "value" in a else "-", style=style)
    return t


@app.command()
def models() -> None:
    """List the known model names and whether each is available on this machine."""
    from .models import availability, registry

    try:
        entries = registry()
    except MambaspecError as e:
        _fail(e)
    t = Table(title="known models", header_style="bold")
    for col in ("name", "role", "hub id", "available here"):
        t.add_column(col)
    for e in entries.values():
        t.add_row(e.name, e.role, e.hub_id or "-", availability(e))
    out.print(t)


@app.command()
def bench(
    dataset: str = typer.Argument(..., help="humaneval (offline), gsm8k, mt-bench, alpaca, xsum, cnn-dm, longbench (hub, or --data), or jsonl (--data FILE of {\"prompt\": ...} lines). See recipes/datasets.yaml."),
    data: Optional[str] = typer.Option(None, "--data", help="A local .jsonl/.jsonl.gz/.json/.parquet file with the dataset's fields: replaces its source (offline use)."),
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="Comma-separated: ar, mamba, mamba-auto, transformer, hf-assisted, prompt-lookup. Default: all whose drafter is available."),
    target: str = typer.Option("smollm2-135m", "--target", "-t", help="Target model: a name, hub id, folder or .gguf file."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Mamba drafter for `mamba` (default: the target's, e.g. mamba2-smollm2; `none` = skip)."),
    transformer_drafter: Optional[str] = typer.Option(None, "--transformer-drafter", help="Transformer drafter for `transformer` and `hf-assisted` (default: the target's, e.g. llama-smollm2; `none` = skip)."),
    tree: str = typer.Option(DEFAULT_TREE, "--tree", help="Draft tree shape for our loop's methods (N1,...,Nγ)."),
    arms: Optional[str] = typer.Option(None, "--arms", help="mamba-auto's arms file (default recipes/trees.yaml; a tuned_arms.yaml from `tune` warm-starts it)."),
    ucb_c: float = typer.Option(DEFAULT_C, "--ucb-c", help="mamba-auto's UCB exploration constant."),
    edges: str = typer.Option(EDGES, "--confidence-buckets", help="mamba-auto (replayed reward): " + EdgesHelp[0].lower() + EdgesHelp[1:]),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Tokens to generate per prompt (fewer only at EOS)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default; outputs are checked against ar's); > 0 samples."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Prompts per dataset and length (default: all)."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Exact prompt lengths in target tokens, e.g. 1k,2k,4k,8k (k = 1000): the context is cut in the middle, the question kept."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    linear: str = LinearOpt,
    quantize: str = QuantizeOpt,
    compile_: bool = CompileOpt,
    out_dir: str = typer.Option("runs/bench", "--out", help="Output folder: results.csv (rerun to resume), outputs.jsonl, plots."),
    plot: bool = typer.Option(False, "--plot", help="Write PNGs of throughput and memory against length (needs matplotlib: the `plot` extra)."),
    prompt_lookup_tokens: int = typer.Option(10, "--prompt-lookup-tokens", help="prompt_lookup_num_tokens for `prompt-lookup`."),
    seed: int = typer.Option(0, "--seed", help="Base seed for sampling (prompt i uses seed + i)."),
) -> None:
    """Benchmark drafters, peers and plain decoding side by side: throughput, acceptance length, memory."""
    _quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .bench import BenchConfig, run_bench
    from .prompts import parse_lengths
    from .report import results_tables

    try:
        cfg = BenchConfig(
            dataset=dataset, data=data, target=target, drafter=drafter, transformer_drafter=transformer_drafter,
            methods=None if methods is None else [m.strip() for m in methods.split(",") if m.strip()],
            tree=tree, arms=arms, ucb_c=ucb_c, confidence_buckets=edges, max_new_tokens=max_new_tokens, temperature=temperature, limit=limit,
            lengths=parse_lengths(lengths) if lengths else None, device=device, dtype=dtype, linear=linear,
            quantize=quantize, compile=compile_, out=out_dir,
            plot=plot, prompt_lookup_tokens=prompt_lookup_tokens, seed=seed)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
                      TimeElapsedColumn(), console=err) as bar:
            tasks: dict[str, int] = {}

            def progress(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.update(tasks[label], completed=done)

            result = run_bench(cfg, on_progress=progress, log=lambda m: bar.console.print(f"[dim]{m}[/]"))
    except MambaspecError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print(f"interrupted: finished rows are in {out_dir}/results.csv; rerun the same command to resume")
        raise typer.Exit(130)
    for table in results_tables(result.rows):
        out.print(table)
    out.print(f"results: {result.csv_path} ({len(result.rows)} rows, {result.resumed} resumed); "
              f"outputs: {result.outputs_path}", soft_wrap=True)
    for path in result.plots:
        out.print(f"plot: {path}", soft_wrap=True)


@app.command()
def tune(
    arms: Optional[str] = typer.Option(None, "--arms", help="Arms YAML: named tree shapes (default recipes/trees.yaml). A tuned_arms.yaml from an earlier run warm-starts the bandit."),
    dataset: str = typer.Option("humaneval", "--dataset", help="Prompt source, as for bench: humaneval (offline), gsm8k, mt-bench, ... or jsonl with --data."),
    data: Optional[str] = typer.Option(None, "--data", help="A local .jsonl/.json/.parquet file with the dataset's fields (offline use)."),
    limit: Optional[int] = typer.Option(20, "--limit", help="Number of prompts."),
    target: str = typer.Option("smollm2-135m", "--target", "-t", help="Target model: a name, hub id, folder or .gguf file."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Drafter (default: the target's, e.g. mamba2-smollm2)."),
    policy: str = typer.Option("ucb", "--policy", help="ucb: one bandit across all prompts (it learns the workload). fixed: every arm on every prompt (a sweep, the reference)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Stop the bandit after this many rounds in all (ucb)."),
    ucb_c: float = typer.Option(DEFAULT_C, "--ucb-c", help="Exploration constant c of UCB (arm values are divided by the largest one first; larger explores more)."),
    reward: str = typer.Option("replayed", "--reward", help=RewardHelp),
    edges: str = typer.Option(EDGES, "--confidence-buckets", help=EdgesHelp),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Tokens to generate per prompt."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; > 0 samples."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    linear: str = LinearOpt,
    quantize: str = QuantizeOpt,
    compile_: bool = CompileOpt,
    out_dir: str = typer.Option("runs/tune", "--out", help="Output folder: arms.csv and tuned_arms.yaml (written after every prompt)."),
) -> None:
    """Find the tree shape that pays on a workload and this hardware (UCB bandit or a fixed sweep)."""
    _quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .tune import check_options, tune_dataset

    try:
        check_options(policy, ucb_c, reward, edges)  # before the progress bar draws
        with Progress(TextColumn(f"tune ({policy})"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("prompts" if policy == "ucb" else "runs (arm x prompt)"),
                      TimeElapsedColumn(), console=err) as bar:
            tasks: list[int] = []  # added at the first report, so an early error prints alone

            def progress(done: int, total: int) -> None:
                if not tasks:
                    tasks.append(bar.add_task("tune", total=total))
                bar.update(tasks[0], completed=done, total=total)

            result, csv_path, yaml_path = tune_dataset(
                arms, dataset=dataset, data=data, limit=limit, target=target, drafter=drafter, policy=policy,
                rounds=rounds, c=ucb_c, reward=reward, edges=edges, max_new_tokens=max_new_tokens, temperature=temperature,
                device=device, dtype=dtype, linear=linear, quantize=quantize, compile=compile_, out=out_dir,
                progress=progress)
    except MambaspecError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print(f"interrupted: the statistics so far are in {out_dir}/tuned_arms.yaml; "
                  f"rerun with --arms {out_dir}/tuned_arms.yaml to continue from them")
        raise typer.Exit(130)
    out.print(arms_table(result.rows(), f"tree arms ({result.policy})", best=result.best.name, reward=reward))
    best_value = result.values[result.arms.index(result.best)]
    out.print(f"best arm: {result.best.name} {result.best.shape}, value {best_value:.1f}; "
              f"overall {result.tokens_per_s:.1f} tok/s (all prompts; prefill and exploration included)", soft_wrap=True)
    out.print(f"per-arm CSV: {csv_path}; tuned arms: {yaml_path} (use with generate --tree auto --arms, "
              f"or bench --arms)", soft_wrap=True)


@app.command("verify-cost")
def verify_cost_cmd(
    target: str = typer.Option("smollm2-135m", "--target", "-t", help="Target model: a name, hub id, folder or .gguf file."),
    prefix: int = typer.Option(512, "--prefix", help="Tokens already in the KV cache."),
    nodes: str = typer.Option("1,2,4,5,8,16,32", "--nodes", help="Tree sizes to time (comma-separated)."),
    repeats: int = typer.Option(10, "--repeats", help="Timings per size (the median is reported)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    linear: str = LinearOpt,
    quantize: str = QuantizeOpt,
    compile_: bool = CompileOpt,
    out_dir: str = typer.Option("runs/verify-cost", "--out", help="Folder of verify_cost.csv (rows are appended, with their settings)."),
) -> None:
    """Time one verification forward by tree size: the engine's path next to a plain transformers forward."""
    _quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .verifycost import verify_cost

    try:
        try:
            sizes = tuple(int(x) for x in nodes.split(",") if x.strip())
        except ValueError:
            raise MambaspecError(f"--nodes must be comma-separated integers like 1,2,4,8, got '{nodes}'") from None
        if not sizes:
            raise MambaspecError("--nodes names no size; e.g. --nodes 1,2,4,8")
        with Progress(TextColumn("verify-cost"), BarColumn(), MofNCompleteColumn(), TextColumn("sizes"),
                      TimeElapsedColumn(), console=err) as bar:
            task = bar.add_task("sizes", total=len(sizes))
            rows, settings, path = verify_cost(
                target, prefix=prefix, nodes=sizes, repeats=repeats, device=device, dtype=dtype, linear=linear,
                quantize=quantize, compile=compile_, out=out_dir,
                progress=lambda done, total: bar.update(task, completed=done))
    except MambaspecError as e:
        _fail(e)
    t = Table(title=f"verification forward, {target}, prefix {prefix}, {settings['dtype']}, "
                    f"{settings['threads']} threads; engine: {settings['engine_options']}", header_style="bold")
    for col in ("nodes", "engine ms", "plain transformers ms", "engine / plain 1 token", "plain / plain 1 token"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r.nodes), f"{r.engine_ms:.1f}", f"{r.plain_ms:.1f}", f"{r.engine_ratio:.2f}",
                  f"{r.plain_ratio:.2f}")
    out.print(t)
    out.print(f"appended to {path}", soft_wrap=True)


@app.command("pretrain-drafter")
def pretrain_drafter(
    target: str = typer.Option("smollm2-135m", "--target", "-t", help="Target whose tokenizer the drafter speaks; also the teacher for distillation."),
    arch: Optional[str] = typer.Option(None, "--arch", help="mamba2, mamba or llama (the Transformer baseline, sized to match the Mamba2). Default: the recipe's."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe YAML (model size, schedule, data). Default: recipes/drafters/mamba2-smollm2.yaml."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Extra training text: .txt/.md/.py/.jsonl/.parquet files or folders, or a datasets hub id (repeatable)."),
    out_dir_opt: Optional[str] = typer.Option(None, "--out", help="Output folder (checkpoints, metrics.csv, the model, eval.json, README.md)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override the recipe's number of steps."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate on held-out prompts at the end."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Train a drafter for a target's tokenizer (LM pretraining + distillation from the target)."""
    _quiet_libraries()
    from dataclasses import replace

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .models import recipes_dir
    from .train import DrafterRecipe, train_drafter

    try:
        r = DrafterRecipe.load(recipe or recipes_dir() / "drafters" / "mamba2-smollm2.yaml")
        if arch is not None:
            r = replace(r, arch=arch)
        if steps is not None:
            r = replace(r, steps=steps)
        r.validate("--arch/--steps")
        out_dir = out_dir_opt or f"runs/{r.arch}-{target.replace('/', '_')}"
        with Progress(TextColumn("[bold]training[/]"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                      TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tok_s]:.0f} tok/s"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=err) as bar:
            task = bar.add_task("train", total=r.steps, loss=float("nan"), tok_s=0.0)

            def progress(done, total, info):
                bar.update(task, completed=done, loss=info["loss"], tok_s=info["tok_s"])

            result = train_drafter(r, target, out_dir, extra_data=data or [], resume=resume, device=device,
                                   evaluate=evaluate, progress=progress, log=lambda m: bar.console.print(m))
    except MambaspecError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print("interrupted: the last checkpoint is kept; rerun with --resume to continue")
        raise typer.Exit(130)
    out.print(f"drafter written to {result.out} ({result.steps} steps, {result.wall_s / 60:.1f} min)")
    for k, v in result.eval.items():
        out.print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
