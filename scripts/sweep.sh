#!/usr/bin/env bash
# Drafter size by measurement (issue 12): train the sweep recipes (same data, same budget), then bench each on
# the held-out code and chat mixes (ar and mamba in one run each). Resumable: rerun after an interruption.
# Usage: scripts/sweep.sh [OUT] (default runs/sweep)
set -euo pipefail
OUT=${1:-runs/sweep}
for recipe in recipes/drafters/sweep/*.yaml; do
  name=$(basename "$recipe" .yaml)
  if [ -f "$OUT/$name/model.safetensors" ]; then continue; fi
  resume=""; [ -f "$OUT/$name/checkpoint.pt" ] && resume="--resume"
  mambaspec pretrain-drafter --recipe "$recipe" --out "$OUT/$name" $resume
done
for recipe in recipes/drafters/sweep/*.yaml; do
  name=$(basename "$recipe" .yaml)
  for mix in code chat; do
    mambaspec bench jsonl --data recipes/eval/$mix.jsonl -n 128 --methods ar,mamba --drafter "$OUT/$name" \
      --out "$OUT/bench-$mix"
  done
done
