#!/usr/bin/env bash
# Train the shipped drafters (issue 12, issue 16) one after the other, resumable: rerun after an interruption.
# Then copy each into mambaspec/shipped/NAME with scripts/ship.sh.  Usage: scripts/train_final.sh [OUT] (default runs/final)
set -euo pipefail
OUT=${1:-runs/final}
for name in mamba2-smollm2 llama-smollm2 eagle-smollm2; do
  if [ -f "$OUT/$name/model.safetensors" ]; then continue; fi
  resume=""; [ -f "$OUT/$name/checkpoint.pt" ] && resume="--resume"
  mambaspec pretrain-drafter --recipe "recipes/drafters/$name.yaml" --out "$OUT/$name" $resume
done
