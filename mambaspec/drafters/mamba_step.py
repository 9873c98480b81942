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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supports_fast_step(model) -> bool:
    """transformers' Mamba2 with the activation this step implements."""
    cfg = model.config
    return cfg.model_type == "mamba2" and getattr(cfg, "hidden_act", "silu") == "silu"


@torch.inference_mode()
def mamba2_step(model, conv: list[torch.Tensor], ssm: list[torch.Tensor], tokens: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Feed ``tokens`` (B,) from per-layer states ``conv`` (B, conv_dim, K) and ``ssm`` (B, heads,
    head_dim, N); returns the logits (B, V) and the new states."""
    backbone = model.backbone
    h = backbone.embeddings(tokens)
    new_conv, new_ssm = [], []
    for layer, conv_state, ssm_state in zip(backbone.layers, conv, ssm):
        mixer = layer.mixer
        residual = h.float() if layer.residual_in_fp32 else h
        x = layer.norm(h.to(layer.norm.weight.dtype))  # as Mamba2Block: the residual may run in float32
        gate, xbc, dt = mixer.in_proj(x).split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
        # causal_conv1d_update: the window slides by one, then a depthwise dot product over it
        window = torch.cat([conv_state[:, :, 1:], xbc[:, :, None].to(conv_state.dtype)], dim=-1)
        xbc = (window * mixer.conv1d.weight[:, 0]).sum(-1)
        if mixer.conv1d.bias is not None:
            xbc = xbc + mixer.conv1d.bias
        xbc = F.silu(xbc)
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
