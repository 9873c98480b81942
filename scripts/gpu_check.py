"""The GPU check: lossless on CUDA, the decode step's speed, against transformers' own generate (issue 24).

Run on a GPU machine by ``scripts/gpu_check.sh`` (which installs the project and brings the offline target); every
part writes its results under ``--out`` as soon as it is done, so a part that fails or runs out of time loses only
itself. Parts (``--parts``, in this order):

- ``lossless``: float32 on CUDA, the first N HumanEval prompts, every drafter with a fixed and a dynamic tree, each
  output against transformers' greedy ``generate`` (lossless.csv); bfloat16 the same against our own plain
  decoding in bfloat16 and against transformers', with the logit margin at the first difference.
- ``step``: ms per token of plain greedy decoding, bfloat16: our loop with CUDA graphs, without graphs (eager,
  static cache), with the dynamic cache (the engine before graphs), transformers' ``generate`` with its dynamic
  and its static cache (step.csv).
- ``verify``: ms of one verification forward by node count and context, through the graphs (verify.csv).
- ``compiled``: transformers' ``generate`` with its static cache and ``torch.compile`` (added to step.csv; last,
  as compilation takes a while).

``bench`` and ``verify-cost`` run as the project's own commands from the shell script.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import traceback
from pathlib import Path

import torch

NEW = 64
DEVICE = "cuda"


def _sync() -> None:
    if DEVICE == "cuda":
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
    return [p.ids for p in prompts]


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


DRAFTERS = ["none", "mamba2-smollm2", "mamba2-smollm2+lookup", "llama-smollm2", "eagle-smollm2", "lookup"]
TREES = ["2,1,1", "dynamic"]


def lossless(out: Path, n_prompts: int) -> None:
    from mambaspec import ModelOptions, load_pipeline
    from mambaspec.loading.pipeline import load_drafter

    rows = []
    for dtype in ("float32", "bfloat16"):
        pipe = load_pipeline("smollm2-135m", "none", ModelOptions(device=DEVICE, dtype=dtype))
        model, tok = pipe.target.model, pipe.target.tokenizer
        eos = sorted(pipe.generator.eos_token_ids)
        prompts = _prompts(tok, n_prompts)
        refs = [_hf_greedy(model, p, NEW, eos) for p in prompts]
        plain = [pipe.generator.generate(p, NEW).new_token_ids for p in prompts]
        for name in DRAFTERS:
            drafter = None if name == "none" else load_drafter(name, pipe.target)
            from mambaspec.core.engine import SpeculativeGenerator

            gen = SpeculativeGenerator(model, drafter, tokenizer=tok, target_options=pipe.target.optimized)
            for tree in (TREES if name != "none" else ["-"]):
                t0 = time.perf_counter()
                ours = [gen.generate(p, NEW, tree=tree if tree != "-" else "1") for p in prompts]
                secs = time.perf_counter() - t0
                ids = [r.new_token_ids for r in ours]
                diff_ref = [i for i, (a, b) in enumerate(zip(ids, refs)) if a != b]
                diff_plain = [i for i, (a, b) in enumerate(zip(ids, plain)) if a != b]
                margins = [_margin(model, prompts[i], ids[i], refs[i]) for i in diff_ref]
                rows.append({"dtype": dtype, "drafter": name, "tree": tree, "prompts": len(prompts),
                             "same_as_transformers": len(prompts) - len(diff_ref),
                             "same_as_our_plain": len(prompts) - len(diff_plain),
                             "margins_at_difference": ";".join(f"{i}@{a}:{m:.4f}" for i, (a, m) in zip(diff_ref, margins)),
                             "tok_per_s": round(sum(len(x) for x in ids) / secs, 1),
                             "mean_accept_len": round(sum(r.stats.mean_accept_len for r in ours) / len(ours), 3),
                             "graphs": bool(gen.static_cache is not None and gen.static_cache.graphs)})
                print(rows[-1], flush=True)
                _write(out / "lossless.csv", rows)
        del pipe
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def step(out: Path, compiled: bool = False, prompt_tokens: int = 200, new: int = 128) -> None:
    from mambaspec import ModelOptions
    from mambaspec.core.engine import SpeculativeGenerator
    from mambaspec.loading.models import load_model

    target = load_model("smollm2-135m", ModelOptions(device=DEVICE, dtype="bfloat16"))
    model, tok = target.model, target.tokenizer
    ids = _prompts(tok, 1)[0][:prompt_tokens]
    eos = [tok.eos_token_id]
    rows = _read(out / "step.csv")

    def timed(label: str, fn) -> None:
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
        _write(out / "step.csv", rows)

    if not compiled:
        for label, kw in (("ours: static cache + CUDA graphs", {}), ("ours: static cache, eager", {"cuda_graphs": False}),
                          ("ours: dynamic cache, eager", {"static_kv": False})):
            gen = SpeculativeGenerator(model, None, tokenizer=tok, eos_token_ids=eos, **kw)
            timed(label, lambda g=gen: g.generate(ids, new).new_token_ids)
    plain = load_model("smollm2-135m", ModelOptions(device=DEVICE, dtype="bfloat16", linear="torch"), role="plain").model
    if not compiled:
        timed("transformers generate (dynamic cache)", lambda: _hf_greedy(plain, ids, new, eos))
        timed("transformers generate (static cache)", lambda: _hf_greedy(plain, ids, new, eos,
                                                                          cache_implementation="static"))
        return
    plain.forward = torch.compile(plain.forward, mode="reduce-overhead", fullgraph=True)
    timed("transformers generate (static cache, torch.compile)",
          lambda: _hf_greedy(plain, ids, new, eos, cache_implementation="static"))


def verify(out: Path) -> None:
    from mambaspec import ModelOptions
    from mambaspec.core.kv import forward_chain, forward_tree, keep_slots
    from mambaspec.core.static import BUCKETS, StaticKVCache
    from mambaspec.loading.models import load_model

    model = load_model("smollm2-135m", ModelOptions(device=DEVICE, dtype="bfloat16")).model
    rows = []
    g = torch.Generator().manual_seed(0)
    for prefix in ((500, 4000) if DEVICE == "cuda" else (100,)):
        cache = StaticKVCache(prefix + 2 * BUCKETS[-1], graphs=DEVICE == "cuda")
        ids = torch.randint(0, 49152, (prefix + 64,), generator=g).tolist()
        forward_chain(model, cache, ids[:prefix])
        for n in (1, 2, 4, 8, 16, 32, 64):
            def once() -> None:
                forward_tree(model, cache, ids[prefix:prefix + n], list(range(prefix, prefix + n)),
                             torch.ones(n, n, dtype=torch.bool).tril())
                keep_slots(cache, prefix, [])
            for _ in range(3):
                once()
            _sync()
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                once()
                _sync()
                times.append(time.perf_counter() - t0)
            times.sort()
            rows.append({"prefix": prefix, "nodes": n, "ms_median": round(1000 * times[len(times) // 2], 3),
                         "ms_min": round(1000 * times[0], 3)})
            print(rows[-1], flush=True)
            _write(out / "verify.csv", rows)


def main() -> None:
    global DEVICE, NEW
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gpu")
    ap.add_argument("--parts", default="lossless,step,verify,compiled")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (no graphs)")
    ap.add_argument("--new", type=int, default=NEW)
    args = ap.parse_args()
    DEVICE, NEW = args.device, args.new
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    env = {"gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    print(env, flush=True)
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        try:
            {"lossless": lambda: lossless(out, args.prompts), "step": lambda: step(out), "verify": lambda: verify(out),
             "compiled": lambda: step(out, compiled=True)}[part]()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            (out / f"{part}-error.txt").write_text(traceback.format_exc())
        print(f"== {part}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
