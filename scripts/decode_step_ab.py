"""One batched decode step of data generation's shape, timed with transformers' ``DynamicCache`` (which concatenates
the whole cache at every step) and with the engine's preallocated cache (``core.kv.new_kv_cache``), in one process:

    python scripts/decode_step_ab.py --contexts 300,700 [--rows 32] [--steps 20]

Each cache runs twice, alternating (a busy machine shows as the two runs of one cache disagreeing).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

from mambaspec.core.kv import new_kv_cache
from mambaspec.loading.models import load_model
from mambaspec.loading.options import ModelOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="300,700", help="cached tokens per row before the timed steps")
    ap.add_argument("--rows", type=int, default=32, help="batch rows (the CPU data plan's batch)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--target", default="smollm2-135m")
    args = ap.parse_args()
    model = load_model(args.target, ModelOptions(device="cpu", dtype="float32")).model
    for ctx in map(int, args.contexts.split(",")):
        for name, make in (("DynamicCache", DynamicCache), ("preallocated", new_kv_cache)) * 2:
            torch.manual_seed(0)
            with torch.inference_mode():
                cache = make()
                model(input_ids=torch.randint(100, 40000, (args.rows, ctx)), past_key_values=cache, use_cache=True,
                      logits_to_keep=1)
                token = torch.randint(100, 40000, (args.rows, 1))
                t = time.perf_counter()
                for _ in range(args.steps):
                    model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
                dt = (time.perf_counter() - t) / args.steps
            print(f"{ctx} cached tokens, {name}: {dt * 1000:.0f} ms a step, {args.rows / dt:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
