"""pretrain-drafter end to end on a tiny fixture: loss goes down, resume is exact, recipes are checked."""

import json

import pytest
import torch
import yaml

from mambaspec import MambaspecError
from mambaspec.pipeline import load_drafter
from mambaspec.models import load_model
from mambaspec.train import DrafterRecipe, train_drafter
from mambaspec.vocab import DraftVocab


def tiny_recipe(tmp_path, **over):
    text = tmp_path / "corpus.txt"
    text.write_text("def add(a, b):\n    return a + b\n\n" * 200 + "print('hello world')\n" * 100)
    raw = dict(arch="mamba2", hidden_size=32, num_layers=1, state_size=8, head_dim=16, vocab_top_k=40,
               seq_len=32, batch_size=4, steps=12, lr=0.01, warmup_steps=2, checkpoint_every=4, log_every=2,
               eval_prompts=2, eval_new_tokens=8,
               data=[{"source": "files", "paths": [str(text)], "weight": 1.0},
                     {"source": "distill", "prompts": "stdlib-functions", "limit": 6, "max_new_tokens": 8,
                      "weight": 1.0}])
    raw.update(over)
    return DrafterRecipe.from_dict(raw)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / "cache"))


def test_train_reduces_loss_and_writes_a_loadable_drafter(tmp_path, tiny_dir, cache):
    res = train_drafter(tiny_recipe(tmp_path), tiny_dir["target"], tmp_path / "run", log=lambda m: None)
    rows = [ln.split(",") for ln in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    assert losses[-1] < losses[0]
    for name in ("model.safetensors", "config.json", "mambaspec.json", "eval.json", "README.md", "checkpoint.pt"):
        assert (tmp_path / "run" / name).exists(), name
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0 <= ev["top1_agreement"] <= 1 and ev["mean_accept_len_1111"] >= 1
    target = load_model(tiny_dir["target"], device="cpu")
    drafter = load_drafter(str(tmp_path / "run"), target)
    assert drafter.draft_vocab is not None and drafter.draft_vocab.size == 41


def test_interrupt_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_dir, cache):
    recipe = tiny_recipe(tmp_path)
    full = train_drafter(recipe, tiny_dir["target"], tmp_path / "full", evaluate=False, log=lambda m: None)
    part = train_drafter(recipe, tiny_dir["target"], tmp_path / "part", evaluate=False, log=lambda m: None,
                         stop_after=5)  # "interrupted" after step 5: checkpoint at 5
    assert part.steps == 5
    with pytest.raises(MambaspecError, match="--resume"):
        train_drafter(recipe, tiny_dir["target"], tmp_path / "part", log=lambda m: None)
    train_drafter(recipe, tiny_dir["target"], tmp_path / "part", resume=True, evaluate=False, log=lambda m: None)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_draft_vocab_maps_back_to_target_ids():
    counts = torch.zeros(100)
    counts[[7, 42, 99, 3]] = torch.tensor([5.0, 9.0, 1.0, 2.0])
    v = DraftVocab.from_counts(counts, 3, always=[99])
    assert v.target_ids == [7, 42, 99] and v.size == 4
    ids = torch.tensor([42, 3, 99, 7])
    assert v.encode(ids).tolist() == [1, 3, 2, 0]  # 3 is outside -> the shared bucket (id 3 = K)
    logits = torch.tensor([[0.1, 2.0, 0.5, 9.0]])  # the bucket's logit is never a draft
    full = v.logits_to_target(logits)
    assert full.shape == (1, 100) and full.argmax(-1).item() == 42
    assert torch.isinf(full[0, 3]) and full[0, 7] == 0.1


@pytest.mark.parametrize("content,needle", [
    ("steps: [1, 2", "not valid YAML"),
    ("arch: rwkv", "unknown arch"),
    ("stepz: 10", "unknown setting 'stepz'"),
    ("steps: ten", "'steps' must be int"),
    ("data: []", "no source"),
    ("data: [{source: web}]", "data[0]"),
    ("- 1\n- 2", "mapping"),
])
def test_recipe_errors(tmp_path, content, needle):
    path = tmp_path / "r.yaml"
    path.write_text(content)
    with pytest.raises(MambaspecError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        DrafterRecipe.load(path)


def test_shipped_recipes_are_valid():
    from mambaspec.models import recipes_dir

    for path in (recipes_dir() / "drafters").glob("*.yaml"):
        DrafterRecipe.load(path)


def test_llama_baseline_matches_mamba2_size():
    from mambaspec.train import build_model

    r = DrafterRecipe.load(__import__("mambaspec.models", fromlist=["x"]).recipes_dir() / "drafters" / "mamba2-smollm2.yaml")
    sizes = {}
    for arch in ("mamba2", "llama"):
        m = build_model(DrafterRecipe.from_dict({**yaml.safe_load(yaml.safe_dump(r.__dict__)), "arch": arch}), 8193, 2)
        sizes[arch] = sum(p.numel() for p in m.parameters())
    assert abs(sizes["llama"] - sizes["mamba2"]) / sizes["mamba2"] < 0.15, sizes


@pytest.mark.parametrize("name", ["mamba2-smollm2", "llama-smollm2"])
def test_shipped_drafter_loads_and_drafts(name):
    """The shipped drafter loads by name with SmolLM2, proposes tokens the target accepts, and the
    output is the target's own greedy output."""
    from mambaspec.models import registry
    from mambaspec.pipeline import load_pipeline

    if name not in registry():
        pytest.skip(f"{name} not shipped in this version")
    pipe = load_pipeline("smollm2-135m", name, device="cpu")
    plain = load_pipeline("smollm2-135m", "none", device="cpu")
    prompt = 'def add(a, b):\n    """Return the sum of a and b."""\n'
    spec = pipe.generate(prompt, chat=False, max_new_tokens=24, tree="1,1,1,1")
    ref = plain.generate(prompt, chat=False, max_new_tokens=24)
    assert spec.new_token_ids == ref.new_token_ids
    assert spec.stats.drafter == name and spec.stats.mean_accept_len > 1.2
    assert sum(p.stat().st_size for p in registry()[name].shipped_path.iterdir()) < 10 * 2**20
