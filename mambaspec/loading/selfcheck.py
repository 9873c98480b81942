"""The engine checks itself when a model is loaded: its paths against the model's own plain forward.

The engine runs a model through its own KV cache, tree masks, cache compaction and (for Mamba drafters) a
hand-written recurrent step, all resting on how the installed transformers calls a model. If that moves (under
transformers 5.17 the cache went unused: the target attended to nothing and printed garbage, exit 0), the
output is wrong without a word. So every target and model drafter is probed at load, on a few tokens:

- target: a prefill, a 3-node tree (a sibling the next node must not see), the cache
  compacted to the accepted path, a one-token step; each one's logits against one plain forward of the whole
  sequence without a cache, and the cache length after each;
- model drafter: the prompt, then a small tree through the drafter's own state path (state replicated,
  stepped, the accepted node's state reused), then the logits after the commit, against plain forwards.

A mismatch raises ``SelfCheckError``: one line naming the model, the versions and what differed. About
four forwards of a few tokens: 0.21-0.47 s for SmolLM2-135M measured with one thread on this project's 2-core CPU
while other jobs shared it (the drafter's, 0.03-0.07 s).
"""

from __future__ import annotations

import torch

from ..core.kv import forward_chain, forward_tree, keep_slots, kv_length, new_kv_cache
from ..core.sampling import SamplingConfig
from ..core.shape import TreeShape
from ..core.static import StaticKVCache
from ..core.static import supports as static_supports
from ..drafters.step import StepDrafter
from ..errors import MambaspecError

PROBE = (17, 504, 1003, 27, 2048, 301, 77, 4000, 12, 613)  # arbitrary ids, folded into the vocabulary
TOLERANCE = {torch.float32: 2e-3, torch.float64: 1e-6}  # of the logits' scale; half precision: 6e-2


class SelfCheckError(MambaspecError):
    """The engine's path through a model differs from the model's own forward."""


def _versions() -> str:
    import transformers

    return f"transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]}"


def _ids(vocab: int, n: int) -> list[int]:
    return [t % vocab for t in PROBE[:n]]


def _compare(what: str, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, failures: list[str]) -> None:
    got, ref = got.float().reshape(-1), ref.float().reshape(-1)
    scale = float(ref.abs().max()) or 1.0
    err = float((got - ref).abs().max())
    if not err <= TOLERANCE.get(dtype, 6e-2) * scale:  # NaN fails too
        failures.append(f"{what} (max |logit diff| {err:.3g} against logits up to {scale:.3g})")


@torch.inference_mode()
def _plain_logits(model, ids: list[int]) -> torch.Tensor:
    """The model's own forward over ``ids`` in one call, no cache: logits of every position, float32."""
    out = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
    return out.logits[0].float()


@torch.inference_mode()
def check_target(model, name: str, static: bool | None = None) -> None:
    """Probe the engine's target path (``core.kv``) against ``model``'s plain forward; raise on a mismatch.
    ``static``: also through the static cache (``core.static``; None: on CUDA, where generation uses it)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = _ids(vocab, 9)  # prefill 0..5, tree root 6 -> (sibling, 7), compaction, step 8
    sibling = (ids[7] + 1) % vocab
    ref = _plain_logits(model, ids)
    dtype, failures = model.dtype, []
    caches = [("", new_kv_cache)]
    if (model.device.type == "cuda" if static is None else static) and static_supports(model):
        caches.append(("static cache: ", lambda: StaticKVCache(16, pad=4)))
    for label, make in caches:
        _probe_target(model, make(), ids, sibling, ref, dtype, failures, label)
    _raise(name, "target", failures)


def _probe_target(model, cache, ids: list[int], sibling: int, ref: torch.Tensor, dtype: torch.dtype,
                  failures: list[str], label: str) -> None:
    def compare(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
        _compare(label + what, got, want, dtype, failures)

    try:
        compare("prefill", forward_chain(model, cache, ids[:6]), ref[5])
        if kv_length(cache) != 6:
            failures.append(f"{label}cache holds {kv_length(cache)} tokens after a 6-token prefill")
        # tree: root ids[6] (slot 6), sibling (slot 7, child of root), ids[7] (slot 8, child of root)
        visible = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
        logits = forward_tree(model, cache, [ids[6], sibling, ids[7]], [6, 7, 7], visible)
        compare("tree verify, root", logits[0], ref[6])
        compare("tree verify, node after a sibling it must not see", logits[2], ref[7])
        keep_slots(cache, 7, [8])
        if kv_length(cache) != 8:
            failures.append(f"{label}cache holds {kv_length(cache)} tokens after compaction to 8")
        compare("one-token step after cache compaction", forward_chain(model, cache, ids[8:9]), ref[8])
    except Exception as err:  # noqa: BLE001 - any crash of the engine's path is a failed check, said in one line
        failures.append(f"{label}the engine's path crashed: {err.__class__.__name__}: {err}")


@torch.inference_mode()
def check_drafter(drafter, name: str, target_vocab: int) -> None:
    """Probe a model drafter's state path (prefill, a 2,1 tree, the commit) against its model's plain forward.

    Applies to step drafters with their own causal LM (Mamba, Transformer); others are left alone."""
    model = getattr(drafter, "model", None)
    if not isinstance(drafter, StepDrafter) or not hasattr(model, "get_output_embeddings") \
            or model.get_output_embeddings() is None:
        return
    drafter.bind(target_vocab)
    ids = _ids(min(target_vocab, int(model.config.get_text_config().vocab_size)), 6)
    encode = (lambda xs: xs) if drafter.draft_vocab is None else (
        lambda xs: drafter.draft_vocab.encode(torch.tensor(xs)).tolist())
    dtype, failures = model.dtype, []
    try:
        drafter.prefill(ids[:5])  # the committed text; its last token is the root of the next tree
        _compare("prompt", drafter.root_logits[-1], _plain_logits(model, encode(ids[:5]))[-1], dtype, failures)
        tree = drafter.draft(ids[4], TreeShape((2, 1)), SamplingConfig())
        path = [tree.children(0)[-1]] if tree.children(0) else []  # the second child: a replicated state row
        path += tree.children(path[0])[:1] if path else []
        committed = ids[:5] + [tree.tokens[i] for i in path] + [ids[5]]
        drafter.commit(tree, path, ids[5])
        _compare("state after a tree and its commit", drafter.root_logits[-1],
                 _plain_logits(model, encode(committed))[-1], dtype, failures)
    except Exception as err:  # noqa: BLE001
        failures.append(f"the drafter's path crashed: {err.__class__.__name__}: {err}")
    _raise(name, "drafter", failures)


def _raise(name: str, role: str, failures: list[str]) -> None:
    if failures:
        raise SelfCheckError(f"{role} '{name}' fails the engine's self-check under {_versions()}: "
                             f"{'; '.join(failures)} -- this combination of versions is not supported; "
                             f"please report it")
