"""Distillation data: the batched (GPU) generation path makes the same shards as the per-batch reference path;
multi-turn conversations, long answers and a deadline; broad-v1's settings stay as its finished data set has them."""

import json
import time

import pytest
import torch

from mambaspec import ModelOptions
from mambaspec.loading.models import load_model
from tiny import EOS, char_tokenizer, save_tiny, tiny_llama

RECIPE = """name: tiny-mt
target: TARGET
seed: 0
stdlib_functions: 16
answers: {max_new_tokens: 10, batch_size: 3, top_k_logprobs: 4, sampled_fraction: 0.34, temperature: 0.9, top_p: 0.95}
heldout_per_domain: 2
multiturn:
  conversations: 6
  turns: [2, 3]
  followups: {any: ["Why?", "Give an example.", "Shorter, please."]}
long_answers: {fraction: 0.5, max_new_tokens: 24}
"""


@pytest.fixture(scope="module")
def eos_target(tmp_path_factory):
    """A tiny target that ends its answers now and then: EOS takes the place of a token it often predicts."""
    model = tiny_llama(0)
    with torch.no_grad():
        common = model(torch.tensor([[5, 6, 7, 8, 9, 10]])).logits[0].argmax(-1)[-1]
        model.lm_head.weight[EOS] = model.lm_head.weight[common] * 1.01
    return save_tiny(tmp_path_factory.mktemp("eos") / "target", model, char_tokenizer())


@pytest.fixture()
def recipes(tmp_path, monkeypatch, eos_target):
    import mambaspec.training.data_recipe as data_recipe

    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "tiny-mt.yaml").write_text(RECIPE.replace("TARGET", eos_target))
    monkeypatch.setattr(data_recipe, "recipes_dir", lambda: folder)
    return folder


def _make(tmp_path, monkeypatch, where: str, target, **kw):
    import mambaspec.training.datagen as datagen

    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / where))
    folder = datagen.make_data(datagen.DataRecipe.named("tiny-mt"), lambda: target, log=lambda m: None, **kw)
    return folder, list(datagen.read_shards(folder))


def test_batched_passes_make_the_same_shards_as_one_batch_at_a_time(tmp_path, monkeypatch, recipes, eos_target):
    target = load_model(eos_target, ModelOptions(device="cpu", dtype="float32"))
    folder, one = _make(tmp_path, monkeypatch, "one", target, pass_rows=1)
    _, many = _make(tmp_path, monkeypatch, "many", target, pass_rows=64)
    assert [r["id"] for r in one] == [r["id"] for r in many]
    for a, b in zip(one, many):
        assert a["prompt_len"] == b["prompt_len"] and a["mode"] == b["mode"] and a["split"] == b["split"]
        assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["topk_ids"], b["topk_ids"]), a["id"]
        assert torch.allclose(a["topk_logp"].float(), b["topk_logp"].float(), atol=2e-2)
    # what the recipe asks for happened: sampled and greedy batches, later turns, long answers
    assert {r["mode"] for r in one} == {"sampled", "greedy"}
    later = [r for r in one if "/turn" in r["id"]]
    assert later and all(r["domain"] == "multiturn" for r in later)
    first = {r["id"]: r for r in one}
    for r in later:  # a later turn continues the conversation: the earlier turn's prompt and answer, ended by EOS
        before = first[r["id"].split("/")[0]]
        assert r["ids"][: len(before["ids"])].tolist() == before["ids"].tolist() and int(before["ids"][-1]) == EOS
    assert max(len(r["ids"]) - r["prompt_len"] for r in one) > 10
    assert all(len(r["ids"]) - r["prompt_len"] <= 24 for r in one)
    assert all(r["topk_ids"].shape == (len(r["ids"]) - r["prompt_len"], 4) for r in one)
    prompts = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]
    held = [p for p in prompts if p["domain"] == "multiturn" and p["split"] == "heldout"]
    assert len(held) == 2 and all(p["followups"] for p in held)


def test_a_deadline_keeps_the_finished_prefix_and_a_rerun_finishes(tmp_path, monkeypatch, recipes, eos_target):
    target = load_model(eos_target, ModelOptions(device="cpu", dtype="float32"))
    folder, rows = _make(tmp_path, monkeypatch, "c", target, deadline=time.time() - 1)
    assert rows == [] and json.loads((folder / "plan.json").read_text())["batches"] == 0
    monkeypatch.setenv("MAMBASPEC_DATA_UNTIL", str(time.time() - 1))  # the script's way: the same, from the env
    assert _make(tmp_path, monkeypatch, "c", None)[1] == []  # out of time: the target is not even loaded
    monkeypatch.delenv("MAMBASPEC_DATA_UNTIL")
    _, rows = _make(tmp_path, monkeypatch, "c", target)
    assert len({r["id"] for r in rows}) == len(rows) > 16


def test_new_data_settings_leave_broad_v1_as_made():
    """broad-v1's fingerprint is the one its finished data set (214 shards) records: new fields must not move it."""
    from mambaspec.training.data_recipe import DataRecipe

    assert DataRecipe.named("broad-v1").settings_key() == "1bba6609c157f2e2"
    v2 = DataRecipe.named("broad-v2")
    assert v2.multiturn.conversations > 0 and v2.long_answers.max_new_tokens >= 512
    assert v2.settings_key() != DataRecipe.named("broad-v1").settings_key()
    for name, key in (("gpu-dryrun", "2b8a00cc5cc2eb98"),
                      ("quickstart", "df7c86933579ef2a")):  # as before typed sections
        assert DataRecipe.named(name).settings_key() == key


def test_recipe_sections_are_checked():
    """A misspelt key inside a section is refused with the known ones, like one at the top level."""
    from mambaspec.errors import MambaspecError
    from mambaspec.training.data_recipe import DataRecipe

    recipe = DataRecipe.from_dict({"name": "x", "answers": {"batch_size": 4}})
    assert recipe.answers.batch_size == 4 and recipe.answers.max_new_tokens == 256 and not recipe.magpie
    for raw, said in (({"answers": {"batchsize": 4}}, "answers.batchsize"),
                      ({"magpie": {"attempt": 9}}, "magpie.attempt"),
                      ({"documents": [1]}, "'documents' must be a mapping"), ({"sed": 1}, "'sed'"),
                      ({"magpie": {"attempts": 9, "temperature": 0}}, "magpie: the target samples"),
                      ({"answers": {"sampled_fraction": 0.2, "temperature": 0}}, "answers: sampled_fraction")):
        with pytest.raises(MambaspecError, match=said):
            DataRecipe.from_dict({"name": "x", **raw})


def test_windows_keep_plan_order_and_answer_long_prompts_apart():
    from mambaspec.training.datagen import AnswerBatch, _windows

    def batch(i, n, length):
        return AnswerBatch(i, [{"ids": [0] * length} for _ in range(n)], False)

    plan = [batch(0, 4, 10), batch(1, 4, 10), batch(2, 1, 1200), batch(3, 4, 10), batch(4, 1, 1500), batch(5, 4, 10),
            batch(6, 1, 1100), batch(7, 4, 10)]
    assert [[b.index for b in w] for w in _windows(plan, 1)] == [[i] for i in range(8)]  # the reference path
    # up to 8 short rows and 1 long row a window: a ninth short row or a second long prompt starts the next one
    assert [[b.index for b in w] for w in _windows(plan, 8)] == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_man_pages_rendered_side_by_side_are_the_sequential_ones():
    import random

    from mambaspec.training import sources

    if not sources.MAN_DIR.is_dir():
        pytest.skip("no man pages here")
    files = sorted(sources.MAN_DIR.glob("*.1*"))
    random.Random(5).shuffle(files)
    expected = []
    for path in files:
        if len(expected) == 6:
            break
        if text := sources.man_page_text(path):
            expected.append((f"man:{path.name.split('.')[0]}", text))
    assert list(sources.man_pages(6, random.Random(5))) == expected


def test_ended_rows_kept_until_compaction_change_no_answer(eos_target):
    """On a GPU ended rows ride along until an eighth of the batch has ended (no cache copy at every step): the
    answers are those of compacting at once (the CPU reference)."""
    from mambaspec.training.corpus import stdlib_function_prompts
    from mambaspec.training.data_recipe import DataRecipe
    from mambaspec.training.datagen import answer_batches, plan_batches

    target = load_model(eos_target, ModelOptions(device="cpu", dtype="float32"))
    recipe = DataRecipe.from_dict({"name": "x", "answers": {"batch_size": 4, "sampled_fraction": 0.34, "top_p": 0.9}})
    prompts = [{**p, "split": "train", "domain": "code", "source": "s"} for p in stdlib_function_prompts(16, seed=0)]
    plan = plan_batches(prompts, recipe, target.tokenizer)
    now = answer_batches(target.model, plan, 0, EOS, 20, 4, recipe)
    later = answer_batches(target.model, plan, 0, EOS, 20, 4, recipe, slack=0.5)
    lengths = [len(r["ids"]) - r["prompt_len"] for rows in now for r in rows]
    assert min(lengths) < 20 == max(lengths)  # some answers ended early: there was something to carry
    for a, b in zip(sum(now, []), sum(later, [])):
        assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["topk_ids"], b["topk_ids"])
        assert torch.allclose(a["topk_logp"].float(), b["topk_logp"].float(), atol=2e-2)


def test_a_window_out_of_gpu_memory_is_answered_at_half_the_rows(tmp_path, monkeypatch, recipes, eos_target):
    import mambaspec.training.datagen as datagen

    real, said = datagen.answer_batches, []

    def small_gpu(model, batches, *args, **kwargs):
        if sum(len(b.prompts) for b in batches) > 6:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batches, *args, **kwargs)

    monkeypatch.setattr(datagen, "answer_batches", small_gpu)
    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / "c"))
    target = load_model(eos_target, ModelOptions(device="cpu", dtype="float32"))
    folder = datagen.make_data(datagen.DataRecipe.named("tiny-mt"), lambda: target, log=said.append, pass_rows=24)
    plan = json.loads((folder / "plan.json").read_text())
    assert all(datagen.shard_path(folder, i).exists() for i in range(plan["batches"]))
    assert any("out of GPU memory; 6 rows" in line for line in said)


def test_a_pack_carries_the_data_to_a_new_machine(tmp_path, monkeypatch, recipes, eos_target):
    """Shards packed on one machine (in two pack files, each holding only what is new) come back on a fresh one
    without the target; a machine that made only part of the plan goes on from where the packs end."""
    from mambaspec.training.data import distill_stream
    from mambaspec.training.datapack import pack_files, write_pack
    from mambaspec.training.data_recipe import DataRecipe

    target = load_model(eos_target, ModelOptions(device="cpu", dtype="float32"))
    folder, whole = _make(tmp_path, monkeypatch, "made", target)
    packs = DataRecipe.named("tiny-mt").packs
    last = sorted((folder / "answers").glob("shard-*.pt"))[-1]
    moved = last.with_suffix(".later")
    last.rename(moved)  # the first pack holds the shards made so far
    assert write_pack(folder, packs, log=lambda m: None) is not None
    moved.rename(last)
    assert write_pack(folder, packs, log=lambda m: None) is not None and write_pack(folder, packs) is None
    assert len(pack_files(packs)) == 2
    _, back = _make(tmp_path, monkeypatch, "fresh", None)  # no target: nothing is made again
    assert [r["id"] for r in back] == [r["id"] for r in whole]
    assert all(torch.equal(a["ids"], b["ids"]) and a["prompt_len"] == b["prompt_len"] and "topk_ids" not in b
               for a, b in zip(whole, back))
    pack_files(packs)[-1].unlink()  # only the first pack: the rest is made here, as after an interruption
    _, rest = _make(tmp_path, monkeypatch, "partial", target)
    assert [r["id"] for r in rest] == [r["id"] for r in whole] and "topk_ids" in rest[-1]
    stream = distill_stream("d", 1.0, back[:3] + rest[-3:])  # packed rows train on hard labels alone
    known = torch.isfinite(stream.soft_logp[:, 0])
    n_back = sum(len(r["ids"]) for r in back[:3])
    assert not known[:n_back].any() and known[n_back:].any()


def _progress_lines(path) -> list[str]:
    from mambaspec.training.datapack import MAGPIE_RAW, read_blob

    return read_blob(path)["files"][MAGPIE_RAW].splitlines()


def test_magpie_turns_made_before_the_plan_carry_to_a_new_machine(tmp_path):
    """A data set still writing its Magpie turns (no plan yet) packs them; a fresh machine gets them back (keeping
    its own), other settings are refused, and the first shards' pack, which carries the turns, removes the file."""
    from mambaspec.errors import MambaspecError
    from mambaspec.training.datapack import PROGRESS, restore_packs, shard_path, write_pack

    made, packs = tmp_path / "made", tmp_path / "packs"
    made.mkdir()
    line = lambda b: json.dumps({"batch": b, "system": 0, "texts": [f"turn {b}"]})  # noqa: E731
    (made / "magpie-raw.jsonl").write_text(line(0) + "\n" + line(1) + "\n")
    with pytest.raises(MambaspecError, match="no plan.json"):
        write_pack(made, packs, log=lambda m: None)  # no fingerprint: nothing to pack by
    assert write_pack(made, packs, "key", log=lambda m: None) == packs / PROGRESS
    assert write_pack(made, packs, "key", log=lambda m: None) is None  # nothing new

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "magpie-raw.jsonl").write_text(line(2) + "\n")
    said: list[str] = []
    assert restore_packs(packs, fresh, "key", said.append) == 0
    assert [json.loads(x)["batch"] for x in (fresh / "magpie-raw.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert any("2 batches of Magpie turns restored" in s for s in said)
    with pytest.raises(MambaspecError, match="other settings"):
        restore_packs(packs, tmp_path / "other", "another key", lambda m: None)

    (fresh / "plan.json").write_text(json.dumps({"batches": 1, "settings": "key"}))
    assert write_pack(fresh, packs, "key", log=lambda m: None) == packs / PROGRESS  # a plan, no shard: turns still
    assert [json.loads(x)["batch"] for x in _progress_lines(packs / PROGRESS)] == [0, 1, 2]
    shard_path(fresh, 0).parent.mkdir()
    torch.save([{"id": "a", "ids": torch.tensor([1, 2, 3])}], shard_path(fresh, 0))
    assert write_pack(fresh, packs, "key", log=lambda m: None) is not None
    assert not (packs / PROGRESS).exists()


def test_greedy_answers_are_the_targets_own_generate(eos_target):
    """A greedy row of the batched, left-padded decoding (its cache preallocated, compacted as rows end) is what
    transformers' ``generate`` answers to its prompt alone."""
    from mambaspec.training.corpus import stdlib_function_prompts
    from mambaspec.training.data_recipe import DataRecipe
    from mambaspec.training.datagen import answer_batches, plan_batches

    target = load_model(eos_target, ModelOptions(device="cpu", dtype="float32"))
    recipe = DataRecipe.from_dict({"name": "x", "answers": {"batch_size": 6, "sampled_fraction": 0.0}})
    prompts = [{**p, "split": "train", "domain": "code", "source": "s"} for p in stdlib_function_prompts(12, seed=1)]
    rows = sum(answer_batches(target.model, plan_batches(prompts, recipe, target.tokenizer), 0, EOS, 20, 4, recipe), [])
    assert len({len(r["ids"]) - r["prompt_len"] for r in rows}) > 1  # rows ended at different steps
    for r in rows:
        prompt = r["ids"][: r["prompt_len"]].long()[None]
        own = target.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20,
                                    eos_token_id=EOS, pad_token_id=0)[0]
        assert r["ids"].tolist() == own[: len(r["ids"])].tolist() and len(own) == len(r["ids"])


def test_magpie_turns_are_seeded_draws_that_resume(tmp_path, eos_target):
    """Magpie's user turns: a batch's draws are fixed by the seed and the batch (a rerun, or a resumed run that made
    the first batch before, writes the same turns), a turn without EOS is dropped, and ended turns riding along in
    the batch do not change the others' draws."""
    import mambaspec.training.datagen as datagen
    from mambaspec.training.data_recipe import MagpieSettings

    target = load_model(eos_target, ModelOptions(device="cpu", dtype="float32"))
    tok = target.tokenizer
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
    cfg = MagpieSettings(attempts=16, batch_size=8, max_new_tokens=12, temperature=1.0, top_p=0.9)

    def raw(folder, slack=datagen.MAGPIE_SLACK):
        folder.mkdir(exist_ok=True)
        datagen.MAGPIE_SLACK, before = slack, datagen.MAGPIE_SLACK
        try:
            datagen.magpie_prompts(target.model, tok, cfg, 3, folder, log=lambda m: None)
        finally:
            datagen.MAGPIE_SLACK = before
        return [json.loads(x) for x in (folder / "magpie-raw.jsonl").read_text().splitlines()]

    made = raw(tmp_path / "a")
    texts = [t for rec in made for t in rec["texts"]]
    assert [rec["batch"] for rec in made] == [0, 1] and len(texts) == 16
    assert any(t is None for t in texts) and any(t is not None for t in texts)
    assert raw(tmp_path / "b", slack=0.0) == made
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "magpie-raw.jsonl").write_text(json.dumps(made[0]) + "\n")
    assert raw(tmp_path / "c") == made


def test_two_runs_writing_one_file_at_once_each_rename_a_whole_file_of_their_own(tmp_path, monkeypatch):
    """Two trainings started together restore the same data set's packs into one cache: while one writes a shard,
    the other writes and renames it too. Each goes through its own temporary file (a shared one raced: the first
    rename left the second process without its file)."""
    import os

    from mambaspec.config import write_atomically

    path = tmp_path / "shard-00000.pt"

    def this_run_then_the_other(tmp):
        tmp.write_text("whole")  # whole; before its rename, the other run makes and renames its own
        with monkeypatch.context() as m:
            m.setattr(os, "getpid", lambda: 999_999)
            write_atomically(path, lambda t: t.write_text("whole"))

    write_atomically(path, this_run_then_the_other)
    assert path.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == [path.name]
