"""The ``mambaspec`` command line. It only parses and prints; the work is done by the library.

Options are checked before torch and transformers are imported (a bad option is refused in well
under two seconds); library errors become one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .config import DEFAULT_TARGET
from .core.bandit import DEFAULT_C, DEFAULT_EDGES, check_options
from .core.sampling import SamplingConfig
from .core.shape import TreeShape
from .bench.report import count
from .display import Reporter, Streamer, arms_table, consoles, dynamic_table, stats_table
from .errors import MambaspecError
from .loading.options import ModelOptions, check_cross_tokenizer
from .loading.trees import BENCH_TREE, DEFAULT_TREE, policy_name, resolve_tree



class _Commands(TyperGroup):
    """typer's group of commands, with a usage error (``-n abc``, an unknown option or command) as one line on stderr
    like every other error (typer draws a box under a usage line), and no type label on flags in help (typer shows
    ``<bool>`` for every flag, ``--help`` included)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # typer's usage errors derive from it
            if type(e).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
                ctx = getattr(e, "ctx", None)
                see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                consoles()[1].print(f"[bold red]error:[/] {_one_line(e.format_message())}{see}", soft_wrap=True,
                                    highlight=False)
            sys.exit(e.exit_code)
        except typer.Abort:
            consoles()[1].print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _no_flag_types(command, ctx)
        return command

    def format_help(self, ctx, formatter) -> None:
        _no_flag_types(self, ctx)
        super().format_help(ctx, formatter)


def _no_flag_types(command, ctx) -> None:
    """Flags (``--quiet``, ``--compile/--no-compile``, ``--help``) take no value, so help shows no type for them."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


app = typer.Typer(
    cls=_Commands,
    help="Speculative decoding with Mamba drafters: generate, benchmark, tune trees, train drafters.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
EDGES = ",".join(map(str, DEFAULT_EDGES))

TargetOpt = typer.Option(DEFAULT_TARGET, "--target", "-t", help="Target model: a name (see `mambaspec models`), hub "
                                                                "id, folder or .gguf file.")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda or auto (cuda when a GPU is visible).")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16 "
                                                "or float64.")
LinearOpt = typer.Option("auto", "--linear", help="Linear layers: auto (oneDNN-packed weights on CPU float32, 2-3x "
                                                  "faster GEMMs for a few rows), onednn, or torch (stock).")
QuantizeOpt = typer.Option("none", "--quantize", help="int8: int8 linear layers on CPU (faster, but a different model "
                                                      "than float32: compare with ar run the same way).")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for torch (default: one per core). On a machine other "
                                                  "work keeps busy, 1 is often much faster than contending for every "
                                                  "core.")
CompileOpt = typer.Option(False, "--compile/--no-compile", help="torch.compile the target's feed-forward blocks "
                                                                "(compilation runs in an untimed warm-up).")
TreeHelp = ("Draft tree: a shape N1,...,Nγ (1,1,1,1 = chain of 4; 3,2,2,1,1 = 45 nodes); `dynamic`: grown every round "
            "from the drafter's probabilities as far as measured costs say it pays (nothing when nothing pays); "
            "`auto`: a UCB bandit picks a shape every round.")
DrafterHelp = ("Drafter: a name, hub id or folder; `lookup` (copies from the prompt and the output); NAME+lookup "
               "(both in one tree); `none` for plain decoding. Default: the target's, e.g. mamba2-smollm2+lookup for "
               "smollm2-135m.")
LookupGlobalHelp = ("Lookup drafters also index the outputs of earlier generations in this process (SuffixDecoding's "
                    "global tree).")
RewardHelp = ("The tree bandit's reward: `replayed` (tokens/s: every arm's acceptance replayed on every "
              "round from the drafter's ranks, each arm's cost per round measured; greedy, else as measured), "
              "`measured` (tokens/s of the rounds each arm ran) or `modeled` (the paper's -(1+λγ)/N_accept).")
EdgesHelp = ("Contexts of the replayed reward: the drafter's top-1 probability at the root cuts rounds into contexts "
             "at these edges, and each context learns its own best arm (`none`: one context).")


def _show_version(value: bool) -> None:
    if value:
        print(f"mambaspec {__version__}")
        raise typer.Exit()


@app.callback()
def _app_options(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                              help="Print mambaspec's version and exit.")) -> None:
    pass


def _quiet_libraries(threads: int | None = None) -> None:
    """Import the heavy libraries quietly (and give torch ``threads`` CPU threads when set)."""
    _at_least("--threads", threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    if threads is not None:
        torch.set_num_threads(threads)


@contextmanager
def _errors(interrupted: str = "interrupted") -> Iterator[None]:
    """Library errors -> one line on stderr and their exit code; Ctrl-C -> ``interrupted`` and exit 130."""
    try:
        yield
    except MambaspecError as e:
        consoles()[1].print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
        raise typer.Exit(e.exit_code)
    except KeyboardInterrupt:
        consoles()[1].print(interrupted, soft_wrap=True, highlight=False)
        raise typer.Exit(130)


def _option(flag: str, check: Callable[[], object]):
    """Run a library check, naming ``flag`` in its error."""
    try:
        return check()
    except MambaspecError as e:
        raise MambaspecError(f"{flag}: {e}") from None


def _at_least(flag: str, value: int | None, low: int = 1) -> None:
    if value is not None and value < low:
        raise MambaspecError(f"{flag} must be at least {low}, got {value}")


def _model_options(device: str, dtype: str, linear: str, quantize: str, compile_: bool,
                   device_map: str | None = None, threads: int | None = None) -> ModelOptions:
    """The options, each value checked on its own so that an error names its flag."""
    for flag, key, value in (("--device", "device", device), ("--dtype", "dtype", dtype),
                             ("--linear", "linear", linear), ("--quantize", "quantize", quantize),
                             ("--threads", "threads", threads)):
        _option(flag, lambda: ModelOptions(**{key: value}))
    return _option("--compile, --quantize", lambda: ModelOptions(
        device=device, dtype=dtype, device_map=device_map, linear=linear, quantize=quantize, compile=compile_,
        threads=threads))


DeviceMapOpt = typer.Option(None, "--device-map", help="`auto` (the one value): shard the target over several GPUs "
                                                       "with accelerate; nothing to shard on a CPU.")
# The model options, declared once: (parameter, type, typer option); ``_model_command`` adds them to a command.
MODEL_PARAMS = (("device", str, DeviceOpt), ("dtype", str, DtypeOpt), ("device_map", Optional[str], DeviceMapOpt),
                ("linear", str, LinearOpt), ("quantize", str, QuantizeOpt), ("compile_", bool, CompileOpt),
                ("threads", Optional[int], ThreadsOpt))


@dataclass(frozen=True)
class ModelArgs:
    """The model options of a command as given (checked by ``options``)."""

    device: str = "auto"
    dtype: str = "auto"
    linear: str = "auto"
    quantize: str = "none"
    compile: bool = False
    threads: int | None = None
    device_map: str | None = None

    def options(self) -> ModelOptions:
        """The ``ModelOptions``, each value checked on its own so that an error names its flag."""
        return _model_options(self.device, self.dtype, self.linear, self.quantize, self.compile, self.device_map,
                              self.threads)


MODEL_OPTIONS = ModelArgs()  # a command's ``model`` parameter: where ``_model_command`` puts the model options


def _option_group(param: str, params: tuple, make: Callable) -> Callable[[Callable], Callable]:
    """Give a command the options ``params`` ((parameter, type, typer option), ...) in place of its parameter
    ``param``, which receives ``make(**their values)``: options shared by several commands, declared once."""

    def wrap(func: Callable) -> Callable:
        sig = inspect.signature(func, eval_str=True)
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=kind)
                 for name, kind, option in params]
        new_params = []
        for p in sig.parameters.values():
            new_params.extend(added if p.name == param else [p])

        @functools.wraps(func)
        def command(**kwargs):
            given = {name: kwargs.pop(name) for name, *_ in params if name in kwargs}
            return func(**kwargs, **{param: make(**given)})

        command.__signature__ = sig.replace(parameters=new_params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in new_params} | {"return": sig.return_annotation}
        return command

    return wrap


def _model_command(device_map: bool = False) -> Callable[[Callable], Callable]:
    """Give a command the model options (``--device``, ``--dtype``, ``--device-map`` when ``device_map``, ``--linear``,
    ``--quantize``, ``--compile``, ``--threads``) in place of its ``model`` parameter, which receives a
    ``ModelArgs``."""
    params = tuple(p for p in MODEL_PARAMS if device_map or p[0] != "device_map")
    return _option_group("model", params, lambda compile_, **given: ModelArgs(compile=compile_, **given))


@dataclass(frozen=True)
class BanditArgs:
    """The tree bandit's options of a command as given (``--ucb-c``, ``--reward``, ``--confidence-buckets``)."""

    c: float = DEFAULT_C
    reward: str = "replayed"
    edges: str = EDGES

    def check(self) -> None:
        """Each value checked on its own, so that an error names its flag."""
        _option("--ucb-c", lambda: check_options(self.c, "replayed", EDGES))
        _option("--reward", lambda: check_options(DEFAULT_C, self.reward, EDGES))
        _option("--confidence-buckets", lambda: check_options(DEFAULT_C, "replayed", self.edges))


BANDIT_PARAMS = (("c", float, typer.Option(DEFAULT_C, "--ucb-c",
                                           help="The tree bandit's UCB exploration constant c (--tree auto, tune "
                                                "--policy ucb): arm values are divided by the largest one first; "
                                                "larger explores more.")),
                 ("reward", str, typer.Option("replayed", "--reward", help=RewardHelp)),
                 ("edges", str, typer.Option(EDGES, "--confidence-buckets", help=EdgesHelp)))
BANDIT_OPTIONS = BanditArgs()  # a command's ``bandit`` parameter: where ``_bandit_command`` puts the options above


def _bandit_command() -> Callable[[Callable], Callable]:
    return _option_group("bandit", BANDIT_PARAMS, BanditArgs)


def _sampling_options(temperature: float, top_p: float = 1.0, top_k: int = 0) -> SamplingConfig:
    """The sampling settings, each checked on its own so that an error names its flag."""
    _option("--temperature", lambda: SamplingConfig(temperature=temperature))
    _option("--top-p", lambda: SamplingConfig(top_p=top_p))
    _option("--top-k", lambda: SamplingConfig(top_k=top_k))
    return SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k)


def _tree_option(tree: str, arms: str | None, bandit: BanditArgs):
    """``--tree``: a fixed TreeShape, ``dynamic`` (the name: the pipeline keeps its policy), or for ``auto`` a UCB
    policy over the arms file (``loading.trees.resolve_tree``)."""
    bandit.check()
    name = policy_name(tree)
    if arms is not None and name != "auto":
        raise MambaspecError("--arms is only used with --tree auto")
    if name == "dynamic":
        return name
    if name == "auto":
        return _option("--arms", lambda: resolve_tree(name, arms=arms, c=bandit.c, reward=bandit.reward,
                                                      edges=bandit.edges))
    if tree.strip().strip("()[]").replace(" ", "") in ("", "0"):
        raise MambaspecError(f"--tree {tree.strip() or repr(tree)} drafts nothing; give a tree such as 2,1,1, or for "
                             f"plain decoding pass --drafter none")
    return _option("--tree", lambda: TreeShape.parse(tree))


def _check_models(target: str, **drafters: str | None) -> None:
    """Refuse a target or drafter that cannot be had before anything loads; ``drafters``: flag name -> value."""
    from .loading.models import check_drafter_name, model_kind

    _option("--target", lambda: model_kind(target))
    for flag, name in drafters.items():
        if name is not None:
            _option("--" + flag.replace("_", "-"), lambda: check_drafter_name(name))


def _stop_strings(stop: list[str] | None) -> list[str]:
    if stop is not None and any(not s for s in stop):
        raise MambaspecError("--stop needs a non-empty string")
    return [_unescape(s) for s in stop or []]


def _unescape(text: str) -> str:
    r"""``\n``, ``\t`` and ``\\`` typed on a command line as the characters they stand for (a shell passes them as
    is)."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m[1]], text)


def _read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    if prompt is not None and prompt_file is not None:
        raise MambaspecError("give the prompt either as an argument or with --prompt-file, not both")
    if prompt_file is not None:
        try:
            prompt = sys.stdin.read() if prompt_file == "-" else Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise MambaspecError(f"--prompt-file {prompt_file}: cannot read it "
                                 f"({getattr(err, 'strerror', None) or err})") from None
    if prompt is None:
        raise MambaspecError("no prompt: give it as an argument, or with --prompt-file FILE (- for stdin)")
    if not prompt.strip():
        raise MambaspecError("the prompt is empty; give some text to continue")
    return prompt


GeneratePromptHelp = "The text to continue (wrapped in the chat template unless --raw). Or use --prompt-file."
GeneratePromptFileHelp = "Read the prompt from FILE (`-` = stdin)."
GenerateStopHelp = ("Stop when the text contains STRING (repeatable); the text ends before it. \\n and \\t stand for a "
                    "newline and a tab; a string that never comes changes nothing.")
GenerateCrossTokenizerHelp = ("A drafter with another tokenizer than the target's: `auto` translates its drafts "
                              "through text when the tokenizers differ (greedy only), `on` always does, `off` refuses "
                              "such a drafter.")
GenerateArmsHelp = ("With --tree auto: the arms file (default recipes/trees.yaml; a `tune` output warm-starts the "
                    "bandit).")
GenerateMaxNewTokensHelp = "Tokens to generate (fewer only at EOS, a --stop string or the context limit)."
GenerateSeedHelp = ("Random seed for sampling: the same seed gives the same text on every run, whatever the tree and "
                    "drafter (the same as --drafter none), because the i-th token is the target's own Gumbel-max draw "
                    "with noise fixed by (seed, i). Default: none, a fresh draw every run. (Under the Python API's "
                    "SamplingConfig(acceptance='rejection'), classic speculative sampling, a seed fixes the text only "
                    "for a fixed --tree and drafter.)")
GenerateChatHelp = "Apply the tokenizer's chat template (default when it has one) or feed the raw text."
GenerateAsJsonHelp = "Print exactly one JSON object (text, token ids, settings, stats) on stdout."


@app.command()
@_model_command(device_map=True)
@_bandit_command()
def generate(
    prompt: Optional[str] = typer.Argument(None, help=GeneratePromptHelp),
    prompt_file: Optional[str] = typer.Option(None, "--prompt-file", "-f", help=GeneratePromptFileHelp),
    system: Optional[str] = typer.Option(None, "--system", help="The chat template's system turn."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help=GenerateStopHelp),
    target: str = TargetOpt,
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help=DrafterHelp),
    lookup_global: bool = typer.Option(False, "--lookup-global", help=LookupGlobalHelp),
    cross_tokenizer: str = typer.Option("auto", "--cross-tokenizer", help=GenerateCrossTokenizerHelp),
    tree: str = typer.Option(DEFAULT_TREE, "--tree", help=TreeHelp),
    arms: Optional[str] = typer.Option(None, "--arms", help=GenerateArmsHelp),
    bandit: BanditArgs = BANDIT_OPTIONS,
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help=GenerateMaxNewTokensHelp),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default); > 0 samples, losslessly."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold (1 = off)."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k sampling (0 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help=GenerateSeedHelp),
    chat: bool = typer.Option(True, "--chat/--raw", help=GenerateChatHelp),
    model: ModelArgs = MODEL_OPTIONS,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print the text only: no stats, notes or status lines."),
    as_json: bool = typer.Option(False, "--json", help=GenerateAsJsonHelp),
) -> None:
    """Generate text with speculative decoding: the text on stdout, the stats on stderr."""
    with _errors():
        tree_plan = _tree_option(tree, arms, bandit)
        sampling = _sampling_options(temperature, top_p, top_k)
        _at_least("--max-new-tokens", max_new_tokens)
        _option("--cross-tokenizer", lambda: check_cross_tokenizer(cross_tokenizer))
        options = model.options()
        stop = _stop_strings(stop)
        _check_models(target, drafter=drafter)
        text = _read_prompt(prompt, prompt_file)
        _, err = consoles()
        say = (lambda m: None) if (quiet or as_json) else (lambda m: err.print(f"[dim]{m}[/]", soft_wrap=True))
        _check_drafter_tokenizer(target, drafter, cross_tokenizer, sampling, model.threads)
        pipe = _load_for_generate(target, drafter, options, cross_tokenizer, lookup_global, say, model.threads)
        for note in _run_notes(tree_plan, pipe.drafter, sampling, seed):
            say(f"note: {note}")
        kw = dict(max_new_tokens=max_new_tokens, tree=tree_plan, sampling=sampling, seed=seed, chat=chat,
                  system=system, stop=stop)
        if model.compile:  # compilation happens here, outside the timed generation
            pipe.generate(text, **{**kw, "max_new_tokens": min(8, max_new_tokens), "stop": []})
        result = _run_generation(pipe, text, kw, stream=not as_json)
    if as_json:
        print(json.dumps(_json_record(result, target, tree, sampling, seed, max_new_tokens, system, stop)))
        return
    print(flush=True)  # the streamed text's final newline
    if not quiet:
        err.print(stats_table(result.stats))
        if "arms" in result.stats.policy_report:
            err.print(arms_table(result.stats.policy_report["arms"], f"tree arms: {result.stats.tree_policy}",
                                 reward=bandit.reward))


def _check_drafter_tokenizer(target: str, drafter: str | None, cross_tokenizer: str, sampling: SamplingConfig,
                             threads: int | None) -> None:
    """Where the drafter's tokenizer decides whether it can run (sampling, --cross-tokenizer on/off), read the two
    tokenizers before any model loads."""
    if not sampling.greedy or cross_tokenizer != "auto":
        _quiet_libraries(threads)
        from .loading.pipeline import check_drafter_for

        _option("--drafter", lambda: check_drafter_for(target, drafter, cross_tokenizer, sampling))


def _load_for_generate(target: str, drafter: str | None, options: ModelOptions, cross_tokenizer: str,
                       lookup_global: bool, say, threads: int | None = None):
    say(f"loading {target} ...")
    _quiet_libraries(threads)
    from .loading.models import default_drafter
    from .loading.pipeline import load_pipeline

    pipe = load_pipeline(target, drafter, options, cross_tokenizer, lookup_global)
    say(f"loaded {target} ({pipe.target.optimized}) with drafter {pipe.drafter.name}")
    if drafter is None and default_drafter(target) == "none":
        say(f"hint: no shipped drafter for '{target}'; decoding without one (pass --drafter NAME to speculate)")
    return pipe


def _run_generation(pipe, text: str, kw: dict, stream: bool):
    if not stream:
        return pipe.generate(text, **kw)
    out = Streamer()
    pieces = pipe.stream(text, **kw)
    for piece in pieces:
        out(piece)
    return pieces.result


def _json_record(result, target: str, tree: str, sampling: SamplingConfig, seed, max_new_tokens: int,
                 system: str | None, stop) -> dict:
    """Everything needed to reproduce the run, and what it gave (``tree``: ``none`` when no drafter ran)."""
    tree = "none" if result.stats.drafter == "none" else tree
    return {"target": target, "drafter": result.stats.drafter, "tree": tree, "max_new_tokens": max_new_tokens,
            "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                         "seed": seed}, "system": system, "stop": stop or [], "prompt_tokens": len(result.prompt_ids),
            "text": result.text, "new_token_ids": result.new_token_ids, "stats": result.stats.as_dict()}


def _run_notes(plan, drafter, sampling: SamplingConfig, seed: int | None) -> list[str]:
    """What a user should know about this run before it starts: sampling options that do nothing, what --tree auto
    will do."""
    from .core.drafter import ReportsRanks

    notes = []
    if sampling.greedy and (sampling.top_p != 1.0 or sampling.top_k != 0 or seed is not None):
        notes.append("--top-p, --top-k and --seed shape sampling; with --temperature 0 decoding is greedy")
    if not hasattr(plan, "arms"):
        return notes
    if drafter.name == "none":
        return [*notes, "--tree auto has nothing to choose without a drafter: plain decoding"]
    if plan.wants_ranks and (not sampling.greedy or not isinstance(drafter, ReportsRanks)):
        why = "sampling" if not sampling.greedy else "a drafter that does not report ranks (e.g. another tokenizer)"
        notes.append(f"the replayed reward needs greedy decoding with the target's tokenizer; with {why} each arm "
                     f"is judged on its own rounds (as --reward measured)")
    if not any(a.pulls for a in plan.arms):
        notes.append(f"the bandit starts cold: it tries each of the {len(plan.arms)} arms {plan.first_tries}x first; "
                     f"for short generations warm-start it from `mambaspec tune` (--arms runs/tune/tuned_arms.yaml)")
    return notes


@app.command()
def models() -> None:
    """List the known model names and whether each is available on this machine."""
    from rich.table import Table

    with _errors():
        from .loading.models import availability, registry

        entries = registry()
    t = Table(title="known models", header_style="bold")
    for col in ("name", "role", "hub id", "available here"):
        t.add_column(col)
    for e in entries.values():
        t.add_row(e.name, e.role, e.hub_id or "-", availability(e))
    consoles()[0].print(t)


def _methods(text: str | None) -> list[str] | None:
    return None if text is None else [m.strip() for m in text.split(",") if m.strip()]


BenchDatasetHelp = ("humaneval (offline), gsm8k, mt-bench, alpaca, xsum, cnn-dm, longbench (hub, or --data), or jsonl "
                    "(--data FILE of {\"prompt\": ...} lines). See recipes/datasets.yaml.")
BenchDataHelp = ("A local .jsonl/.jsonl.gz/.json/.parquet file with the dataset's fields: replaces its source (offline "
                 "use).")
BenchMethodsHelp = ("Comma-separated: ar, mamba, mamba-auto, mamba-dynamic, lookup, mamba+lookup, "
                    "mamba+lookup-dynamic, transformer, eagle, hf-assisted, prompt-lookup. Default: all whose drafter "
                    "is available. ar (plain decoding, the reference of speed-ups and outputs) always runs first.")
BenchDrafterHelp = "Mamba drafter for `mamba` (default: the target's, e.g. mamba2-smollm2; `none` = skip)."
BenchTransformerDrafterHelp = ("Transformer drafter for `transformer` and `hf-assisted` (default: the target's, e.g. "
                               "llama-smollm2; `none` = skip).")
BenchEagleDrafterHelp = "EAGLE head for `eagle` (default: the target's, e.g. eagle-smollm2; `none` = skip)."
BenchTreeHelp = (f"The tree of our loop's fixed-tree methods (mamba, lookup, mamba+lookup, transformer, eagle): a "
                 f"shape N1,...,Nγ, `dynamic` or `auto`. Its default ({BENCH_TREE}) differs from generate's "
                 f"({DEFAULT_TREE}) on purpose: the tree methods run one small fixed shape (on a CPU every verified "
                 f"node costs); dynamic trees are their own method, mamba-dynamic.")
BenchLookupGlobalHelp = "Our lookup drafters also index the outputs of the earlier prompts of a row."
BenchArmsHelp = "mamba-auto's arms file (default recipes/trees.yaml; a tuned_arms.yaml from `tune` warm-starts it)."
BenchEdgesHelp = "mamba-auto (replayed reward): " + EdgesHelp[0].lower() + EdgesHelp[1:]
BenchMaxNewTokensHelp = "Tokens to generate per prompt (fewer only at EOS)."
BenchTemperatureHelp = "0 = greedy (default; outputs are checked against ar's); > 0 samples."
BenchLengthsHelp = ("Exact prompt lengths in target tokens, e.g. 1k,2k,4k,8k (k = 1000): the context is cut in the "
                    "middle, the question kept.")
BenchOutDirHelp = "Output folder: results.csv (rerun to resume), outputs.jsonl, plots."
BenchPlotHelp = "Write PNGs of throughput and memory (needs matplotlib: the `plot` extra)."
BenchPromptLookupTokensHelp = "prompt_lookup_num_tokens for `prompt-lookup`."


@app.command()
@_model_command()
def bench(
    dataset: str = typer.Argument(..., help=BenchDatasetHelp),
    data: Optional[str] = typer.Option(None, "--data", help=BenchDataHelp),
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help=BenchMethodsHelp),
    target: str = TargetOpt,
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help=BenchDrafterHelp),
    transformer_drafter: Optional[str] = typer.Option(None, "--transformer-drafter", help=BenchTransformerDrafterHelp),
    eagle_drafter: Optional[str] = typer.Option(None, "--eagle-drafter", help=BenchEagleDrafterHelp),
    tree: str = typer.Option(BENCH_TREE, "--tree", help=BenchTreeHelp),
    lookup_global: bool = typer.Option(False, "--lookup-global", help=BenchLookupGlobalHelp),
    arms: Optional[str] = typer.Option(None, "--arms", help=BenchArmsHelp),
    ucb_c: float = typer.Option(DEFAULT_C, "--ucb-c", help="mamba-auto's UCB exploration constant."),
    edges: str = typer.Option(EDGES, "--confidence-buckets", help=BenchEdgesHelp),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help=BenchMaxNewTokensHelp),
    temperature: float = typer.Option(0.0, "--temperature", help=BenchTemperatureHelp),
    limit: Optional[int] = typer.Option(None, "--limit", help="Prompts per dataset and length (default: all)."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help=BenchLengthsHelp),
    model: ModelArgs = MODEL_OPTIONS,
    out_dir: str = typer.Option("runs/bench", "--out", help=BenchOutDirHelp),
    plot: bool = typer.Option(False, "--plot", help=BenchPlotHelp),
    prompt_lookup_tokens: int = typer.Option(10, "--prompt-lookup-tokens", help=BenchPromptLookupTokensHelp),
    seed: int = typer.Option(0, "--seed", help="Base seed for sampling (prompt i uses seed + i)."),
) -> None:
    """Benchmark drafters, peers and plain decoding side by side: throughput, acceptance length, memory."""
    with _errors(f"interrupted: finished rows are in {out_dir}/results.csv; rerun the same command to resume"):
        options = model.options()
        _at_least("--max-new-tokens", max_new_tokens)
        _at_least("--limit", limit)
        _sampling_options(temperature)
        _option("--tree", lambda: policy_name(tree) or TreeShape.parse(tree))
        BanditArgs(c=ucb_c, edges=edges).check()
        from .bench.datasets import parse_lengths

        parsed = _option("--lengths", lambda: parse_lengths(lengths)) if lengths else None
        _check_models(target, drafter=drafter, transformer_drafter=transformer_drafter, eagle_drafter=eagle_drafter)
        _quiet_libraries(model.threads)
        from .bench.report import results_tables
        from .bench.runner import BenchConfig, run_bench

        cfg = BenchConfig(dataset=dataset, data=data, methods=_methods(methods), target=target, drafter=drafter,
                          transformer_drafter=transformer_drafter, eagle_drafter=eagle_drafter, tree=tree, arms=arms,
                          ucb_c=ucb_c,
                          confidence_buckets=edges, max_new_tokens=max_new_tokens, temperature=temperature,
                          limit=limit, lengths=parsed, options=options, out=out_dir, plot=plot,
                          prompt_lookup_tokens=prompt_lookup_tokens, lookup_global=lookup_global, seed=seed)
        out, err = consoles()
        with Reporter(err) as report:
            result = run_bench(cfg, on_progress=report.update, log=report.status)
    for table in results_tables(result.rows):
        out.print(table)
    out.print(f"results: {result.csv_path} ({len(result.rows)} rows, {result.resumed} resumed); "
              f"outputs: {result.outputs_path}", soft_wrap=True)
    for path in result.plots:
        out.print(f"plot: {path}", soft_wrap=True)


@app.command()
@_model_command()
@_bandit_command()
def tune(
    arms: Optional[str] = typer.Option(None, "--arms", help="Arms YAML: named tree shapes (default "
                                                            "recipes/trees.yaml). A tuned_arms.yaml from an earlier "
                                                            "run warm-starts the bandit."),
    dataset: str = typer.Option("humaneval", "--dataset", help="Prompt source, as for bench: humaneval (offline), "
                                                               "gsm8k, mt-bench, ... or jsonl with --data."),
    data: Optional[str] = typer.Option(None, "--data", help="A local .jsonl/.jsonl.gz/.json/.parquet file with the "
                                                            "dataset's fields (offline use)."),
    limit: Optional[int] = typer.Option(20, "--limit", help="Number of prompts."),
    target: str = TargetOpt,
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d",
                                          help="Drafter. Default: generate's for --policy dynamic (e.g. "
                                               "mamba2-smollm2+lookup), the target's model drafter for tree shapes "
                                               "(e.g. mamba2-smollm2)."),
    policy: str = typer.Option("ucb", "--policy", help="ucb: one bandit across all prompts (it learns the workload). "
                                                       "fixed: every arm on every prompt (a sweep, the reference). "
                                                       "dynamic: dynamic trees across the prompts, as generate runs "
                                                       "them (what they drafted, predicted vs measured; the measured "
                                                       "costs are kept for generate)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Stop the bandit after this many rounds in all (ucb)."),
    bandit: BanditArgs = BANDIT_OPTIONS,
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Tokens to generate per prompt."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; > 0 samples."),
    model: ModelArgs = MODEL_OPTIONS,
    out_dir: str = typer.Option("runs/tune", "--out", help="Output folder: arms.csv and tuned_arms.yaml (written after "
                                                           "every prompt)."),
) -> None:
    """Find the tree shape that pays on a workload and this hardware (UCB bandit or a fixed sweep)."""
    with _errors(f"interrupted: the statistics so far are in {out_dir}/tuned_arms.yaml; rerun with "
                 f"--arms {out_dir}/tuned_arms.yaml to continue from them"):
        from .bench.tune import check_policy

        _option("--policy", lambda: check_policy(policy))
        bandit.check()
        for flag, value in (("--limit", limit), ("--rounds", rounds), ("--max-new-tokens", max_new_tokens)):
            _at_least(flag, value)
        _sampling_options(temperature)
        options = model.options()
        _check_models(target, drafter=drafter)
        _quiet_libraries(model.threads)
        from .bench.tune import tune_dataset

        out, err = consoles()
        with Reporter(err, unit="runs (arm x prompt)" if policy == "fixed" else "prompts") as report:
            result, _, _ = tune_dataset(
                arms, dataset=dataset, data=data, limit=limit, target=target, drafter=drafter, policy=policy,
                rounds=rounds, c=bandit.c, reward=bandit.reward, edges=bandit.edges, max_new_tokens=max_new_tokens,
                temperature=temperature, options=options, out=out_dir,
                progress=lambda done, total: report.update(f"tune ({policy})", done, total), log=report.status)
    if result.summary:
        out.print(dynamic_table(result.summary))
    if result.best is not None:
        out.print(arms_table(result.rows(), f"tree arms ({result.policy})", best=result.best.name, reward=bandit.reward,
                             policy=result.policy))
    for line in [*_best_arm_lines(result), result.saved]:
        out.print(line, soft_wrap=True)


def _best_arm_lines(result) -> list[str]:
    """The best arm and why it is called best: ``fixed`` by what every arm measured on every prompt, ``ucb`` by the
    bandit's value, with a note where another arm's own rounds ran faster."""
    from .bench.tune import FIRM_PULLS

    best = result.best
    if best is None:
        return []
    overall = f"overall {result.tokens_per_s:.1f} tok/s (all prompts; prefill and exploration included)"
    if result.policy == "fixed":
        lines = [f"best arm: {best.name} {best.shape}, {best.tokens_per_s:.1f} tok/s over its rounds (every arm ran "
                 f"all {count(result.prompts, 'prompt')}); {overall}"]
    else:
        value = result.values[result.arms.index(best)]
        lines = [f"best arm by value: {best.name} {best.shape}, value {value:.1f}, its own rounds "
                 f"{best.tokens_per_s:.1f} tok/s; {overall}"]
        firm = [a for a in result.arms if a is not best and a.pulls >= min(FIRM_PULLS, best.pulls)]
        faster = max(firm, key=lambda a: a.tokens_per_s, default=None)
        if faster is not None and faster.tokens_per_s > 1.1 * best.tokens_per_s:
            lines.append(f"note: {faster.name}'s own rounds ran faster ({faster.tokens_per_s:.1f} tok/s over "
                         f"{count(faster.pulls, 'round')}); under the bandit each arm runs where and when it was "
                         f"chosen (other contexts, other moments of a busy machine), so own-round speeds are not like "
                         f"for like: `tune --policy fixed` runs every arm on every prompt")
    if best.pulls < FIRM_PULLS:
        lines.append(f"note: the best arm ran {count(best.pulls, 'round')}; a firm choice wants more "
                     f"(--limit, --max-new-tokens)")
    return lines


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MambaspecError(f"{flag} must be comma-separated integers like 1,2,4,8, got '{text}'") from None
    if not values or min(values) < 1:
        raise MambaspecError(f"{flag} needs positive integers, e.g. 1,2,4,8")
    return values


@app.command("verify-cost")
@_model_command()
def verify_cost_cmd(
    target: str = TargetOpt,
    prefix: str = typer.Option("512", "--prefix", help="Tokens already in the KV cache; several give a table by "
                                                       "context length, e.g. 500,2000,4000,8000."),
    nodes: str = typer.Option("1,2,4,6,8,16,32", "--nodes", help="Tree sizes to time (comma-separated; 1 = a plain "
                                                                 "step)."),
    repeats: int = typer.Option(10, "--repeats", help="Timings per size (the median is reported)."),
    model: ModelArgs = MODEL_OPTIONS,
    out_dir: str = typer.Option("runs/verify-cost", "--out",
                                help="Folder of verify_cost.csv (rows are appended, with their settings)."),
    save_costs: bool = typer.Option(True, "--save-costs/--no-save-costs",
                                    help="Also keep the engine's timings in the target's cost store "
                                         "($MAMBASPEC_COSTS), where `generate`'s dynamic trees start from."),
) -> None:
    """Time one verification forward by tree size and context (and the prefill of each context): the engine next to
    plain transformers, and the floor."""
    with _errors():
        sizes = _int_list("--nodes", nodes)
        prefixes = _int_list("--prefix", prefix)
        _at_least("--repeats", repeats)
        options = model.options()
        _check_models(target)
        _quiet_libraries(model.threads)
        from .bench.verify_cost import verify_cost

        out, err = consoles()
        with Reporter(err, unit="timings") as report:
            report.status(f"loading {target} ...")
            rows, settings, path = verify_cost(target, prefixes=prefixes, nodes=sizes, repeats=repeats,
                                               options=options, out=out_dir, save_costs=save_costs,
                                               progress=lambda d, n: report.update("verify-cost", d, n))
    out.print(verify_cost_table(rows, settings, target))
    out.print(f"appended to {path}", soft_wrap=True)


def verify_cost_table(rows, settings: dict, target: str):
    from rich.table import Table

    t = Table(title=f"verification forward, {target}, {settings['dtype']}, "
                    f"{count(int(settings['threads']), 'thread')}; engine: "
                    f"{settings['engine_options']}; floor at {settings['matmul_gflops']} GFLOP/s", header_style="bold",
              caption="engine / 1 token: over the engine's own one-token step at that prefix (plain decoding in our "
                      "loop); floor: that step plus the extra rows' attention arithmetic at the matmul rate")
    for col in ("prefix", "nodes", "engine ms", "engine / 1 token", "floor ms", "plain transformers ms",
                "plain / 1 token", "prefill s: engine", "plain"):
        t.add_column(col, justify="right")
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1].prefix != r.prefix  # the prefill, once per prefix
        t.add_row(str(r.prefix), str(r.nodes), f"{r.engine_ms:.1f}", f"{r.engine_ratio:.2f}", f"{r.floor_ms:.1f}",
                  f"{r.plain_ms:.1f}", f"{r.plain_ratio:.2f}", f"{r.engine_prefill_s:.2f}" if first else "",
                  f"{r.plain_prefill_s:.2f}" if first else "")
    return t


PretrainTargetHelp = "Target whose tokenizer the drafter speaks; also the teacher for distillation."
PretrainArchHelp = ("mamba2, mamba, llama (the Transformer baseline) or eagle (a head over the target's hidden states; "
                    "see recipes/drafters/eagle-smollm2-long.yaml). Default: the recipe's.")
PretrainRecipeHelp = ("Recipe YAML (model size, schedule, data). Default: recipes/drafters/mamba2-smollm2-long.yaml, "
                      "the shipped drafter's first stage (hours on a CPU: data made by the target, then 6,000 steps; "
                      "its second, recipes/drafters/broad-v2-274/mamba2.yaml, fine-tunes it); "
                      "recipes/drafters/quickstart.yaml runs in minutes. The plan and its rough times are printed "
                      "first.")
PretrainDataHelp = "Extra training text: .txt/.md/.py/.rst/.jsonl/.parquet files or folders (repeatable)."
PretrainOutDirHelp = ("Output folder (checkpoints, metrics.csv, the model, eval.json, README.md). Default: "
                      "runs/ARCH-TARGET.")
PretrainDataOnlyHelp = "Only make the recipe's distillation data sets (resumable), then stop."
PretrainInitFromHelp = ("Start from this drafter's weights (a shipped name or a pretrain-drafter --out folder of the "
                        "same arch and sizes): overrides the recipe's init_from, e.g. to fine-tune one you trained.")


def _check_init_from(name: str, flag: str) -> None:
    from .training.loop import init_meta

    try:
        init_meta(name)
    except MambaspecError as e:
        raise MambaspecError(f"{flag}: {str(e).removeprefix('init_from: ')}") from None


@app.command("pretrain-drafter")
def pretrain_drafter(
    target: str = typer.Option(DEFAULT_TARGET, "--target", "-t", help=PretrainTargetHelp),
    arch: Optional[str] = typer.Option(None, "--arch", help=PretrainArchHelp),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=PretrainRecipeHelp),
    data: Optional[list[str]] = typer.Option(None, "--data", help=PretrainDataHelp),
    out_dir_opt: Optional[str] = typer.Option(None, "--out", help=PretrainOutDirHelp),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override the recipe's number of steps."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help=PretrainInitFromHelp),
    data_only: bool = typer.Option(False, "--data-only", help=PretrainDataOnlyHelp),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate on held-out prompts at the end."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Train a drafter for a target's tokenizer (LM pretraining + distillation from the target)."""
    with _errors("interrupted: the last checkpoint and the data made so far (finished data shards, token caches) are "
                 "kept; rerun the same command with --resume to continue" if not data_only else
                 "interrupted: the finished data shards are kept; rerun the same command to continue"):
        from dataclasses import replace

        from .config import recipes_dir
        from .training.recipe import ARCHS, DrafterRecipe

        if arch is not None and arch not in ARCHS:
            raise MambaspecError(f"--arch: unknown arch '{arch}'; use one of {', '.join(ARCHS)}")
        _at_least("--steps", steps)
        recipe_path = recipe or recipes_dir() / "drafters" / "mamba2-smollm2-long.yaml"
        r = DrafterRecipe.load(recipe_path)
        r = replace(r, **{k: v for k, v in (("arch", arch), ("steps", steps), ("init_from", init_from))
                          if v is not None})
        r.validate(str(recipe_path))
        if r.init_from and not data_only:  # before hours of data-making, not after
            _check_init_from(r.init_from, "--init-from" if init_from else "init_from")
        out_dir = out_dir_opt or f"runs/{r.arch}-{target.replace('/', '_')}"
        _check_models(target)
        _quiet_libraries(threads)
        from .training.plan import describe_run

        out, err = consoles()
        with Reporter(err, unit="steps") as report:
            for line in describe_run(r, target, out_dir, resume=resume, data_only=data_only):
                report.status(line)
            if recipe is None and not data_only:
                report.status("for a first run of a few minutes: --recipe recipes/drafters/quickstart.yaml")
            if data_only:
                from .training.datagen import make_recipe_data

                for folder in make_recipe_data(r, target, device, log=report.status):
                    out.print(f"data set ready: {folder}", soft_wrap=True)
                return
            from .training.loop import train_drafter

            result = train_drafter(r, target, out_dir, extra_data=data or [], resume=resume, device=device,
                                   evaluate=evaluate, log=report.status,
                                   progress=lambda done, total, info: report.update(
                                       "training", done, total, loss=f"{info['loss']:.3f}",
                                       tok_s=f"{info['tok_s']:.0f}") if report.live or done % 10 == 0 else None)
    out.print(f"drafter written to {result.out} ({result.steps} steps, {result.wall_s / 60:.1f} min)")
    if result.eval:
        out.print(json.dumps(result.eval, indent=1))


@app.command()
@_model_command(device_map=True)
@_bandit_command()
def serve(
    target: str = TargetOpt,
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d",
                                          help=DrafterHelp + " A request may send `\"drafter\": \"none\"` (plain "
                                                             "decoding), `lookup`, or this one."),
    lookup_global: bool = typer.Option(False, "--lookup-global", help=LookupGlobalHelp),
    cross_tokenizer: str = typer.Option("auto", "--cross-tokenizer",
                                        help="A drafter with another tokenizer: auto (translate through text when they "
                                             "differ, greedy only), on, or off (refuse it)."),
    tree: str = typer.Option(DEFAULT_TREE, "--tree", help=TreeHelp + " The default of requests that send no `tree`."),
    arms: Optional[str] = typer.Option(None, "--arms", help="With --tree auto: the arms file (default "
                                                            "recipes/trees.yaml)."),
    bandit: BanditArgs = BANDIT_OPTIONS,
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n",
                                       help="max_tokens of a request that sends none (capped at the context)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface, e.g. behind "
                                                         "a load balancer)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port, printed at start)."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                    help="The model id clients send and /v1/models lists (default: "
                                                         "--target)."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests that may wait for the engine; more get HTTP 429 "
                                                          "(retry, or another replica)."),
    model: ModelArgs = MODEL_OPTIONS,
) -> None:
    """Serve the speculative engine behind an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,
    /v1/models, /health, /metrics); one generation at a time, requests in arrival order. Needs the `serve` extra."""
    with _errors():
        from .serve import check_installed

        tree_plan = _tree_option(tree, arms, bandit)
        _at_least("--max-new-tokens", max_new_tokens)
        _at_least("--max-queue", max_queue)
        _at_least("--port", port, low=0)
        _option("--cross-tokenizer", lambda: check_cross_tokenizer(cross_tokenizer))
        options = model.options()
        _check_models(target, drafter=drafter)
        check_installed()
        from .serve.app import bind, make_app, make_server, url

        sock = bind(host, port)
        _, err = consoles()
        say = lambda m: err.print(f"[dim]{m}[/]", soft_wrap=True)  # noqa: E731
        pipe = _load_for_generate(target, drafter, options, cross_tokenizer, lookup_global, say, model.threads)
        if model.compile:  # compilation happens here, before the first request
            pipe.generate("Hello", max_new_tokens=8, tree=tree_plan)
        name = served_model_name or target
        server = make_server(make_app(pipe, name, tree=tree_plan, max_tokens=max_new_tokens, max_queue=max_queue))
        say(f"serving '{name}' at {url(sock)}/v1 (OpenAI-compatible; one generation at a time, requests in order; "
            f"GET /metrics for Prometheus)")
        server.run(sockets=[sock])


def main() -> None:
    app()
