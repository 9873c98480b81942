"""The EAGLE-style head (drafters.eagle): lossless in the engine, fed the target's true hidden states, sampled
output follows the target, trained end to end by pretrain-drafter (arch eagle), refused for another target."""

import pytest
import torch

from mambaspec import MambaspecError, ModelOptions, SamplingConfig, SpeculativeGenerator
from mambaspec.core.kv import final_hidden
from mambaspec.drafters.eagle import EagleDrafter, EagleHead
from mambaspec.drafters.vocab import DraftVocab
from mambaspec.loading.trees import resolve_tree
from test_sampling import ALPHA, _exact_two_token_joint, _joint_counts, _pvalue, small_vocab_target
from tiny import VOCAB, prompts, reference_greedy


def eagle_for(target, seed=1, vocab=VOCAB):
    cfg = target.config
    torch.manual_seed(seed)
    head = EagleHead(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, 64, vocab + 1).eval()
    with torch.no_grad():
        head.head.weight[:vocab] = target.lm_head.weight * 0.5  # drafts that the target sometimes accepts
    return EagleDrafter(head, target.get_input_embeddings(), None, "eagle", DraftVocab(list(range(vocab)), vocab))


@pytest.mark.parametrize("tree", ["1", "1,1,1,1", "2,2,1", "dynamic"])
def test_eagle_is_lossless(tiny_target, tree):
    gen = SpeculativeGenerator(tiny_target, eagle_for(tiny_target))
    for p in prompts(10):
        assert (gen.generate(p, max_new_tokens=20, tree=resolve_tree(tree)).new_token_ids
                == reference_greedy(tiny_target, p, 20))


def test_eagle_reads_the_targets_true_hidden_states(tiny_target):
    drafter = eagle_for(tiny_target)
    seen = []
    real = drafter.take_hidden
    drafter.take_hidden = lambda h: (seen.append(h.clone()), real(h))
    prompt = prompts(7)[6]
    out = SpeculativeGenerator(tiny_target, drafter).generate(prompt, max_new_tokens=16, tree="2,1").new_token_ids
    with final_hidden(tiny_target) as states, torch.inference_mode():
        tiny_target(input_ids=torch.tensor([prompt + out]))
    fed = torch.cat(seen)  # the root and the accepted nodes of every committed round, in order
    truth = states[0][0, len(prompt) - 1:len(prompt) - 1 + len(fed)]
    torch.testing.assert_close(fed, truth, rtol=1e-4, atol=1e-4)


def test_eagle_sampling_follows_target():
    target = small_vocab_target()
    target.generation_config.eos_token_id = None
    gen = SpeculativeGenerator(target, eagle_for(target, vocab=12), eos_token_ids=[])
    sampling = SamplingConfig(temperature=1.0)
    exact = _exact_two_token_joint(target, [3, 7, 1], sampling)
    counts = _joint_counts(gen, [3, 7, 1], sampling, 2500, "2,2", 12)
    assert _pvalue(counts, exact) > ALPHA


def test_train_an_eagle_head_and_use_it(tmp_path, tiny_dir, monkeypatch):
    """pretrain-drafter --arch eagle on the tiny target: features cached, loss falls, the head loads by folder,
    decodes losslessly, and is refused for a target of another width or through another tokenizer."""
    from test_train import _target_named, cache as _cache  # noqa: F401  (the fixture's set-up, reused)
    from mambaspec.loading.models import load_model
    from mambaspec.loading.pipeline import load_drafter
    from mambaspec.training.loop import train_drafter
    from mambaspec.training.recipe import DrafterRecipe
    import mambaspec.training.data_recipe as data_recipe

    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / "cache"))
    recipes = tmp_path / "recipes"
    (recipes / "data").mkdir(parents=True)
    (recipes / "data" / "tiny-test.yaml").write_text(
        f"name: tiny-test\ntarget: {tiny_dir['target']}\nseed: 0\nstdlib_functions: 6\n"
        "answers: {max_new_tokens: 8, batch_size: 4, top_k_logprobs: 4}\nheldout_per_domain: 2\n")
    monkeypatch.setattr(data_recipe, "recipes_dir", lambda: recipes)
    recipe = DrafterRecipe.from_dict(dict(arch="eagle", vocab_top_k=40, seq_len=16, batch_size=4, steps=10,
                                          lr=0.005, warmup_steps=2, checkpoint_every=5, log_every=2,
                                          eagle_intermediate=32, eagle_tokens=5000, eval_prompts=2,
                                          eval_new_tokens=8, data=[{"source": "distill", "set": "tiny-test"}]))
    res = train_drafter(recipe, tiny_dir["target"], tmp_path / "eagle", log=lambda m: None)
    losses = [float(r.split(",")[1]) for r in (tmp_path / "eagle" / "metrics.csv").read_text().splitlines()[1:]]
    assert losses[-1] < losses[0] and res.eval["mean_accept_len_1111"] >= 1
    target = load_model(tiny_dir["target"], ModelOptions(device="cpu"))
    drafter = load_drafter(str(tmp_path / "eagle"), target)
    assert isinstance(drafter, EagleDrafter)
    p = prompts(3)[2]
    gen = SpeculativeGenerator(target.model, drafter)
    assert gen.generate(p, max_new_tokens=12, tree="2,1").new_token_ids == reference_greedy(target.model, p, 12)
    with pytest.raises(MambaspecError, match="another tokenizer"):
        load_drafter(str(tmp_path / "eagle"), target, cross_tokenizer="on")
    other = load_model(tiny_dir["llama"], ModelOptions(device="cpu"))  # 32 wide, not 64
    with pytest.raises(MambaspecError, match="serves only its own target"):
        load_drafter(str(tmp_path / "eagle"), other)


def test_feature_cache_checks_rows_and_keeps_the_budget(tmp_path, tiny_dir, monkeypatch):
    """Cached target features serve a row only when they have its length; the token budget picks the first rows."""
    from mambaspec.loading.models import load_model
    from mambaspec.training.eagle import target_features

    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / "cache"))
    target = load_model(tiny_dir["target"], ModelOptions(device="cpu")).model
    rows = [{"key": f"r{i}", "ids": list(range(3, 8 + i))} for i in range(4)]  # 5, 6, 7, 8 tokens
    quiet = lambda m: None  # noqa: E731
    assert list(target_features(target, rows, "t", 11, quiet)) == ["r0", "r1"]
    rows[0]["ids"] = rows[0]["ids"] + [9]  # another row under a cached key (a data set made anew)
    assert len(target_features(target, rows, "t", 11, quiet)["r0"]) == 6
    assert list(target_features(target, rows, "t", 3, quiet)) == ["r0"]  # a lower budget: fewer rows
