#!/usr/bin/env bash
# Copy trained drafters into the package (mambaspec/shipped/NAME): weights (float16), config, metadata, eval, card.
# Usage: scripts/ship.sh [OUT] (default runs/final, as written by scripts/train_final.sh)
set -euo pipefail
OUT=${1:-runs/final}
for name in mamba2-smollm2 llama-smollm2 eagle-smollm2; do
  [ -f "$OUT/$name/model.safetensors" ] || { echo "skip $name: $OUT/$name is not trained yet" >&2; continue; }
  mkdir -p "mambaspec/shipped/$name"
  for f in model.safetensors config.json generation_config.json mambaspec.json eval.json README.md; do
    if [ -f "$OUT/$name/$f" ]; then cp "$OUT/$name/$f" "mambaspec/shipped/$name/"; fi
  done
  chmod 644 mambaspec/shipped/$name/*
  echo "shipped $name: $(du -sh mambaspec/shipped/$name | cut -f1)"
done
