"""One recurrent step of a transformers Mamba2 model, written out: the drafter's inner loop.

Drafting a tree level is one single-token step for a batch of frontier nodes. Through the
model's own forward that step costs ~3.5 ms on this CPU for a 4-layer, 3.7M-parameter drafter,
almost all of it module calls, cache bookkeeping and small ops (cProfile: the linear layers are
under a third). ``mamba2_step`` is the same recurrence — the mixer's ``torch_forward`` recurrent
branch (``causal_conv1d_update`` + ``selective_state_update``) and the blocks around it — on
plain tensors, reading the model's weights, returning new state tensors (the old ones are left
as they are, which is what lets the drafter keep one state per tree depth).

Only the drafter uses it, so any rounding difference from the model's forward can change which
tokens are drafted, never the output (the target verifies every token).

On CUDA, with the ``cuda`` extra installed (``mamba-ssm``, ``causal-conv1d``), the two recurrent updates run as their
kernels (``selective_state_update``, ``causal_conv1d_update``), each on a copy of the state; without them, the torch
code below. ``BatchedStep`` pads a step's batch to a bucket (1, 2, 4 ... 64) and, on CUDA, replays it from one CUDA
graph a bucket; on the CPU the same padded code runs eagerly (tested lossless).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..core.static import capture_graph

STEP_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _import_kernels() -> tuple[Callable | None, Callable | None]:
    """``selective_state_update`` (mamba_ssm) and ``causal_conv1d_update`` (causal_conv1d), None where not
    importable."""
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except Exception:  # noqa: BLE001 - absent, or built for another torch/CUDA: the torch path
        selective_state_update = None
    try:
        from causal_conv1d import causal_conv1d_update
    except Exception:  # noqa: BLE001
        causal_conv1d_update = None
    return selective_state_update, causal_conv1d_update


_KERNELS: tuple[Callable | None, Callable | None] | None = None


def kernels(device: torch.device) -> tuple[Callable | None, Callable | None]:
    """The CUDA kernels for a step on ``device`` (none off CUDA)."""
    global _KERNELS
    if device.type != "cuda":
        return None, None
    if _KERNELS is None:
        _KERNELS = _import_kernels()
    return _KERNELS


def supports_fast_step(model) -> bool:
    """transformers' Mamba2 with the activation this step implements."""
    cfg = model.config
    return cfg.model_type == "mamba2" and getattr(cfg, "hidden_act", "silu") == "silu"


@torch.inference_mode()
def mamba2_step(model, conv: list[torch.Tensor], ssm: list[torch.Tensor], tokens: torch.Tensor,
                use_kernels: bool = True) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Feed ``tokens`` (B,) from per-layer states ``conv`` (B, conv_dim, K) and ``ssm`` (B, heads,
    head_dim, N); returns the logits (B, V) and the new states. ``use_kernels``: the CUDA kernels where
    importable."""
    backbone = model.backbone
    ssu, conv_update = kernels(tokens.device) if use_kernels else (None, None)
    h = backbone.embeddings(tokens)
    new_conv, new_ssm = [], []
    for layer, conv_state, ssm_state in zip(backbone.layers, conv, ssm):
        mixer = layer.mixer
        residual = h.float() if layer.residual_in_fp32 else h
        x = layer.norm(h.to(layer.norm.weight.dtype))  # as Mamba2Block: the residual may run in float32
        gate, xbc, dt = mixer.in_proj(x).split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
        if ssu is not None:
            y, window, state = _kernel_mixer(mixer, ssu, conv_update, conv_state, ssm_state, xbc, dt, gate)
            h = residual + mixer.out_proj(y.to(x.dtype))
            new_conv.append(window)
            new_ssm.append(state)
            continue
        xbc, window = _conv_step(mixer, conv_state, xbc)
        n = mixer.n_groups * mixer.ssm_state_size
        xs, b, c = xbc.split([mixer.intermediate_size, n, n], dim=-1)
        batch, heads, head_dim = xs.shape[0], mixer.num_heads, mixer.head_dim
        xs = xs.view(batch, heads, head_dim)
        # selective_state_update
        dt = F.softplus(dt + mixer.dt_bias)  # (B, heads)
        decay = torch.exp(dt.float() * -torch.exp(mixer.A_log.float()))
        per_group = heads // mixer.n_groups
        b = b.view(batch, mixer.n_groups, 1, -1).expand(-1, -1, per_group, -1).reshape(batch, heads, 1, -1)
        c = c.view(batch, mixer.n_groups, 1, -1).expand(-1, -1, per_group, -1).reshape(batch, heads, -1, 1)
        state = ssm_state * decay[..., None, None] + (dt[..., None, None] * b) * xs[..., None]
        y = (state.to(c.dtype) @ c).squeeze(-1) + xs * mixer.D[:, None]
        y = mixer.norm(y.reshape(batch, -1), gate)
        h = residual + mixer.out_proj(y.to(x.dtype))
        new_conv.append(window)
        new_ssm.append(state.to(ssm_state.dtype))
    logits = model.lm_head(backbone.norm_f(h.to(backbone.norm_f.weight.dtype)))
    return logits.float(), new_conv, new_ssm


def _conv_step(mixer, conv_state: torch.Tensor, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """causal_conv1d_update in torch: the window slides by one, then a depthwise dot product over it, bias, SiLU;
    returns the output and the new window (the old one stays as it is)."""
    window = torch.cat([conv_state[:, :, 1:], xbc[:, :, None].to(conv_state.dtype)], dim=-1)
    out = (window * mixer.conv1d.weight[:, 0]).sum(-1)
    if mixer.conv1d.bias is not None:
        out = out + mixer.conv1d.bias
    return F.silu(out), window


def _kernel_mixer(mixer, ssu: Callable, conv_update: Callable | None, conv_state: torch.Tensor,
                  ssm_state: torch.Tensor, xbc: torch.Tensor, dt: torch.Tensor, gate: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixer's recurrent step through the kernels, as transformers' ``Mamba2Mixer.cuda_kernels_forward``
    calls them; they update states in place, so they run on copies (the old states stay as they are)."""
    if conv_update is not None:
        window = conv_state.clone()
        xbc = conv_update(xbc, window, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, "silu")
    else:
        xbc, window = _conv_step(mixer, conv_state, xbc)
    n = mixer.n_groups * mixer.ssm_state_size
    xs, b, c = xbc.split([mixer.intermediate_size, n, n], dim=-1)
    batch, heads, head_dim = xs.shape[0], mixer.num_heads, mixer.head_dim
    a = -torch.exp(mixer.A_log.float())[:, None, None].expand(-1, head_dim, mixer.ssm_state_size)
    state = ssm_state.clone()
    y = ssu(state, xs.reshape(batch, heads, head_dim), dt[:, :, None].expand(-1, -1, head_dim), a,
            b.reshape(batch, mixer.n_groups, -1), c.reshape(batch, mixer.n_groups, -1),
            mixer.D[:, None].expand(-1, head_dim), z=None, dt_bias=mixer.dt_bias[:, None].expand(-1, head_dim),
            dt_softplus=True)
    return mixer.norm(y.reshape(batch, -1), gate), window, state


class BatchedStep:
    """``mamba2_step`` for a batch padded up to a bucket (rows past the batch: copies of row 0, dropped after).
    ``graphs`` (CUDA): each bucket's step captured once in a CUDA graph over static input tensors and replayed;
    otherwise the same padded step runs eagerly. Batches past the largest bucket run unpadded, eagerly."""

    def __init__(self, model, graphs: bool, use_kernels: bool = True) -> None:
        self.model, self.graphs, self.use_kernels = model, graphs, use_kernels
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple]] = {}

    def __call__(self, conv: list[torch.Tensor], ssm: list[torch.Tensor], tokens: torch.Tensor
                 ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        b = tokens.shape[0]
        bucket = next((s for s in STEP_BUCKETS if s >= b), None)
        if bucket is None:
            return mamba2_step(self.model, conv, ssm, tokens, self.use_kernels)
        rows = torch.cat([torch.arange(b), torch.zeros(bucket - b, dtype=torch.long)]).to(tokens.device)
        inputs = [t.index_select(0, rows) for t in (*conv, *ssm, tokens)] if bucket > b else [*conv, *ssm, tokens]
        if not self.graphs:
            logits, new_conv, new_ssm = self._step(inputs)
        else:
            logits, new_conv, new_ssm = self._replay(bucket, inputs)
        return logits[:b], [t[:b] for t in new_conv], [t[:b] for t in new_ssm]

    def _step(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        n = (len(inputs) - 1) // 2
        return mamba2_step(self.model, inputs[:n], inputs[n:2 * n], inputs[-1], self.use_kernels)

    def _replay(self, bucket: int, inputs: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        if bucket not in self._graphs:
            static = [t.clone() for t in inputs]
            graph, out = capture_graph(lambda: self._step(static), inputs[0].device)
            self._graphs[bucket] = (graph, static, out)
        graph, static, (logits, new_conv, new_ssm) = self._graphs[bucket]
        for dst, src in zip(static, inputs):
            dst.copy_(src)
        graph.replay()  # the outputs are copied out: the next replay overwrites them
        return logits.clone(), [t.clone() for t in new_conv], [t.clone() for t in new_ssm]
