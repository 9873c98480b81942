import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # 2 cores: one thread is faster and steadier than two under any other load

from tiny import char_tokenizer, save_tiny, tiny_llama, tiny_mamba, tiny_mamba2  # noqa: E402


@pytest.fixture(scope="session")
def tiny_target():
    return tiny_llama(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Folders holding tiny models with tokenizers: a target, drafters, and a drafter with another tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    tok = char_tokenizer()
    return {
        "target": save_tiny(root / "target", tiny_llama(0), tok),
        "mamba2": save_tiny(root / "mamba2", tiny_mamba2(2), tok),
        "mamba": save_tiny(root / "mamba", tiny_mamba(1), tok),
        "llama": save_tiny(root / "llama", tiny_llama(3, layers=1, hidden=32), tok),
        "other_tok": save_tiny(root / "other_tok", tiny_mamba2(2), char_tokenizer(shuffle_seed=7)),
    }
