"""Text labelled by the target (``labels: target``), samples of a text source (``tokens:``) and ``init_from``."""

import json

import pytest
import torch

from mambaspec import MambaspecError, ModelOptions
from mambaspec.loading.models import load_model
from mambaspec.training import relabel
from mambaspec.training.data import Batch, Stream, TrainingData
from mambaspec.training.loop import train_drafter
from mambaspec.training.recipe import DrafterRecipe
from tests.test_train import tiny_recipe


class CountingModel(torch.nn.Module):
    """The target, counting the windows it reads."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.windows = model, 0

    def forward(self, input_ids, **kw):
        self.windows += len(input_ids)
        return self.inner(input_ids=input_ids, **kw)


@pytest.fixture()
def small_windows(monkeypatch, tmp_path):
    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(relabel, "WINDOW", 16)
    monkeypatch.setattr(relabel, "CHUNK_WINDOWS", 3)


def test_labels_are_the_targets_argmax_resume_grow_and_pack(tiny_dir, small_windows, tmp_path, monkeypatch):
    target = CountingModel(load_model(tiny_dir["target"], ModelOptions(device="cpu")).model)
    ids = torch.randint(4, 90, (16 * 20 + 5,), generator=torch.Generator().manual_seed(0)).to(torch.int32)
    x, y = relabel.target_labelled(ids, 100, target, "tiny", seed=0, log=lambda m: None)
    assert len(x) == len(y) == 7 * 16 and target.windows == 9  # whole chunks: 3 x 3 windows read, 7 kept
    starts = relabel.window_order(len(ids), 0)[:7]
    assert torch.equal(x, torch.cat([ids[s:s + 16] for s in starts]))
    for w, s in enumerate(starts):  # the target reads each window from its own start
        logits = target.inner(input_ids=ids[s:s + 16][None].long()).logits[0]
        assert torch.equal(y[w * 16:(w + 1) * 16], logits.argmax(-1).to(torch.int32))
    assert torch.equal(x, relabel.sample(ids, 100, seed=0))  # the real-label control trains on the same text
    folder = relabel.labels_folder(ids, "tiny", 0)
    (folder / "chunk-00001.pt").unlink()  # interrupted before this chunk was written
    x2, y2 = relabel.target_labelled(ids, 100, target, "tiny", seed=0, log=lambda m: None)
    assert target.windows == 12 and torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = relabel.target_labelled(ids, 200, target, "tiny", seed=0, log=lambda m: None)  # a larger sample
    assert target.windows == 18 and torch.equal(x3[:len(x)], x) and torch.equal(y3[:len(y)], y)
    packs = tmp_path / "recipes"
    monkeypatch.setattr(relabel, "recipes_dir", lambda: packs)
    assert relabel.pack_labels(folder, log=lambda m: None).name == "chunks-00000-00004.xz"
    assert relabel.pack_labels(folder, log=lambda m: None) is None  # nothing new
    for f in folder.iterdir():  # a fresh machine: the labels come from the packs, the target reads nothing
        f.unlink()
    x4, y4 = relabel.target_labelled(ids, 200, target, "tiny", seed=0, log=lambda m: None)
    assert target.windows == 18 and torch.equal(x4, x3) and torch.equal(y4, y3)
    with pytest.raises(MambaspecError, match="at least 16 tokens"):
        relabel.target_labelled(ids[:10], 100, target, "tiny", seed=0, log=lambda m: None)


def test_batch_takes_a_streams_labels_and_the_next_token_elsewhere():
    ids = torch.arange(10, 60, dtype=torch.int32)
    labelled = Stream("a", 1.0, ids, labels=ids + 1000)
    plain = Stream("b", 1.0, ids + 100)
    recipe = DrafterRecipe(seq_len=8, batch_size=16, seed=3)
    batch = TrainingData([labelled, plain]).batch(0, recipe)
    assert batch.labels.shape == (16, 8)
    for row, lab in zip(batch.ids, batch.labels):
        if row[0] < 100:  # stream a: the label at position i is the target's after ids[i]
            assert torch.equal(lab, row[:-1] + 1000)
        else:
            assert torch.equal(lab, row[1:])
    assert TrainingData([plain]).batch(0, recipe).labels is None


def test_loss_learns_the_labels_not_the_next_token():
    from mambaspec.training.loop import build_model, loss_of

    recipe = DrafterRecipe(hidden_size=32, num_layers=1, state_size=8, head_dim=16, kd_weight=0.0)
    model = build_model(recipe, 50, 3)
    ids = torch.randint(0, 50, (2, 9))
    weight = torch.ones(2, 8)
    same = loss_of(model, Batch(ids, weight, labels=ids[:, 1:]), None, recipe, "cpu")
    assert same.item() == pytest.approx(loss_of(model, Batch(ids, weight), None, recipe, "cpu").item())
    other = loss_of(model, Batch(ids, weight, labels=(ids[:, 1:] + 1) % 50), None, recipe, "cpu")
    assert other.item() != pytest.approx(same.item())


def test_target_labelled_fine_tune_from_a_drafter(tmp_path, tiny_dir, small_windows):
    text = tmp_path / "corpus.txt"
    text.write_text("def add(a, b):\n    return a + b\n\n" * 40)
    files = [{"source": "files", "paths": [str(text)], "weight": 1.0}]
    base = train_drafter(tiny_recipe(tmp_path, data=files, kd_weight=0.0, steps=4, curriculum=[]),
                         tiny_dir["target"], tmp_path / "base", evaluate=False, log=lambda m: None)
    said = []
    tuned = tiny_recipe(tmp_path, init_from=str(base.out), kd_weight=0.0, steps=4, curriculum=[],
                        data=[{**files[0], "labels": "target", "tokens": 64}])
    train_drafter(tuned, tiny_dir["target"], tmp_path / "tuned", evaluate=False, log=said.append)
    assert any("starting from the weights of" in m for m in said)
    meta = json.loads((tmp_path / "tuned" / "mambaspec.json").read_text())
    assert meta["draft_vocab"] == json.loads((base.out / "mambaspec.json").read_text())["draft_vocab"]
    assert meta["data"] == {"files:target-labels": 64}
    with pytest.raises(MambaspecError, match="does not match"):
        train_drafter(tiny_recipe(tmp_path, init_from=str(base.out), hidden_size=48, data=files, kd_weight=0.0),
                      tiny_dir["target"], tmp_path / "wider", evaluate=False, log=lambda m: None)
    with pytest.raises(MambaspecError, match="not a drafter trained by mambaspec"):
        train_drafter(tiny_recipe(tmp_path, init_from=tiny_dir["target"], data=files, kd_weight=0.0),
                      tiny_dir["target"], tmp_path / "none", evaluate=False, log=lambda m: None)


@pytest.mark.parametrize("source,needle", [
    ({"source": "distill", "set": "x", "labels": "target"}, "labels: is 'real'"),
    ({"source": "files", "labels": "teacher"}, "labels: is 'real'"),
    ({"source": "stdlib-code", "labels": "target", "tokens": 0}, "tokens: is how many"),
    ({"source": "stdlib-code", "tokens": "many"}, "tokens: is how many"),
    ({"source": "distill", "set": "x", "tokens": 100}, "tokens: is how many"),
])
def test_label_settings_are_checked(source, needle):
    with pytest.raises(MambaspecError, match=needle):
        DrafterRecipe.from_dict({"data": [source]})
    with pytest.raises(MambaspecError, match="init_from"):
        DrafterRecipe.from_dict({"arch": "eagle", "init_from": "mamba2-smollm2"})
