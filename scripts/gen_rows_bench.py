"""Answer already-made plan batches of a data set again, one batch a pass and several together, and compare the
time and the rows with the shards on disk (the check behind carry/README's MAMBASPEC_GEN_ROWS=96):

    python scripts/gen_rows_bench.py broad-v2 100,101,102

Stop other work on the machine first (the numbers are wall time); the shards are not written.
"""

import argparse
import json
import time

import torch

from mambaspec.loading.models import load_model
from mambaspec.training import datagen
from mambaspec.training.data_recipe import DataRecipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set", help="data set name (recipes/data/NAME.yaml), its shards already made")
    ap.add_argument("batches", help="plan batch indices, comma-separated, e.g. 100,101,102")
    args = ap.parse_args()
    recipe = DataRecipe.named(args.set)
    loaded = load_model(recipe.target)
    model, tok = loaded.model, loaded.tokenizer
    prompts = [json.loads(line) for line in (recipe.folder / "prompts.jsonl").read_text().splitlines()]
    plan = datagen.plan_batches(prompts, recipe, tok)
    batches = [plan[int(i)] for i in args.batches.split(",")]
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    a = recipe.answers
    made = {r["id"]: r["ids"] for b in batches
            for r in torch.load(datagen.shard_path(recipe.folder, b.index), weights_only=False)}
    runs = {"one batch a pass": lambda: [datagen.answer_batch(model, b, pad, eos, a.max_new_tokens,
                                                               a.top_k_logprobs, recipe) for b in batches],
            f"{len(batches)} batches a pass": lambda: datagen.answer_batches(model, batches, pad, eos, a.max_new_tokens,
                                                                            a.top_k_logprobs, recipe)}
    for name, run in runs.items():
        t0 = time.perf_counter()
        rows = [r for shard in run() for r in shard]
        dt = time.perf_counter() - t0
        new = sum(len(r["ids"]) - r["prompt_len"] for r in rows)
        same = sum(torch.equal(r["ids"], made[r["id"]]) for r in rows if r["id"] in made)
        print(f"{name}: {dt:.0f} s, {new:,} answer tokens ({new / dt:.0f} tok/s), "
              f"{same} of {len(rows)} rows as on disk", flush=True)


if __name__ == "__main__":
    main()
