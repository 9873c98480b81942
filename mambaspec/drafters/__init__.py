"""Drafters: one interface (``core.drafter.Drafter``), interchangeable implementations, a file each."""

from __future__ import annotations


def make_drafter(model, tokenizer=None, name: str | None = None, draft_vocab=None):
    """The drafter class that fits ``model`` (Mamba/Mamba2 or any other causal LM); ``None``: no drafter."""
    from ..core.drafter import NoDrafter
    from .mamba import MAMBA_TYPES, MambaDrafter
    from .transformer import TransformerDrafter

    if model is None:
        return NoDrafter()
    cls = MambaDrafter if model.config.model_type in MAMBA_TYPES else TransformerDrafter
    return cls(model, tokenizer, name, draft_vocab)
