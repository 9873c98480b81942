#!/usr/bin/env bash
# The measurements behind the README's tables, all with the project's own commands. Every bench resumes
# (rerun after an interruption: finished rows are kept). About an hour on 2 CPU cores.
# Usage: scripts/measure.sh [OUT] (default runs/measure)
set -euo pipefail
OUT=${1:-runs/measure}
N=128
ALL=ar,mamba,mamba-dynamic,lookup,mamba+lookup,mamba+lookup-dynamic,transformer,eagle,hf-assisted,prompt-lookup
MIX=ar,mamba,mamba-dynamic,mamba+lookup,mamba+lookup-dynamic,transformer,eagle,prompt-lookup
mambaspec bench humaneval --limit 20 -n $N --methods $ALL --out $OUT/humaneval --plot
for mix in code math chat summaries; do
  mambaspec bench jsonl --data recipes/eval/$mix.jsonl -n $N --methods $MIX --out $OUT/$mix --plot
done
# long documents the drafters never saw, cut to exact lengths
mambaspec bench longbench --data recipes/eval/longdocs.jsonl.gz --lengths 1k,2k,4k,8k --limit 2 -n $N \
  --methods $MIX --out $OUT/longdocs --plot
mambaspec verify-cost --prefix 500,2000,4000,8000 --nodes 1,2,4,6,8,16 --out $OUT/verify-cost
# acceptance length of a chain of 4 (issue 12's targets), Mamba vs Transformer vs EAGLE
mambaspec bench humaneval --limit 10 -n $N --tree 1,1,1,1 --methods ar,mamba,transformer,eagle --out $OUT/chain4-humaneval
mambaspec bench jsonl --data recipes/eval/chat.jsonl -n $N --tree 1,1,1,1 --methods ar,mamba,transformer,eagle --out $OUT/chain4-chat
