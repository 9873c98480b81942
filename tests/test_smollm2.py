"""Lossless greedy decoding on the real SmolLM2-135M target (slow: run with `pytest -m slow`).

20 varied prompts × shapes × drafters {random Mamba1, random Mamba2, the shipped drafters, the
target itself as an "oracle" drafter}: every output equals the target's own `generate(do_sample=False)`.
"""

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from mambaspec import MambaDrafter, SpeculativeGenerator, TransformerDrafter
from mambaspec.core.engine import encode_prompt
from mambaspec.loading.pipeline import load_drafter
from mambaspec.loading.trees import resolve_tree

pytestmark = pytest.mark.slow

SHAPES = ["1", "1,1,1,1", "2,2,1", "3,2,2,1,1", "dynamic"]
NEW = 16
TEXTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Write a haiku about the sea.",
    "Explain what a hash map is in two sentences.",
    "import numpy as np\n\nx = np.arange(10)\n",
    "Translate to French: The cat sleeps on the sofa.",
    "List three prime numbers greater than 100.",
    "class Stack:\n    def __init__(self):\n        ",
    "Résumé: café, naïve, jalapeño — and 日本語 text.",
    "    indented    text   with   runs   of   spaces\n\n\n",
    "What is 17 * 23?",
    "SELECT name, COUNT(*) FROM users GROUP BY",
    "Once upon a time, in a small village,",
    "The capital of Australia is",
    "for i in range(10):\n\tprint(i)\n",
    "Give me a JSON object with keys a and b.",
    "Why is the sky blue?",
    "<html><body><h1>Title</h1>",
    "1, 1, 2, 3, 5, 8, 13,",
    "Summarize: Speculative decoding drafts tokens with a small model and verifies them with a large one.",
    "emoji test 🙂🚀 and math: ∑ x² ≤ ∞",
]


@pytest.fixture(scope="module")
def target(smollm2):
    return smollm2  # the settings generate uses (oneDNN linears, packed attention); the reference too


@pytest.fixture(scope="module")
def cases(target):
    prompts = [encode_prompt(target.tokenizer, t, chat=i % 2 == 0) for i, t in enumerate(TEXTS)]
    eos = target.tokenizer.eos_token_id
    refs = []
    for p in prompts:
        out = target.model.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False, eos_token_id=eos,
                                    pad_token_id=eos, attention_mask=torch.ones(1, len(p), dtype=torch.long))
        refs.append(out[0, len(p):].tolist())
    return prompts, refs


def _random_mamba(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "mamba1":
        cfg = MambaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, state_size=8)
        return MambaForCausalLM(cfg).eval()
    cfg = Mamba2Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16,
                       num_heads=8, n_groups=1, expand=2)
    return Mamba2ForCausalLM(cfg).eval()


DRAFTERS = ["random-mamba1", "random-mamba2", "mamba2-smollm2", "llama-smollm2", "eagle-smollm2",
            "mamba2-smollm2+lookup", "oracle"]


def _drafter(name, target):
    if name.startswith("random-"):
        return MambaDrafter(_random_mamba(name.split("-")[1], len(target.tokenizer)))
    if name == "oracle":
        return TransformerDrafter(target.model)
    return load_drafter(name, target)


@pytest.mark.parametrize("name", DRAFTERS)
def test_smollm2_greedy_is_lossless(target, cases, name):
    gen = SpeculativeGenerator(target.model, _drafter(name, target), tokenizer=target.tokenizer)
    prompts, refs = cases
    for shape in SHAPES:
        for p, ref in zip(prompts, refs):
            assert gen.generate(p, max_new_tokens=NEW, tree=resolve_tree(shape)).new_token_ids == ref, \
                (name, shape, p[-5:])
