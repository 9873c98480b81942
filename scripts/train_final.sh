#!/usr/bin/env bash
# Train the shipped drafters one after the other, each from the recipes it shipped from, resumable: rerun after an
# interruption. mamba2-smollm2 and llama-smollm2 train in two stages: the long recipe (6,000 steps on broad-v1 and
# the standard library) into OUT/NAME-long, then the fine-tune on broad-v2's first 274 batches
# (recipes/drafters/broad-v2-274/) from it into OUT/NAME; eagle-smollm2 in one.
# Then copy each into mambaspec/shipped/NAME with scripts/ship.sh.  Usage: scripts/train_final.sh [OUT] (default runs/final)
set -euo pipefail
OUT=${1:-runs/final}
train() {  # OUT_DIR RECIPE [more pretrain-drafter options]
  local dir=$1 recipe=$2; shift 2
  if [ -f "$dir/model.safetensors" ]; then return; fi
  local resume=""; [ -f "$dir/checkpoint.pt" ] && resume="--resume"
  mambaspec pretrain-drafter --recipe "$recipe" --out "$dir" $resume "$@"
}
for name in mamba2-smollm2 llama-smollm2; do
  train "$OUT/$name-long" "recipes/drafters/$name-long.yaml"
  train "$OUT/$name" "recipes/drafters/broad-v2-274/${name%%-smollm2}.yaml" --init-from "$OUT/$name-long"
done
train "$OUT/eagle-smollm2" recipes/drafters/eagle-smollm2-long.yaml
