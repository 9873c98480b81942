"""The GPU check: lossless on CUDA, the decode step's speed against transformers' own generate (issue 24).

Run on a GPU machine by ``scripts/gpu_check.sh`` (which installs the project and brings the offline target). The
phases run in this order, the cheap decisive ones first, each in its own process under its own time cap (so one slow
phase cannot eat the others); each writes its results under ``--out`` as soon as it has them, and its wall time and
exit status go to ``phases.csv``:

a. ``lossless``: float32, the first N HumanEval prompts, a subset of drafters x fixed/dynamic trees, each output
   against transformers' greedy ``generate`` (lossless.csv); bfloat16 plain decoding against transformers', with the
   logit margin at any difference.
b. ``step``: ms per token of plain greedy decoding, bfloat16: our loop with CUDA graphs / eager, transformers'
   ``generate`` with its dynamic and its static cache (step.csv).
c. ``verify``: ms of one verification forward through the graphs at 1..64 nodes after 500 and 4,000 cached tokens
   (verify.csv).
d. ``bench``: ``mambaspec bench humaneval --limit 5`` with our fast methods (bench_results.csv), then
   ``bench_slow``: the Transformer and EAGLE drafters, transformers' assisted generation and prompt lookup, with ar
   again as their reference (bench_slow_results.csv).
e. ``profile``: torch.profiler over one speculative round (default tree, Mamba drafter): the top 20 ops by CUDA
   time (profile.txt).
f. ``compiled``: transformers' static-cache ``generate`` as it compiles itself on CUDA (added to step.csv; last, as
   its compilation may not finish in the cap; in (b) its static-cache row runs with ``disable_compile``).

``--device cpu --quick`` is the dry run: every phase on the CPU at tiny sizes (the test suite runs it with tiny
models, ``tests/test_gpu_check.py``), so the script cannot rot between the sessions that have a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

# phase -> time cap in seconds on the GPU (the sum, ~8 minutes at most, leaves room for the install and the GGUF)
PHASES = {"lossless": 100, "step": 50, "verify": 40, "bench": 80, "bench_slow": 80, "profile": 30, "compiled": 60}
QUICK_CAP = 240  # each phase's cap in the CPU dry run
# bench in two runs, so that a cut in the slow methods (5-11 s a prompt on the H200 before) keeps the fast ones' rows
BENCH_METHODS = "ar,mamba,mamba-dynamic,lookup,mamba+lookup-dynamic"
BENCH_SLOW_METHODS = "ar,transformer,eagle,hf-assisted,prompt-lookup"
ARGS = argparse.Namespace()


def _device() -> str:
    return ARGS.device


def _sync() -> None:
    if _device() == "cuda":
        torch.cuda.synchronize()


def _write(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _read(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def _prompts(tokenizer, n: int) -> list[list[int]]:
    from mambaspec.bench.datasets import build_prompts, dataset_spec, load_rows

    spec = dataset_spec("humaneval")
    prompts, _ = build_prompts(spec, load_rows(spec, None), tokenizer, length=None, max_tokens=4000, limit=n)
    return [p.ids[-ARGS.prompt_tokens:] if ARGS.quick else p.ids for p in prompts]


def _hf_greedy(model, ids: list[int], new: int, eos: list[int], **kw) -> list[int]:
    x = torch.tensor([ids], device=model.device)
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, do_sample=False, eos_token_id=eos,
                         pad_token_id=eos[0], **kw)
    return out[0, len(ids):].tolist()


def _margin(model, ids: list[int], a: list[int], b: list[int]) -> tuple[int, float]:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if at >= min(len(a), len(b)):
        return at, float("nan")
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids + a[:at]], device=model.device), use_cache=False).logits[0, -1]
    return at, abs(float(logits[a[at]].float() - logits[b[at]].float()))


def _options(dtype: str, **kw):
    from mambaspec import ModelOptions

    return ModelOptions(device=_device(), dtype=dtype, **kw)


def _generator(model, drafter, tok, eos=None, **kw):
    from mambaspec.core.engine import SpeculativeGenerator

    if _device() != "cuda":  # the dry run: the static cache's padded path, eagerly
        kw.setdefault("static_kv", True)
    return SpeculativeGenerator(model, drafter, tokenizer=tok, eos_token_ids=eos, **kw)


def _tree(name: str):
    """A tree name as the engine takes it (a policy object, where the engine no longer resolves names)."""
    try:
        from mambaspec.loading.trees import resolve_tree
    except ImportError:
        return name
    return resolve_tree(name)


def _gpu_steps(drafter):
    """In the dry run, a Mamba drafter's steps through the padded batches a GPU replays from CUDA graphs (eagerly)."""
    from mambaspec.drafters.mamba import MambaDrafter
    from mambaspec.drafters.mamba_step import BatchedStep

    inner = getattr(drafter, "model", None)
    for d in (drafter, inner):
        if isinstance(d, MambaDrafter) and _device() != "cuda":
            d._step = BatchedStep(d.model, graphs=False)
    return drafter


def _lossless_rows(dtype: str, plan: list[tuple[str, str]], n_prompts: int) -> list[dict]:
    from mambaspec import load_pipeline
    from mambaspec.loading.pipeline import load_drafter

    pipe = load_pipeline(ARGS.target, "none", _options(dtype))
    model, tok = pipe.target.model, pipe.target.tokenizer
    eos = sorted(pipe.generator.eos_token_ids)
    prompts = _prompts(tok, n_prompts)
    refs = [_hf_greedy(model, p, ARGS.new, eos) for p in prompts]
    plain = None
    rows, drafters = [], {}
    for name, tree in plan:
        if name not in drafters:
            drafters[name] = None if name == "none" else _gpu_steps(load_drafter(name, pipe.target))
        gen = _generator(model, drafters[name], tok, eos)
        t0 = time.perf_counter()
        ours = [gen.generate(p, ARGS.new, tree=_tree(tree if tree != "-" else "1")) for p in prompts]
        secs = time.perf_counter() - t0
        ids = [r.new_token_ids for r in ours]
        plain = ids if name == "none" else plain
        diff_ref = [i for i, (a, b) in enumerate(zip(ids, refs)) if a != b]
        margins = [_margin(model, prompts[i], ids[i], refs[i]) for i in diff_ref]
        rows.append({"dtype": dtype, "drafter": name, "tree": tree, "prompts": len(prompts),
                     "same_as_transformers": len(prompts) - len(diff_ref),
                     "same_as_our_plain": "" if plain is None else sum(a == b for a, b in zip(ids, plain)),
                     "margins_at_difference": ";".join(f"{i}@{a}:{m:.4f}" for i, (a, m) in zip(diff_ref, margins)),
                     "tok_per_s": round(sum(len(x) for x in ids) / secs, 1),
                     "mean_accept_len": round(sum(r.stats.mean_accept_len for r in ours) / len(ours), 3),
                     "graphs": bool(gen.static_cache is not None and gen.static_cache.graphs),
                     "static_cache": gen.static_cache is not None})
        print(rows[-1], flush=True)
        yield rows[-1]


def lossless(out: Path) -> None:
    """(a) float32: every output against transformers' greedy generate; bfloat16: plain decoding only."""
    m, t = ARGS.mamba_drafter, ARGS.transformer_drafter
    plan = [("none", "-"), (m, "2,1,1"), (m, "dynamic"), ("lookup", "2,1,1"), (f"{m}+lookup", "dynamic"),
            (t, "dynamic")]
    if ARGS.eagle_drafter != "none":
        plan.append((ARGS.eagle_drafter, "2,1,1"))
    rows: list[dict] = []
    for row in _lossless_rows("float32", plan, ARGS.prompts):
        rows.append(row)
        _write(out / "lossless.csv", rows)
    for row in _lossless_rows("bfloat16", [("none", "-")], ARGS.prompts):
        rows.append(row)
        _write(out / "lossless.csv", rows)
    assert all(int(r["same_as_transformers"]) == r["prompts"] for r in rows if r["dtype"] == "float32"), \
        "float32 output differs from transformers' greedy generate"


def _timed(rows: list[dict], path: Path, label: str, fn) -> None:
    try:
        fn()  # warm-up (graph capture, compilation)
        _sync()
        t0 = time.perf_counter()
        got = fn()
        _sync()
        secs = time.perf_counter() - t0
        rows.append({"variant": label, "new_tokens": len(got), "ms_per_token": round(1000 * secs / len(got), 3),
                     "tokens_per_s": round(len(got) / secs, 1), "first_tokens": got[:8]})
    except Exception as err:  # noqa: BLE001 - a variant that fails is reported, the others still run
        rows.append({"variant": label, "error": f"{err.__class__.__name__}: {str(err)[:300]}"})
    print(rows[-1], flush=True)
    _write(path, rows)


def step(out: Path, compiled: bool = False) -> None:
    """(b) ms per token of plain greedy decoding: ours (graphs, eager) against transformers' generate. The same
    number of new tokens for every variant (EOS ignored), so the prefill weighs the same."""
    from mambaspec.loading.models import load_model

    dtype = "bfloat16" if _device() == "cuda" else "float32"
    new = 128 if not ARGS.quick else 16
    target = load_model(ARGS.target, _options(dtype))
    model, tok = target.model, target.tokenizer
    ids = _prompts(tok, 1)[0][:200]
    never = [tok.eos_token_id]  # with min_new_tokens: every variant generates exactly `new` tokens
    rows = _read(out / "step.csv")
    plain = load_model(ARGS.target, _options(dtype, linear="torch"), role="plain").model
    if not compiled:
        for label, kw in (("ours: static cache + CUDA graphs", {}),
                          ("ours: static cache, eager", {"cuda_graphs": False})):
            gen = _generator(model, None, tok, [], **kw)
            _timed(rows, out / "step.csv", label, lambda g=gen: g.generate(ids, new).new_token_ids)
        _timed(rows, out / "step.csv", "transformers generate (dynamic cache)",
               lambda: _hf_greedy(plain, ids, new, never, min_new_tokens=new))
        # on CUDA transformers compiles a static-cache generate by itself; here without, its compiled run is phase f
        _timed(rows, out / "step.csv", "transformers generate (static cache)",
               lambda: _hf_greedy(plain, ids, new, never, cache_implementation="static", min_new_tokens=new,
                                  disable_compile=True))
        return
    # transformers' own compilation of a static-cache generate (on CUDA by default: torch.compile of the forward,
    # its compile_config's mode); on the CPU it does not compile, so the dry run checks the rest of the phase
    label = "transformers generate (static cache, compiled)" + (" [dry run: not compiled]" if ARGS.quick else "")
    _timed(rows, out / "step.csv", label,
           lambda: _hf_greedy(plain, ids, new, never, cache_implementation="static", min_new_tokens=new))


def verify(out: Path) -> None:
    """(c) one verification forward (a chain of n nodes) through the graphs, by node count and context."""
    from mambaspec.core.kv import forward_chain, forward_tree, keep_slots
    from mambaspec.core.static import BUCKETS, StaticKVCache
    from mambaspec.loading.models import load_model

    on_gpu = _device() == "cuda"
    model = load_model(ARGS.target, _options("bfloat16" if on_gpu else "float32")).model
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = []
    g = torch.Generator().manual_seed(0)
    prefixes, nodes = ((500, 4000), BUCKETS) if on_gpu else ((40, 100), (1, 4, 16, 64))
    for prefix in prefixes:
        cache = StaticKVCache(prefix + 2 * BUCKETS[-1], graphs=on_gpu)
        ids = torch.randint(0, vocab, (prefix + 64,), generator=g).tolist()
        forward_chain(model, cache, ids[:prefix])
        for n in nodes:
            def once() -> None:
                forward_tree(model, cache, ids[prefix:prefix + n], list(range(prefix, prefix + n)),
                             torch.ones(n, n, dtype=torch.bool).tril())
                keep_slots(cache, prefix, [])
            for _ in range(3):
                once()
            _sync()
            times = []
            for _ in range(30 if on_gpu else 3):
                t0 = time.perf_counter()
                once()
                _sync()
                times.append(time.perf_counter() - t0)
            times.sort()
            rows.append({"prefix": prefix, "nodes": n, "ms_median": round(1000 * times[len(times) // 2], 3),
                         "ms_min": round(1000 * times[0], 3)})
            one = next(r["ms_median"] for r in rows if r["prefix"] == prefix and r["nodes"] == 1)
            rows[-1]["over_1_node"] = round(rows[-1]["ms_median"] / one, 3)
            print(rows[-1], flush=True)
            _write(out / "verify.csv", rows)


def bench(out: Path, slow: bool = False) -> None:
    """(d) the project's own bench command, the fast methods (or the slow ones), into OUT/NAME/ (its rows are written
    method by method; run_all copies its results.csv to OUT/NAME_results.csv, what it has even after a cut)."""
    name = "bench_slow" if slow else "bench"
    folder = out / name
    methods = ARGS.slow_methods if slow else ARGS.methods
    cmd = [sys.executable, "-m", "mambaspec", "bench", "humaneval", "--limit", str(ARGS.bench_limit), "-n",
           str(ARGS.new if ARGS.quick else 96), "--device", _device(), "--methods", methods, "--out", str(folder),
           "--target", ARGS.target, "--drafter", ARGS.mamba_drafter, "--transformer-drafter",
           ARGS.transformer_drafter, "--eagle-drafter", ARGS.eagle_drafter]
    if ARGS.quick:
        cmd += ["--threads", "1"]
    subprocess.run(cmd, check=True)  # run_all copies its results.csv out, also after a cut


def profile(out: Path) -> None:
    """(e) torch.profiler over one speculative round (after a warm-up): the top 20 ops by device time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from mambaspec import load_pipeline

    on_gpu = _device() == "cuda"
    pipe = load_pipeline(ARGS.target, ARGS.mamba_drafter, _options("bfloat16" if on_gpu else "float32"))
    gen = _generator(pipe.target.model, pipe.drafter, pipe.target.tokenizer, [])
    ids = _prompts(pipe.target.tokenizer, 1)[0]
    rounds = gen.stream(ids, 64, tree=_tree("2,1,1"))
    for _ in range(4):  # warm-up: prefill, graph capture of the buckets this tree uses
        next(rounds)
    _sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with torch_profile(activities=activities) as prof:
        t0 = time.perf_counter()
        next(rounds)
        _sync()
        secs = time.perf_counter() - t0
    key = "cuda_time_total" if on_gpu else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=20)
    (out / "profile.txt").write_text(f"one round of {ARGS.target} + {ARGS.mamba_drafter}, tree 2,1,1, "
                                     f"{1000 * secs:.2f} ms wall (under the profiler), sorted by {key}\n\n{table}\n")
    print(table, flush=True)


def run_phase(name: str, out: Path) -> None:
    {"lossless": lossless, "step": step, "verify": verify, "bench": bench, "bench_slow": lambda o: bench(o, slow=True),
     "profile": profile,
     "compiled": lambda o: step(o, compiled=True)}[name](out)


def run_all(out: Path, argv: list[str]) -> int:
    """Every phase in its own process under its cap; phases.csv: name, cap, wall time, status."""
    rows, failed = [], 0
    for name in ARGS.phases.split(","):
        cap = QUICK_CAP if ARGS.quick else PHASES[name]
        print(f"== {name} (cap {cap} s)", flush=True)
        t0 = time.perf_counter()
        # a session of its own: at the cap the whole group goes (bench's own process too, which would otherwise
        # go on on the GPU under the next phases' timings)
        proc = subprocess.Popen([sys.executable, __file__, *argv, "--phase", name], start_new_session=True)
        try:
            rc = proc.wait(timeout=cap)
            status = "ok" if rc == 0 else f"exit {rc}"
        except subprocess.TimeoutExpired:
            status = "time cap"
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what the phase left running, if anything
        except ProcessLookupError:
            pass
        proc.wait()
        results = out / name / "results.csv"
        if results.exists():  # bench's rows so far
            (out / f"{name}_results.csv").write_bytes(results.read_bytes())
        failed += status != "ok"
        rows.append({"phase": name, "cap_s": cap, "wall_s": round(time.perf_counter() - t0, 1), "status": status})
        print(f"== {name}: {rows[-1]['wall_s']} s, {status}", flush=True)
        _write(out / "phases.csv", rows)
    return failed


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", default="runs/gpu")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--phase", default=None, help="run this one phase in this process (what run_all starts)")
    ap.add_argument("--device", default="cuda", help="cpu: the dry run of the script itself (no graphs)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (with --device cpu: the dry run)")
    ap.add_argument("--prompts", type=int, default=None, help="lossless: prompts (default 5; --quick 2)")
    ap.add_argument("--new", type=int, default=None, help="new tokens a prompt (default 64; --quick 12)")
    ap.add_argument("--prompt-tokens", type=int, default=48, help="--quick: prompts cut to their last N tokens")
    ap.add_argument("--bench-limit", type=int, default=None, help="bench prompts (default 5; --quick 1)")
    ap.add_argument("--methods", default=None, help=f"bench methods (default {BENCH_METHODS}; --quick fewer)")
    ap.add_argument("--slow-methods", default=None, help=f"bench_slow's (default {BENCH_SLOW_METHODS}; --quick fewer)")
    ap.add_argument("--target", default=os.environ.get("TARGET", "smollm2-135m"))
    ap.add_argument("--mamba-drafter", default="mamba2-smollm2")
    ap.add_argument("--transformer-drafter", default="llama-smollm2")
    ap.add_argument("--eagle-drafter", default="eagle-smollm2")
    args, argv = ap.parse_args(), sys.argv[1:]
    args.prompts = args.prompts or (2 if args.quick else 5)
    args.new = args.new or (12 if args.quick else 64)
    args.bench_limit = args.bench_limit or (1 if args.quick else 5)
    args.methods = args.methods or ("ar,mamba,mamba-dynamic,lookup" if args.quick else BENCH_METHODS)
    args.slow_methods = args.slow_methods or ("ar,hf-assisted" if args.quick else BENCH_SLOW_METHODS)
    ARGS = args
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.phase:
        if args.quick:
            torch.set_num_threads(1)
        try:
            run_phase(args.phase, out)
        except Exception:  # noqa: BLE001 - written down, and the exit status says so
            traceback.print_exc()
            (out / f"{args.phase}-error.txt").write_text(traceback.format_exc())
            sys.exit(1)
        return
    import transformers

    env = {"gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "torch": torch.__version__,
           "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "argv": argv}
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    print(env, flush=True)
    sys.exit(1 if run_all(out, argv) else 0)


if __name__ == "__main__":
    main()
