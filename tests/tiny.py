"""Tiny random models for fast tests of mechanics (never for reported numbers)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

VOCAB = 96
EOS = 3


def _finish(model, seed: int):
    model.eval()
    model.requires_grad_(False)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = EOS
    return model


def tiny_llama(seed: int = 0, layers: int = 2, hidden: int = 64, dtype=torch.float32,
               vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=EOS, bos_token_id=1, pad_token_id=EOS, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    # Spread the logits so that argmax ties (rounding-level differences) are practically impossible.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return _finish(model.to(dtype), seed)


def tiny_mamba(seed: int = 0, dtype=torch.float32) -> MambaForCausalLM:
    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4,
                      eos_token_id=EOS, bos_token_id=1, pad_token_id=EOS)
    return _finish(MambaForCausalLM(cfg).to(dtype), seed)


def tiny_mamba2(seed: int = 0, dtype=torch.float32, vocab: int = VOCAB) -> Mamba2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Mamba2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, state_size=16, expand=2,
                       num_heads=4, head_dim=16, n_groups=1, conv_kernel=4, chunk_size=16,
                       eos_token_id=EOS, bos_token_id=1, pad_token_id=EOS)
    return _finish(Mamba2ForCausalLM(cfg).to(dtype), seed)


def prompts(n: int, seed: int = 1234) -> list[list[int]]:
    """Varied prompts: lengths 1..40, random ids, repeats (EOS excluded)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = [1, 2, 5, 9, 17, 33, 40][i % 7]
        ids = torch.randint(4, VOCAB, (length,), generator=g).tolist()
        if i % 3 == 2:
            ids = (ids[:4] * 10)[:length]
        out.append(ids)
    return out


def reference_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=EOS, pad_token_id=EOS,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def char_tokenizer(shuffle_seed: int | None = None):
    """A character-level tokenizer with VOCAB ids (<pad>=0, <bos>=1, <unk>=2, <eos>=3).

    ``shuffle_seed`` permutes the character ids: the same text, different ids (a different tokenizer).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)][: VOCAB - 4]
    if shuffle_seed is not None:
        order = torch.randperm(len(chars), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
        chars = [chars[i] for i in order]
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<unk>", "<eos>"] + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


def save_tiny(folder, model, tokenizer) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


SPECIALS = ["<pad>", "<bos>", "<unk>", "<eos>"]  # ids 0..3 in every tokenizer here, as the tiny models expect
CORPUS = [
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)  # even\n",
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.",
    "Grüße aus Köln! Ça va très bien, merci. Smörgåsbord, naïve café, façade.",
    "    indented   text   with   runs   of   spaces\n\n\n\nand blank lines",
    "x = [1, 2, 3]\ny = {'a': 1, 'b': 2}\nprint(x, y)\n",
]


def trained_tokenizer(kind: str, merges: int = 100):
    """A small BPE trained on ``CORPUS``, in the style of a real family:

    - ``bytelevel``: GPT-2 / SmolLM2 (byte-level pre-tokenizer, every byte a token, spaces inside tokens);
    - ``metaspace``: SentencePiece / Gemma (spaces as "▁", characters outside the vocabulary as
      ``<0xNN>`` byte tokens).
    """
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
            vocab_size=len(SPECIALS) + 256 + merges, special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    elif kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
            vocab_size=len(SPECIALS) + 64 + merges, special_tokens=SPECIALS, show_progress=False))  # ~64 characters
        spec = json.loads(tok.to_str())
        table = spec["model"]["vocab"]
        for b in range(256):
            table.setdefault(f"<0x{b:02X}>", len(table))
        spec["model"]["byte_fallback"] = True
        tok = Tokenizer.from_str(json.dumps(spec))
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:
        raise ValueError(kind)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")
