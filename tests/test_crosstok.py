"""Drafting across tokenizers: greedy output is the target's own, whatever the drafter's tokenizer.

Tiny random models with small tokenizers trained here in two real styles (byte-level BPE as in
SmolLM2, SentencePiece-like with byte fallback as in Gemma) and a character-level one.
"""

import pytest
import torch

from mambaspec import (Drafter, DraftTree, MambaDrafter, MambaspecError, SamplingConfig, SpeculativeGenerator,
                       TreeShape)
from mambaspec.drafters import make_drafter
from mambaspec.drafters.crosstok import CrossTokenizerDrafter, _trie
from mambaspec.loading.pipeline import adapt_drafter
from mambaspec.drafters.vocab import DraftVocab
from tiny import char_tokenizer, reference_greedy, tiny_llama, tiny_mamba2, trained_tokenizer

MAX_NEW = 24
PROMPTS = [
    "def add(a, b):\n    return a + b\n\n\n",
    "Grüße aus Köln — 東京 🚀 naïve café",
    "x  =  [1,\t2,\t\t3]     # runs   of   spaces   ",
    "The quick brown fox",
    "   \n\n  \t",
    "a",
]
PAIRS = [("metaspace", "bytelevel"), ("bytelevel", "metaspace"), ("char", "bytelevel")]  # (target, drafter)


@pytest.fixture(scope="module")
def toks():
    return {"bytelevel": trained_tokenizer("bytelevel"), "metaspace": trained_tokenizer("metaspace"),
            "char": char_tokenizer()}


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class TextOracle(Drafter):
    """Drafts the true continuation, known in advance, in its own tokenizer: with it, acceptance
    measures only how well drafts survive the trip across tokenizers."""

    name = "oracle"

    def __init__(self, tokenizer, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = text

    def prefill(self, ids):
        self.ids = list(ids)

    def commit(self, tree, path, bonus):
        self.ids += [tree.tokens[i] for i in path] + [bonus]

    def draft(self, root_token, shape, sampling, generator=None):
        seen = _decode(self.tokenizer, self.ids)
        assert self.text.startswith(seen), "the drafter's text must be the committed text"
        tree = DraftTree.root_only(root_token)
        upcoming = self.tokenizer(self.text[len(seen):], add_special_tokens=False)["input_ids"]
        for tok in upcoming[: shape.depth]:
            tree.add(tok, len(tree) - 1)
        return tree

    def state_bytes(self):
        return 0


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[1]}-drafts-for-{p[0]}")
@pytest.mark.parametrize("shape", ["1,1,1,1", "3,2,2,1,1"])
def test_greedy_matches_target_generate(toks, pair, shape):
    tt, dt = toks[pair[0]], toks[pair[1]]
    target = tiny_llama(0, vocab=len(tt))
    drafter = adapt_drafter(MambaDrafter(tiny_mamba2(2, vocab=len(dt)), dt), tt)
    assert isinstance(drafter, CrossTokenizerDrafter)
    gen = SpeculativeGenerator(target, drafter, tokenizer=tt)
    for prompt in PROMPTS:
        ids = tt(prompt)["input_ids"]
        result = gen.generate(ids, max_new_tokens=MAX_NEW, tree=shape)
        assert result.new_token_ids == reference_greedy(target, ids, MAX_NEW), prompt


def test_transformer_drafter_across_tokenizers(toks):
    tt, dt = toks["metaspace"], toks["bytelevel"]
    target = tiny_llama(0, vocab=len(tt))
    gen = SpeculativeGenerator(target, CrossTokenizerDrafter(make_drafter(tiny_llama(3, 1, 32, vocab=len(dt)), dt), tt))
    for prompt in PROMPTS:
        ids = tt(prompt)["input_ids"]
        assert gen.generate(ids, max_new_tokens=MAX_NEW, tree="2,2,1").new_token_ids == \
            reference_greedy(target, ids, MAX_NEW)


def test_drafter_with_a_draft_vocabulary(toks):
    """A trained drafter predicts K mapped ids of its own tokenizer (vocab.py): translated all the same."""
    tt, dt = toks["metaspace"], toks["bytelevel"]
    vocab = DraftVocab(list(range(4, 104)), len(dt))
    target = tiny_llama(0, vocab=len(tt))
    drafter = CrossTokenizerDrafter(MambaDrafter(tiny_mamba2(2, vocab=vocab.size), dt, draft_vocab=vocab), tt)
    gen = SpeculativeGenerator(target, drafter)
    for prompt in PROMPTS[:3]:
        ids = tt(prompt)["input_ids"]
        result = gen.generate(ids, max_new_tokens=MAX_NEW, tree="2,1,1")
        assert result.new_token_ids == reference_greedy(target, ids, MAX_NEW)
        assert result.stats.mean_tree_nodes > 0


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_translated_drafts_are_accepted(tiny_target, kind, toks):
    """A drafter that knows the continuation gets nearly all of it accepted through another tokenizer
    (the character-level target has one tokenization per text, so translated drafts are exact)."""
    tt = toks["char"]
    accept = []
    for prompt in PROMPTS:
        ids = tt(prompt)["input_ids"]
        ref = reference_greedy(tiny_target, ids, MAX_NEW)
        oracle = TextOracle(toks[kind], _decode(tt, ids + ref))
        result = SpeculativeGenerator(tiny_target, CrossTokenizerDrafter(oracle, tt), tokenizer=tt).generate(
            ids, max_new_tokens=MAX_NEW, tree="1,1,1,1")
        assert result.new_token_ids == ref
        accept.append(result.stats.mean_accept_len)
    assert sum(accept) / len(accept) > 4.0, accept  # at most 5 (4 drafts + the bonus); specials are never drafted


@pytest.mark.parametrize("inner", ["mamba2", "llama"])
def test_drafter_follows_committed_text(toks, inner):
    """After every round the drafter has read exactly the committed text, its state is that of a fresh
    prefill of its tokens, and those are (almost always) the drafter's own tokenization of the text."""
    tt, dt = toks["metaspace"], toks["bytelevel"]
    model = tiny_mamba2(2, vocab=len(dt)) if inner == "mamba2" else tiny_llama(3, 1, 32, vocab=len(dt))
    drafter = CrossTokenizerDrafter(make_drafter(model, dt), tt)
    prefills = []
    real_prefill = drafter.inner.prefill
    drafter.inner.prefill = lambda ids: (prefills.append(len(ids)), real_prefill(ids))
    text = "def f(x):\n    return x  \t\t+ 1\n\n\n   Grüße aus Köln — 東京 🚀 ok, the  there is\n" * 2
    stream = tt(text)["input_ids"]
    committed, canonical, rounds = stream[:6], 0, 0
    drafter.prefill(committed)
    while len(committed) < len(stream):
        tree = drafter.draft(committed[-1], TreeShape((2, 1, 1)), SamplingConfig())
        node, path = 0, []  # greedy verification against the stream: accept drafts that match it
        while (kid := next((c for c in tree.children(node) if len(committed) + len(path) < len(stream)
                            and tree.tokens[c] == stream[len(committed) + len(path)]), None)) is not None:
            node = kid
            path.append(kid)
        committed = stream[: len(committed) + len(path) + 1]
        drafter.commit(tree, path, committed[-1])
        assert _decode(dt, drafter.drafter_ids) == drafter.text
        if drafter.settled == len(committed):
            assert drafter.text == _decode(tt, committed)
        fresh = make_drafter(model, dt)
        fresh.prefill(drafter.drafter_ids)
        torch.testing.assert_close(drafter.inner.root_logits, fresh.root_logits, rtol=1e-4, atol=1e-4)
        canonical += drafter.drafter_ids == dt(drafter.text)["input_ids"]
        rounds += 1
    assert max(prefills[1:], default=0) <= 2 * drafter.lookbehind  # rolled back and fed, not read again
    assert canonical >= 0.9 * rounds


def test_sampling_is_refused_in_one_line(toks):
    tt, dt = toks["metaspace"], toks["bytelevel"]
    gen = SpeculativeGenerator(tiny_llama(0, vocab=len(tt)),
                               CrossTokenizerDrafter(MambaDrafter(tiny_mamba2(2, vocab=len(dt)), dt), tt))
    with pytest.raises(MambaspecError, match="greedy only"):
        gen.generate(tt("hello")["input_ids"], max_new_tokens=4, sampling=SamplingConfig(temperature=0.7))


def test_modes(toks):
    tt, dt = toks["metaspace"], toks["bytelevel"]
    same = MambaDrafter(tiny_mamba2(2, vocab=len(tt)), trained_tokenizer("metaspace"))
    other = MambaDrafter(tiny_mamba2(2, vocab=len(dt)), dt)
    assert adapt_drafter(same, tt, "auto") is same
    assert isinstance(adapt_drafter(same, tt, "on"), CrossTokenizerDrafter)
    assert adapt_drafter(same, tt, "off") is same
    assert isinstance(adapt_drafter(other, tt, "auto"), CrossTokenizerDrafter)
    with pytest.raises(MambaspecError, match="different tokenizer"):
        adapt_drafter(other, tt, "off")
    with pytest.raises(MambaspecError, match="cross-tokenizer mode"):
        adapt_drafter(other, tt, "sometimes")


def test_trie_merges_prefixes_in_bfs_order():
    tree = _trie(9, [[1, 2, 3], [1, 2, 4], [5], [1, 6], []], max_nodes=10)
    assert tree.tokens == [9, 1, 5, 2, 6, 3, 4]
    assert tree.parents == [-1, 0, 0, 1, 1, 3, 3]
    assert tree.depths == [0, 1, 1, 2, 2, 3, 3]
    assert len(_trie(9, [[1, 2, 3], [4, 5]], max_nodes=4)) == 5  # root + the first 4 nodes
