#!/usr/bin/env bash
# The measurements behind the README's tables, all with the project's own commands. Every bench resumes
# (rerun after an interruption: finished rows are kept) and runs its methods prompt by prompt.
# Two groups per workload: our decoding paths (the default `generate` among them) against plain decoding and
# transformers' prompt lookup, then the other drafters and transformers' assisted generation in a second run
# ($OUT/peers), each against its own `ar`. About 80 minutes on 2 CPU cores.
# Usage: scripts/measure.sh [OUT] (default runs/measure); tables: python scripts/measure_table.py OUT OUT/peers
set -euo pipefail
OUT=${1:-runs/measure}
N=128
OURS=ar,mamba,mamba-dynamic,mamba+lookup,mamba+lookup-dynamic,prompt-lookup
PEERS=ar,transformer,eagle
DOCS="--data recipes/eval/longdocs.jsonl.gz --lengths 1k,2k,4k,8k --limit 2"  # held-out documents, exact lengths
for mix in code math chat summaries; do
  mambaspec bench jsonl --data recipes/eval/$mix.jsonl -n $N --methods $OURS --out $OUT/$mix
done
mambaspec bench humaneval --limit 20 -n $N --methods $OURS,lookup --out $OUT/humaneval
mambaspec bench longbench $DOCS -n $N --methods $OURS --out $OUT/longdocs
mambaspec verify-cost --prefix 500,2000,4000,8000 --nodes 1,2,4,6,7,8,16 --out $OUT/verify-cost
for mix in code math chat summaries; do
  mambaspec bench jsonl --data recipes/eval/$mix.jsonl -n $N --methods $PEERS --out $OUT/peers/$mix
done
mambaspec bench humaneval --limit 20 -n $N --methods $PEERS,hf-assisted --out $OUT/peers/humaneval
mambaspec bench longbench $DOCS -n $N --methods $PEERS --out $OUT/peers/longdocs
# acceptance length of a chain of 4 (the drafter-data issue's targets), Mamba vs Transformer vs EAGLE
mambaspec bench humaneval --limit 10 -n $N --tree 1,1,1,1 --methods ar,mamba,transformer,eagle --out $OUT/chain4-humaneval
mambaspec bench jsonl --data recipes/eval/chat.jsonl -n $N --tree 1,1,1,1 --methods ar,mamba,transformer,eagle --out $OUT/chain4-chat
