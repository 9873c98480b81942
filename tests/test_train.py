"""pretrain-drafter end to end on a tiny fixture: loss goes down, resume is exact, recipes are checked."""

import json

import pytest
import torch
import yaml

from mambaspec import MambaspecError, ModelOptions
from mambaspec.config import recipes_dir
from mambaspec.drafters.vocab import DraftVocab
from mambaspec.loading.models import load_model
from mambaspec.loading.pipeline import load_drafter
from mambaspec.training.loop import build_model, train_drafter
from mambaspec.training.recipe import DrafterRecipe


def tiny_recipe(tmp_path, **over):
    text = tmp_path / "corpus.txt"
    text.write_text("def add(a, b):\n    return a + b\n\n" * 200 + "print('hello world')\n" * 100)
    raw = dict(arch="mamba2", hidden_size=32, num_layers=1, state_size=8, head_dim=16, vocab_top_k=40,
               seq_len=32, batch_size=4, steps=12, lr=0.01, warmup_steps=2, checkpoint_every=4, log_every=2,
               eval_prompts=2, eval_new_tokens=8, kd_weight=0.5, prompt_weight=0.3, curriculum=[[6, 64]],
               data=[{"source": "files", "paths": [str(text)], "weight": 1.0},
                     {"source": "distill", "set": "tiny-test", "weight": 1.0}])
    raw.update(over)
    return DrafterRecipe.from_dict(raw)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A private cache, and a tiny distillation data set (recipes/data/tiny-test.yaml, written here)."""
    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / "cache"))
    import mambaspec.training.data_recipe as data_recipe

    recipes = tmp_path / "recipes"
    (recipes / "data").mkdir(parents=True)
    (recipes / "data" / "tiny-test.yaml").write_text(
        "name: tiny-test\ntarget: TARGET\nseed: 0\nstdlib_functions: 6\n"
        "answers: {max_new_tokens: 8, batch_size: 4, top_k_logprobs: 4}\nheldout_per_domain: 2\n")
    monkeypatch.setattr(data_recipe, "recipes_dir", lambda: recipes)


def _target_named(tmp_path, tiny_dir):
    """The data recipe names its target; the tiny target's folder is that name here."""
    path = tmp_path / "recipes" / "data" / "tiny-test.yaml"
    path.write_text(path.read_text().replace("TARGET", tiny_dir["target"]))
    return tiny_dir["target"]


def test_train_reduces_loss_and_writes_a_loadable_drafter(tmp_path, tiny_dir, cache):
    target_name = _target_named(tmp_path, tiny_dir)
    res = train_drafter(tiny_recipe(tmp_path, snapshot_every=4), target_name, tmp_path / "run", log=lambda m: None)
    rows = [ln.split(",") for ln in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    assert losses[-1] < losses[0]
    for name in ("model.safetensors", "config.json", "mambaspec.json", "eval.json", "README.md", "checkpoint.pt"):
        assert (tmp_path / "run" / name).exists(), name
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0 <= ev["top1_agreement"] <= 1 and ev["mean_accept_len_1111"] >= 1 and ev["domains"]["code"]["prompts"] == 2
    assert res.eval == ev
    target = load_model(tiny_dir["target"], ModelOptions(device="cpu"))
    drafter = load_drafter(str(tmp_path / "run"), target)
    assert drafter.draft_vocab is not None and drafter.draft_vocab.size == 41
    assert oct((tmp_path / "run" / "model.safetensors").stat().st_mode)[-3:] == "644"
    snaps = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert snaps == ["step-00004", "step-00008"]  # the learning curve's drafters; the last step is the run's own
    assert json.loads((tmp_path / "run" / "snapshots" / "step-00004" / "mambaspec.json").read_text())["step"] == 4
    assert load_drafter(str(tmp_path / "run" / "snapshots" / "step-00004"), target).draft_vocab.size == 41


def test_interrupt_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_dir, cache):
    target_name = _target_named(tmp_path, tiny_dir)
    recipe = tiny_recipe(tmp_path)
    # the uninterrupted run also saves snapshots: saving them must not change the training
    train_drafter(tiny_recipe(tmp_path, snapshot_every=3), target_name, tmp_path / "full", evaluate=False,
                  log=lambda m: None)
    part = train_drafter(recipe, target_name, tmp_path / "part", evaluate=False, log=lambda m: None,
                         stop_after=5)  # "interrupted" after step 5: checkpoint at 5, metrics logged up to 4
    assert part.steps == 5
    with pytest.raises(MambaspecError, match="resume"):
        train_drafter(recipe, target_name, tmp_path / "part", log=lambda m: None)
    (tmp_path / "part" / "metrics.csv").open("a").write("6,9.9,9.9,0.01,1,1.0\n")  # logged after the checkpoint
    train_drafter(recipe, target_name, tmp_path / "part", resume=True, evaluate=False, log=lambda m: None)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    steps = [int(line.split(",")[0]) for line in (tmp_path / "part" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6, 8, 10, 12]  # nothing twice, nothing lost
    smoothed = [[float(line.split(",")[2]) for line in (tmp_path / run / "metrics.csv").read_text().splitlines()[1:]]
                for run in ("full", "part")]
    assert smoothed[0] == pytest.approx(smoothed[1], abs=1e-3)  # the smoothed loss carries over too


def test_resume_under_other_settings_is_refused(tmp_path, tiny_dir, cache):
    target_name = _target_named(tmp_path, tiny_dir)
    train_drafter(tiny_recipe(tmp_path), target_name, tmp_path / "run", evaluate=False, log=lambda m: None,
                  stop_after=4)
    with pytest.raises(MambaspecError, match="other settings.*steps"):
        train_drafter(tiny_recipe(tmp_path, steps=20), target_name, tmp_path / "run", resume=True, log=lambda m: None)
    with pytest.raises(MambaspecError, match="training data differ"):
        train_drafter(tiny_recipe(tmp_path), target_name, tmp_path / "run", resume=True, log=lambda m: None,
                      extra_data=[str(tmp_path / "corpus.txt")])


def test_resume_after_an_interrupted_data_phase(tmp_path, tiny_dir, cache, monkeypatch):
    """Ctrl-C while the run makes its data set (before any checkpoint): --resume continues it, keeping the finished
    shards, as the interrupted message says (it answered "no checkpoint ... to resume from"; issue 28)."""
    import mambaspec.training.datagen as datagen

    target_name = _target_named(tmp_path, tiny_dir)
    answer = datagen.answer_batch
    answered = []

    def interrupted_after_one(*args, **kwargs):
        if answered:
            raise KeyboardInterrupt
        answered.append(1)
        return answer(*args, **kwargs)

    monkeypatch.setattr(datagen, "answer_batch", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        train_drafter(tiny_recipe(tmp_path), target_name, tmp_path / "run", evaluate=False, log=lambda m: None)
    shards = list(datagen.DataRecipe.named("tiny-test").folder.glob("answers/shard-*.pt"))
    assert len(shards) == 1 and not (tmp_path / "run" / "checkpoint.pt").exists()
    monkeypatch.setattr(datagen, "answer_batch", answer)
    said = []
    res = train_drafter(tiny_recipe(tmp_path), target_name, tmp_path / "run", resume=True, evaluate=False,
                        log=said.append, stop_after=2)
    assert res.steps == 2 and any("no checkpoint" in m and "step 0" in m for m in said), said
    assert any(m.startswith("answers: 1 of") and "already done" in m for m in said), said  # the first shard kept
    with pytest.raises(MambaspecError, match="no run in .* to resume"):
        train_drafter(tiny_recipe(tmp_path), target_name, tmp_path / "elsewhere", resume=True, log=lambda m: None)


def test_plan_says_what_runs_and_roughly_how_long(tmp_path, monkeypatch):
    """Before a run starts: each data set (made, partly made, not made), training and evaluation, with rough times;
    the shipped recipe takes hours, the quickstart minutes."""
    from mambaspec.training.plan import describe_run

    from mambaspec.training.data_recipe import DataRecipe

    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path))
    shipped = "\n".join(describe_run(DrafterRecipe.load(recipes_dir() / "drafters" / "mamba2-smollm2.yaml"),
                                     "smollm2-135m"))  # broad-v1's packs are committed: nothing to make
    assert "data set broad-v1" in shipped and "made (all 214 restored at the start from recipes/data/packs/" in shipped
    monkeypatch.setattr(DataRecipe, "packs", property(lambda self: tmp_path / "no-packs" / self.name))
    full = describe_run(DrafterRecipe.load(recipes_dir() / "drafters" / "mamba2-smollm2.yaml"), "smollm2-135m")
    text = "\n".join(full)
    assert ("data set broad-v1" in text and "not made yet" in text and "batches of 32 prompts" in text
            and "1,200 steps" in text)
    assert full[-1].strip().startswith("about ") and full[-1].endswith(" h in all"), full[-1]
    assert "writes 2,400 user turns (~" in text
    raw = tmp_path / "data" / "broad-v1" / "magpie-raw.jsonl"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(f'{{"batch": {b}}}\n' for b in range(10)))  # 10 batches of 32 turns
    again = "\n".join(describe_run(DrafterRecipe.load(recipes_dir() / "drafters" / "mamba2-smollm2.yaml"),
                                   "smollm2-135m"))
    assert "writes 2,080 user turns (of 2,400) (~" in again
    from mambaspec.training.datapack import write_pack

    turns = tmp_path / "elsewhere"  # turns packed on another machine (batches 9-11) count as made too, once
    turns.mkdir()
    (turns / "magpie-raw.jsonl").write_text("".join(f'{{"batch": {b}}}\n' for b in (9, 10, 11)))
    write_pack(turns, DataRecipe.named("broad-v1").packs, "key", log=lambda m: None)
    assert "writes 2,016 user turns (of 2,400) (~" in "\n".join(
        describe_run(DrafterRecipe.load(recipes_dir() / "drafters" / "mamba2-smollm2.yaml"), "smollm2-135m"))
    quick = DrafterRecipe.load(recipes_dir() / "drafters" / "quickstart.yaml")
    lines = describe_run(quick, "smollm2-135m")
    assert lines[-1].endswith(" min in all") and int(lines[-1].split()[1]) <= 5, lines
    answers = tmp_path / "data" / "quickstart" / "answers"
    answers.mkdir(parents=True)
    (answers.parent / "plan.json").write_text(json.dumps({"batches": 7, "planned": 7}))
    for i in range(3):
        (answers / f"shard-{i:05d}.pt").write_bytes(b"")
    assert "3 of 7 batches answered" in "\n".join(describe_run(quick, "smollm2-135m"))
    assert describe_run(quick, "smollm2-135m", data_only=True)[1].endswith("(~30 s)")  # 4 batches of 16 x 96 slots
    relabelled = DrafterRecipe.load(recipes_dir() / "drafters" / "relabel" / "target.yaml")
    assert "the target labels 300,000 tokens of stdlib-code with its own predictions, cached (~20 min when not " \
           "cached yet)" in "\n".join(describe_run(relabelled, "smollm2-135m"))


def test_data_set_resumes_shard_by_shard(tmp_path, tiny_dir, cache):
    """An interrupted data set is finished by the next run, with the same rows as an uninterrupted one."""
    import mambaspec.training.datagen as datagen

    _target_named(tmp_path, tiny_dir)
    recipe = datagen.DataRecipe.named("tiny-test")
    target = load_model(tiny_dir["target"], ModelOptions(device="cpu"))
    folder = datagen.make_data(recipe, lambda: target, log=lambda m: None, max_batches=1)
    assert len(list((folder / "answers").glob("shard-*.pt"))) == 1
    datagen.make_data(recipe, lambda: target, log=lambda m: None)
    rows = list(datagen.read_shards(folder))
    assert len(rows) == 6 and sum(r["split"] == "heldout" for r in rows) == 2
    assert all(r["topk_ids"].shape == (len(r["ids"]) - r["prompt_len"], 4) for r in rows)
    calls = []
    datagen.make_data(recipe, lambda: calls.append(1), log=lambda m: None)  # complete: the target is not loaded
    assert not calls
    for shard in (folder / "answers").glob("shard-*.pt"):  # made again a batch a window: it says what is left
        shard.unlink()
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAMBASPEC_GEN_ROWS", "1")
        datagen.make_data(recipe, lambda: target, log=said.append)
    progress = [m for m in said if m.startswith("answers: batch ")]
    assert "; 1 to go, ~" in progress[0] and "at this run's pace" in progress[0] and "to go" not in progress[-1], said
    assert [r["ids"].tolist() for r in datagen.read_shards(folder)] == [r["ids"].tolist() for r in rows]


def test_data_set_budget_grows_and_changed_settings_are_refused(tmp_path, tiny_dir, cache):
    """A budget (answers.batches) may grow or go; other settings changing under an interrupted set is refused
    (its shards would be numbered differently: a resume would duplicate and lose prompts)."""
    import mambaspec.training.datagen as datagen

    _target_named(tmp_path, tiny_dir)
    path = tmp_path / "recipes" / "data" / "tiny-test.yaml"
    path.write_text(path.read_text().replace("batch_size: 4,", "batch_size: 4, batches: 1,"))
    target = load_model(tiny_dir["target"], ModelOptions(device="cpu"))
    folder = datagen.make_data(datagen.DataRecipe.named("tiny-test"), lambda: target, log=lambda m: None)
    assert 0 < len(list(datagen.read_shards(folder))) < 6  # the budget: the first batch only
    path.write_text(path.read_text().replace(" batches: 1,", ""))  # no budget: the whole plan
    datagen.make_data(datagen.DataRecipe.named("tiny-test"), lambda: target, log=lambda m: None)
    rows = list(datagen.read_shards(folder))
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    path.write_text(path.read_text().replace("batch_size: 4", "batch_size: 3"))
    with pytest.raises(MambaspecError, match="other settings"):
        datagen.make_data(datagen.DataRecipe.named("tiny-test"), lambda: target, log=lambda m: None)


def test_a_drafter_recipe_can_use_a_prefix_of_a_data_set(tmp_path, tiny_dir, cache):
    """``batches: N`` on a distill source: the first N batches of the set's plan, made if missing, whatever the
    data recipe's own budget (e.g. a set still being made elsewhere); the plan line says so."""
    import mambaspec.training.datagen as datagen
    from mambaspec.training.plan import describe_run

    target = _target_named(tmp_path, tiny_dir)
    recipe = tiny_recipe(tmp_path, data=[{"source": "distill", "set": "tiny-test", "batches": 1}])
    assert "the first 1 batches" in "\n".join(describe_run(recipe, target, data_only=True))
    folder, = datagen.make_recipe_data(recipe, target)
    assert "its first 1 batches made" in "\n".join(describe_run(recipe, target, data_only=True))
    first = list(datagen.read_shards(folder))
    assert 0 < len(first) < 6 and len(list(folder.glob("answers/shard-*.pt"))) == 1
    datagen.make_data(datagen.DataRecipe.named("tiny-test"), lambda: load_model(target), log=lambda m: None)
    assert len(list(datagen.read_shards(folder))) == 6  # the whole plan, made by the set's own recipe
    datagen.make_recipe_data(recipe, target)
    assert [r["id"] for r in datagen.read_shards(folder)] == [r["id"] for r in first]


def test_draft_vocab_maps_back_to_target_ids():
    counts = torch.zeros(100)
    counts[[7, 42, 99, 3]] = torch.tensor([5.0, 9.0, 1.0, 2.0])
    v = DraftVocab.from_counts(counts, 3, always=[99])
    assert v.target_ids == [7, 42, 99] and v.size == 4
    ids = torch.tensor([42, 3, 99, 7])
    assert v.encode(ids).tolist() == [1, 3, 2, 0]  # 3 is outside -> the shared bucket (id 3 = K)
    assert v.to_target.tolist() == [7, 42, 99]  # drafter ids -> target ids


@pytest.mark.parametrize("content,needle", [
    ("steps: [1, 2", "not valid YAML"),
    ("arch: rwkv", "unknown arch"),
    ("stepz: 10", "unknown setting 'stepz'"),
    ("steps: ten", "'steps' must be int"),
    ("data: []", "no source"),
    ("data: [{source: web}]", "data[0]"),
    ("data: [{source: distill}]", "names a data set"),
    ("data: [{source: files, paths: [x], batches: 2}]", "batches: is how many"),
    ("data: [{source: distill, set: broad-v1, batches: 0}]", "batches: is how many"),
    ("curriculum: [[0]]", "curriculum"),
    ("- 1\n- 2", "mapping"),
])
def test_recipe_errors(tmp_path, content, needle):
    path = tmp_path / "r.yaml"
    path.write_text(content)
    with pytest.raises(MambaspecError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        DrafterRecipe.load(path)


def test_shipped_recipes_are_valid():
    from mambaspec.training.data_recipe import DataRecipe

    paths = sorted((recipes_dir() / "drafters").glob("**/*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        recipe = DrafterRecipe.load(path)
        for src in recipe.data:
            if src["source"] == "distill":
                assert DataRecipe.named(src["set"]).target == "smollm2-135m", path


def test_llama_baseline_matches_mamba2_size():
    r = DrafterRecipe.load(recipes_dir() / "drafters" / "mamba2-smollm2.yaml")
    sizes = {}
    for arch in ("mamba2", "llama"):
        m = build_model(DrafterRecipe.from_dict({**yaml.safe_load(yaml.safe_dump(r.__dict__)), "arch": arch}), 8193, 2)
        sizes[arch] = sum(p.numel() for p in m.parameters())
    assert abs(sizes["llama"] - sizes["mamba2"]) / sizes["mamba2"] < 0.15, sizes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mamba2-smollm2", "llama-smollm2"])
def test_shipped_drafter_loads_and_drafts(name, smollm2):
    """The shipped drafter loads by name with SmolLM2, proposes tokens the target accepts, and the
    output is the target's own greedy output."""
    from mambaspec.core.engine import SpeculativeGenerator
    from mambaspec.loading.models import registry
    from mambaspec.loading.pipeline import Pipeline, load_drafter

    def pipeline(drafter_name):
        d = load_drafter(drafter_name, smollm2)
        return Pipeline(smollm2, d, SpeculativeGenerator(smollm2.model, d, tokenizer=smollm2.tokenizer))

    pipe, plain = pipeline(name), pipeline("none")
    prompt = 'def add(a, b):\n    """Return the sum of a and b."""\n'
    spec = pipe.generate(prompt, chat=False, max_new_tokens=24, tree="1,1,1,1")
    ref = plain.generate(prompt, chat=False, max_new_tokens=24)
    assert spec.new_token_ids == ref.new_token_ids
    assert spec.stats.drafter == name and spec.stats.mean_accept_len > 1.2
    assert sum(p.stat().st_size for p in registry()[name].shipped_path.iterdir()) < 10 * 2**20
