"""Making a model's forward cheap on CPU: what the loader applies to the target (and drafters).

Measured on this project's CPU (``mambaspec verify-cost``): verifying a 5-node
tree with stock transformers costs ~1.9 one-token steps, mostly because float32 GEMMs with a
handful of rows run at a fraction of the machine's speed through the default BLAS path, while
oneDNN with a weight packed once runs them 2-3x faster (the 49,152-wide output layer of
SmolLM2: 25 ms -> 7 ms for 5 rows) and is no slower for one row or for a 512-token prefill.

- ``linear="onednn"`` (the default on CPU, float32): every ``nn.Linear`` becomes a
  ``OneDNNLinear`` holding its weight packed by oneDNN. Outputs differ from the stock layer by
  float rounding only; ``ar`` in ``bench`` runs the same packed model, so a reported speed-up
  comes from speculation alone.
- ``quantize="int8"``: int8 linear layers (``Int8Linear``: weights per channel, activations per
  token, exact int32 sums), CPU only. It is another model than the float32 one (compare with
  ``ar`` run with the same option), and speculation stays lossless against it.
- ``compile=True``: ``torch.compile`` of every decoder layer's feed-forward block (``compile_blocks``);
  the first calls compile (an untimed warm-up in ``generate``, ``bench`` and ``tune``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MambaspecError

LINEAR_BACKENDS = ("auto", "onednn", "torch")
QUANTIZE = ("none", "int8")
PACK_HINT = 64  # oneDNN packs for this many rows; measured as good for 1 to 512 rows


class OneDNNLinear(nn.Module):
    """``nn.Linear`` with its weight packed by oneDNN (CPU, float32). ``keep_weight`` keeps the
    plain weight too (for an output layer, usually tied to the input embeddings, so free)."""

    def __init__(self, linear: nn.Linear, keep_weight: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach()
        if keep_weight:
            self.weight = linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def __deepcopy__(self, memo) -> OneDNNLinear:
        return self  # read-only packed weights (an opaque tensor that cannot be copied) are shared

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"


def onednn_usable(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return (p is not None and p.device.type == "cpu" and p.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _replace_linears(model: nn.Module, make) -> int:
    count = 0
    for path, parent in list(model.named_modules()):
        if "_orig_mod" in path:  # inside a compiled block: inductor packs those weights itself
            continue
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                new = make(child)
                setattr(parent, name, new)
                count += new is not child
    return count


def pack_linears(model: nn.Module) -> int:
    """Swap every ``nn.Linear`` for a ``OneDNNLinear``; returns how many."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return _replace_linears(model, lambda lin: OneDNNLinear(lin, keep_weight=lin is head))


class Int8Linear(nn.Module):
    """``nn.Linear`` in int8: weights per output channel, activations per row (token), int32 sums.

    Every row is quantized with its own scale and summed exactly in int32, so a token's output
    does not depend on the other tokens of the forward: a 5-node verification gives each node
    what a one-token step would, and speculative decoding stays lossless against this model's own
    greedy decoding (torch's dynamic int8 layers share one activation scale across rows and do not).
    """

    def __init__(self, linear: nn.Linear, keep_weight: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        self.weight_t = torch.round(w / scale).to(torch.int8).t().contiguous()
        self.weight_scale = scale.t().contiguous()
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        if keep_weight:
            self.weight = linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        scale = x2.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        acc = torch._int_mm(torch.round(x2 / scale).to(torch.int8), self.weight_t)
        y = acc.to(x.dtype) * scale * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


def quantize_int8(model: nn.Module) -> int:
    """Swap every ``nn.Linear`` for an ``Int8Linear`` (CPU); returns how many."""
    if not hasattr(torch, "_int_mm"):
        raise MambaspecError(f"int8 quantization needs torch._int_mm (torch >= 2.2), this is torch {torch.__version__}")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return _replace_linears(model, lambda lin: Int8Linear(lin, keep_weight=lin is head))


def compile_blocks(model: nn.Module) -> int:
    """``torch.compile`` (inductor, frozen weights) of every decoder layer's feed-forward block.

    The blocks are pure tensor functions; attention stays eager, since dynamo cannot trace the KV
    cache's in-place bookkeeping (measured: a compiled whole forward fails on the cache).
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # weights as constants: inductor prepacks them for the CPU GEMM
    count = 0
    for module in list(model.modules()):
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, nn.Module) and not hasattr(mlp, "_orig_mod"):
            module.mlp = torch.compile(mlp, dynamic=True)
            count += 1
    if not count:
        raise MambaspecError("compiling found no feed-forward blocks (`mlp`) in this model; do not compile it")
    # one compiled graph per block (they share code): room for every block's guards
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 2 * count)
    dynamo_config.accumulated_cache_size_limit = max(dynamo_config.accumulated_cache_size_limit, 8 * count)
    return count


def optimize_model(model: nn.Module, linear: str = "auto", quantize: str = "none", compile: bool = False) -> str:
    """Apply the options to ``model`` in place, once; returns what was done (for stats and CSVs)."""
    if linear not in LINEAR_BACKENDS:
        raise MambaspecError(f"unknown linear backend '{linear}'; use one of {', '.join(LINEAR_BACKENDS)}")
    if quantize not in QUANTIZE:
        raise MambaspecError(f"unknown quantization '{quantize}'; use one of {', '.join(QUANTIZE)}")
    if compile and quantize == "int8":
        raise MambaspecError("compiling and int8 quantization do not combine; pick one")
    device = next(model.parameters()).device.type
    done = []
    if compile:
        compile_blocks(model)
    if quantize == "int8":
        if device != "cpu":
            raise MambaspecError("int8 quantization runs on CPU only; drop it or load the model on the CPU")
        done.append(f"int8 ({quantize_int8(model)} linears)")
    elif linear == "onednn" or (linear == "auto" and onednn_usable(model)):
        if not onednn_usable(model):
            raise MambaspecError("oneDNN linears need a float32 model on CPU with oneDNN; use the torch backend")
        done.append(f"onednn ({pack_linears(model)} linears)")
    if compile:
        done.append("feed-forward blocks compiled")
    return ", ".join(done) or "stock"
