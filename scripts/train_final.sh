#!/usr/bin/env bash
# Train the shipped drafters one after the other, each from the recipe it shipped from, resumable: rerun after an
# interruption.
# Then copy each into mambaspec/shipped/NAME with scripts/ship.sh.  Usage: scripts/train_final.sh [OUT] (default runs/final)
set -euo pipefail
OUT=${1:-runs/final}
for name in mamba2-smollm2 llama-smollm2 eagle-smollm2; do
  if [ -f "$OUT/$name/model.safetensors" ]; then continue; fi
  resume=""; [ -f "$OUT/$name/checkpoint.pt" ] && resume="--resume"
  recipe=recipes/drafters/$name-long.yaml
  mambaspec pretrain-drafter --recipe "$recipe" --out "$OUT/$name" $resume
done
