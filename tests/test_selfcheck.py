"""The engine's self-check at load: it passes on the engine as it is, and it catches a cache the model does not
use (what transformers 5.17 did with the old ``cache=`` keyword: plain decoding printed garbage, exit 0)."""

import inspect

import pytest
import torch

import mambaspec.core.kv as kv
import mambaspec.drafters.mamba as mamba_module
from mambaspec.drafters import make_drafter
from mambaspec.drafters.mamba import MambaDrafter
from mambaspec.drafters.transformer import TransformerDrafter
from mambaspec.loading.selfcheck import SelfCheckError, check_drafter, check_target
from tiny import VOCAB, tiny_llama, tiny_mamba, tiny_mamba2


def _dropped(model, cache):
    return {}  # the model runs without the engine's cache


def _old_keyword(model, cache):
    return {"cache": cache}  # what the engine passed before hf_compat; ignored by transformers 5.17


BREAKS = [_dropped] + ([_old_keyword] if "cache" not in inspect.signature(type(tiny_llama()).forward).parameters
                       else [])


def test_target_passes(tiny_target):
    check_target(tiny_target, "tiny")
    check_target(tiny_target, "tiny", static=True)  # and through the static cache a GPU runs (core.static)


def test_static_cache_with_compaction_broken_is_refused(tiny_target, monkeypatch):
    from mambaspec.core.static import StaticKVCache

    monkeypatch.setattr(StaticKVCache, "keep", lambda self, prefix_len, slots: setattr(self, "length", prefix_len + 1))
    with pytest.raises(SelfCheckError, match="static cache: one-token step after cache compaction"):
        check_target(tiny_target, "tiny", static=True)


@pytest.mark.parametrize("break_cache", BREAKS)
def test_target_with_an_unused_cache_is_refused(tiny_target, monkeypatch, break_cache):
    monkeypatch.setattr(kv, "with_cache", break_cache)
    with pytest.raises(SelfCheckError) as err:
        check_target(tiny_target, "tiny")
    message = str(err.value)
    assert "\n" not in message and "target 'tiny'" in message and "transformers" in message
    assert "cache holds 0 tokens" in message


def test_target_with_a_mask_ignored_is_refused(tiny_target, monkeypatch):
    """A tree forward whose nodes see their siblings is caught by the node after a sibling."""
    real = kv._attention_mask
    monkeypatch.setattr(kv, "_attention_mask", lambda model, allowed: real(model, torch.ones_like(allowed)))
    with pytest.raises(SelfCheckError, match="sibling"):
        check_target(tiny_target, "tiny")


@pytest.mark.parametrize("make", [lambda: MambaDrafter(tiny_mamba2(2)), lambda: MambaDrafter(tiny_mamba(1)),
                                  lambda: TransformerDrafter(tiny_llama(3, layers=1, hidden=32)),
                                  lambda: MambaDrafter(tiny_mamba2(2, dtype=torch.bfloat16))],
                         ids=["mamba2", "mamba", "llama", "mamba2-bfloat16"])
def test_drafters_pass(make):
    check_drafter(make(), "tiny", VOCAB)


@pytest.mark.parametrize("break_cache", BREAKS)
def test_mamba_drafter_with_an_unused_state_is_refused(monkeypatch, break_cache):
    monkeypatch.setattr(mamba_module, "with_cache", break_cache)
    drafter = make_drafter(tiny_mamba2(2), None, name="tiny-mamba2")
    with pytest.raises(SelfCheckError) as err:
        check_drafter(drafter, "tiny-mamba2", VOCAB)
    assert "\n" not in str(err.value) and "drafter 'tiny-mamba2'" in str(err.value)


def test_refusal_is_one_line_at_the_command_line(tiny_dir, monkeypatch, capsys):
    """Through the loader (as every command loads): a MambaspecError, which the CLI prints as one line."""
    from mambaspec.errors import MambaspecError
    from mambaspec.loading.models import load_model
    from mambaspec.loading.options import ModelOptions

    monkeypatch.setattr(kv, "with_cache", _dropped)
    with pytest.raises(MambaspecError, match="self-check"):
        load_model(tiny_dir["target"], ModelOptions(device="cpu"))


@pytest.mark.parametrize("version,ok", [("5.17.0", True), ("5.25.0", True), ("5.99.1", True), ("5.16.2", False),
                                        ("4.57.1", False), ("6.0.0", False), ("6.1.0.dev0", False)])
def test_transformers_versions_outside_the_range_are_refused_at_load(tiny_dir, monkeypatch, version, ok):
    import transformers

    from mambaspec.errors import MambaspecError
    from mambaspec.hf_compat import check_version
    from mambaspec.loading.models import load_model
    from mambaspec.loading.options import ModelOptions

    assert (check_version(version) is None) == ok
    if not ok:
        monkeypatch.setattr(transformers, "__version__", version)
        with pytest.raises(MambaspecError, match=f"transformers {version} is outside the supported range"):
            load_model(tiny_dir["target"], ModelOptions(device="cpu"))
