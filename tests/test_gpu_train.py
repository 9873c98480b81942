"""scripts/gpu_train.sh's dry run (--device cpu --quick, a tiny target): every phase runs and OUT holds what a GPU
run brings back, so the script cannot rot between the sessions that have a GPU."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from tiny import EOS, char_tokenizer, save_tiny, tiny_llama

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # the whole script on the CPU: minutes
def test_gpu_train_dry_run_writes_the_drafter_eval_and_metrics(tmp_path):
    model = tiny_llama(0)
    with torch.no_grad():  # a target that ends answers now and then, so conversations get later turns
        common = model(torch.tensor([[5, 6, 7, 8, 9, 10]])).logits[0].argmax(-1)[-1]
        model.lm_head.weight[EOS] = model.lm_head.weight[common] * 1.01
    target = save_tiny(tmp_path / "target", model, char_tokenizer())
    out = tmp_path / "out"
    env = {**os.environ, "TARGET": target, "MAMBASPEC_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh"), str(out), "--device", "cpu", "--quick"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files[:3] == ["data.json", "drafter.tgz", "log.txt"] and len(files) == 4, files  # 8 come back at most
    pack = out / files[3]  # the shards it answered, packed to be committed
    assert pack.parent == out / "packs" / "gpu-dryrun" and pack.name.startswith("shards-00000-"), files
    data = json.loads((out / "data.json").read_text())["gpu-dryrun"]
    assert data["train_answer_tokens"] > 0 and data["heldout_rows"] > 0
    assert pack.name == f"shards-00000-{data['shards'] - 1:05d}.xz"
    with tarfile.open(out / "drafter.tgz") as tar:
        tar.extractall(out / "drafter", filter="data")
    for name in ("model.safetensors", "config.json", "mambaspec.json", "metrics.csv", "eval.json", "README.md"):
        assert (out / "drafter" / name).is_file(), name
    ev = json.loads((out / "drafter" / "eval.json").read_text())
    assert ev["mean_accept_len_1111"] >= 1 and ev["heldout_prompts"] > 0
    assert json.loads((out / "drafter" / "mambaspec.json").read_text())["steps"] == 40
    assert (out / "drafter" / "model.safetensors").stat().st_size < 16_000_000
    assert "== done in" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_gpu_train_data_only_brings_back_the_pack_alone(tmp_path, tiny_dir):
    out = tmp_path / "out"
    env = {**os.environ, "TARGET": tiny_dir["target"], "MAMBASPEC_CACHE": str(tmp_path / "cache"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh"), str(out), "--device", "cpu", "--quick",
                          "--data-only"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files[:2] == ["data.json", "log.txt"] and len(files) == 3 and files[2].startswith("packs/gpu-dryrun/shards-")
    assert "== done (data only)" in (out / "log.txt").read_text()


def test_a_time_cap_shortens_the_run_to_the_steps_that_fit(tmp_path, tiny_dir, monkeypatch):
    """Past the deadline already after the pace-measuring steps: the run ends there, saved, its schedule scaled."""
    import time

    from mambaspec.training.loop import train_drafter
    from mambaspec.training.recipe import DrafterRecipe

    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "corpus.txt"
    text.write_text("def add(a, b):\n    return a + b\n\n" * 200)
    recipe = DrafterRecipe.from_dict(dict(
        hidden_size=32, num_layers=1, state_size=8, head_dim=16, vocab_top_k=40, seq_len=32, batch_size=4, steps=30,
        warmup_steps=4, curriculum=[[20, 64]], checkpoint_every=50, log_every=5,
        data=[{"source": "files", "paths": [str(text)]}]))
    said: list[str] = []
    res = train_drafter(recipe, tiny_dir["target"], tmp_path / "run", evaluate=False, log=said.append,
                        deadline=time.time())
    assert res.steps == 10  # 5 warm-up steps, 5 timed, none more fit
    meta = json.loads((tmp_path / "run" / "mambaspec.json").read_text())
    assert meta["steps"] == 10 and meta["recipe"]["curriculum"] == [[6, 64]] and meta["recipe"]["warmup_steps"] == 1
    assert any("time cap" in line for line in said)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [5, 10]
