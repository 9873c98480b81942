#!/usr/bin/env bash
# The measurements behind the README's tables, all with the project's own commands. Every bench resumes
# (rerun after an interruption: finished rows are kept) and runs its methods prompt by prompt.
# Two groups per workload: our decoding paths (the default `generate` among them) against plain decoding and
# transformers' prompt lookup, then the other drafters and transformers' assisted generation in a second run
# ($OUT/peers), each against its own `ar`; then the chain-4 acceptance runs. About 80 minutes on 2 CPU cores.
# Usage: scripts/measure.sh [OUT] (default runs/measure); tables: python scripts/measure_table.py OUT OUT/peers
# Part of it (e.g. after retraining one drafter): PARTS (default "ours peers chain4"), PEERS (default
# ar,transformer,eagle; transformers' assisted generation joins HumanEval when the transformer drafter is among them)
# and CHAIN4 (default ar,mamba,transformer,eagle), e.g.
#   PARTS="peers chain4" PEERS=ar,eagle CHAIN4=ar,eagle scripts/measure.sh runs/measure-eagle
# then list that folder (and its peers/) first: python scripts/measure_table.py runs/measure-eagle runs/measure-eagle/peers OLD OLD/peers
set -euo pipefail
OUT=${1:-runs/measure}
N=128
PARTS=${PARTS:-ours peers chain4}
OURS=ar,mamba,mamba-dynamic,mamba+lookup,mamba+lookup-dynamic,prompt-lookup
PEERS=${PEERS:-ar,transformer,eagle}
CHAIN4=${CHAIN4:-ar,mamba,transformer,eagle}
HUMANEVAL_PEERS=$PEERS; [[ $PEERS == *transformer* ]] && HUMANEVAL_PEERS=$PEERS,hf-assisted
DOCS="--data recipes/eval/longdocs.jsonl.gz --lengths 1k,2k,4k,8k --limit 2"  # held-out documents, exact lengths
if [[ " $PARTS " == *" ours "* ]]; then
  for mix in code math chat summaries; do
    mambaspec bench jsonl --data recipes/eval/$mix.jsonl -n $N --methods $OURS --out $OUT/$mix
  done
  mambaspec bench humaneval --limit 20 -n $N --methods $OURS,lookup --out $OUT/humaneval
  mambaspec bench longbench $DOCS -n $N --methods $OURS --out $OUT/longdocs
  mambaspec verify-cost --prefix 500,2000,4000,8000 --nodes 1,2,4,6,7,8,16 --out $OUT/verify-cost
fi
if [[ " $PARTS " == *" peers "* ]]; then
  for mix in code math chat summaries; do
    mambaspec bench jsonl --data recipes/eval/$mix.jsonl -n $N --methods $PEERS --out $OUT/peers/$mix
  done
  mambaspec bench humaneval --limit 20 -n $N --methods $HUMANEVAL_PEERS --out $OUT/peers/humaneval
  mambaspec bench longbench $DOCS -n $N --methods $PEERS --out $OUT/peers/longdocs
fi
if [[ " $PARTS " == *" chain4 "* ]]; then  # acceptance length of a chain of 4 (the drafter-data issue's targets)
  mambaspec bench humaneval --limit 10 -n $N --tree 1,1,1,1 --methods $CHAIN4 --out $OUT/chain4-humaneval
  mambaspec bench jsonl --data recipes/eval/chat.jsonl -n $N --tree 1,1,1,1 --methods $CHAIN4 --out $OUT/chain4-chat
fi
