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


def tiny_llama(seed: int = 0, layers: int = 2, hidden: int = 64, dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
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


def tiny_mamba2(seed: int = 0, dtype=torch.float32) -> Mamba2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=16, expand=2,
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
                         eos_token_id=EOS, pad_token_id=EOS, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
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
