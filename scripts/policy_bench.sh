#!/usr/bin/env bash
# The dynamic policy against an older one, and the long-trained Mamba2 drafter against the shipped one, in one run.
# Three variants per workload, each with its own `ar`: new policy + shipped drafter, OLD policy (a checkout of another
# commit, e.g. `git worktree add /tmp/oldpol 2d486fc`) + shipped drafter, new policy + DRAFTER.
# Usage: scripts/policy_bench.sh OUT OLD_CHECKOUT DRAFTER   (about 40 minutes on 2 CPU cores; resumes)
# VARIANTS="new-shipped new-long" runs a subset (OLD_CHECKOUT is then unused; pass -).
set -euo pipefail
OUT=$1; OLD=$2; DRAFTER=$3
M=ar,mamba-dynamic,mamba+lookup-dynamic
run() {  # run VARIANT NAME ARGS...
  local variant=$1 name=$2; shift 2
  case $variant in
    new-shipped) mambaspec bench "$@" -n 128 --methods $M --out "$OUT/$variant/$name" ;;
    old-shipped) PYTHONPATH=$OLD python -m mambaspec bench "$@" -n 128 --methods $M --out "$OUT/$variant/$name" ;;
    new-long) mambaspec bench "$@" -n 128 --methods $M --drafter "$DRAFTER" --out "$OUT/$variant/$name" ;;
  esac
}
for v in ${VARIANTS:-new-shipped old-shipped new-long}; do run $v humaneval-1 humaneval --limit 20; done
for v in ${VARIANTS:-new-shipped old-shipped new-long}; do run $v chat-1 jsonl --data recipes/eval/chat.jsonl; done
for v in ${VARIANTS:-new-shipped old-shipped new-long}; do run $v summaries-1 jsonl --data recipes/eval/summaries.jsonl; done
for v in ${VARIANTS:-new-shipped old-shipped new-long}; do run $v chat-2 jsonl --data recipes/eval/chat.jsonl; done
