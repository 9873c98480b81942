"""The Python API as a user calls it: torch's threads from ``ModelOptions(threads=...)`` (as the CLI's --threads), and
no transformers notices from inside the models' forwards (the CLI hides them too)."""

import logging

import pytest
import torch

from mambaspec import MambaspecError, ModelOptions, load_pipeline


def test_threads_are_an_option_of_the_api(tiny_dir):
    before = torch.get_num_threads()
    try:
        pipe = load_pipeline(tiny_dir["target"], tiny_dir["mamba2"], options=ModelOptions(device="cpu", threads=2))
        assert torch.get_num_threads() == 2
        load_pipeline(tiny_dir["target"], "none", options=ModelOptions(device="cpu", threads=1))
        assert torch.get_num_threads() == 1
        assert pipe.generate("hello", max_new_tokens=4, chat=False).stats.new_tokens == 4
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(MambaspecError, match="threads"):
            ModelOptions(threads=bad)


def test_forward_notices_are_quiet(tiny_dir):
    """A Mamba drafter on a CPU makes transformers say "`causal_conv1d_fn` is falling back to its reference PyTorch
    implementation" (once a process, from its kernel loader); a loaded model's own loggers keep errors only."""
    pipe = load_pipeline(tiny_dir["target"], tiny_dir["mamba2"], options=ModelOptions(device="cpu"))
    model = pipe.drafter.model
    for name in ("transformers.integrations.hub_kernels", type(model).__module__):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.ERROR, name
