"""A stack of residual layers with named hook points (:mod:`icgd.hooks`), in the spirit of TransformerLens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from icgd.errors import ShapeError
from icgd.hooks import ActivationCache, HookedModel, HookPoint
from icgd.layers.summary import LayerTable

__all__ = ["ActivationCache", "HookPoint", "Transformer", "layer_info"]


class _Slot(nn.Module):
    """The hook points around one position of a :class:`Transformer`."""

    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # (B, T, D)
        self.hook_resid_post = HookPoint()  # (B, T, D)


class Transformer(HookedModel):
    """An ordered stack of layers; every layer maps ``(B, T, D) → (B, T, D)``.

    Hook points ``blocks.{i}.hook_resid_pre`` and ``blocks.{i}.hook_resid_post`` surround layer i (one block is one
    layer); attention layers add ``layers.{i}.hook_pattern`` and ``layers.{i}.hook_z`` (:mod:`icgd.hooks`). The same
    module may appear at several positions (the constructions share one GD block across steps); hooks are per
    position.
    """

    def __init__(self, layers: Sequence[nn.Module], dim: int | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dim = dim
        self.blocks = nn.ModuleList(_Slot() for _ in range(len(self.layers)))
        self._name_hook_points()

    def _check(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 3:
            raise ShapeError(f"tokens must be (batch, tokens, dim), got shape {tuple(tokens.shape)}")
        if self.dim is not None and tokens.shape[-1] != self.dim:
            raise ShapeError(f"tokens have dimension {tokens.shape[-1]}, this transformer expects {self.dim}")

    def forward(self, tokens: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run layers ``start … stop−1`` (all by default)."""
        self._check(tokens)
        h = tokens
        try:
            for i in range(start, len(self.layers) if stop is None else stop):
                self._scope = f"layers.{i}."
                slot = self.blocks[i]
                h = slot.hook_resid_post(self.layers[i](slot.hook_resid_pre(h)))
        finally:
            self._scope = ""
        return h

    def summary(self) -> LayerTable:
        """One row per layer: kind, heads (or MLP width), token dim and nonzero parameter count; a list of dicts
        that prints as a table (``print(model.summary())``, rich, or the prompt)."""
        return LayerTable(layer_info(i, layer, self.dim) for i, layer in enumerate(self.layers))


def layer_info(i: int, layer: nn.Module, dim: int | None) -> dict:
    heads = getattr(layer, "num_heads", None)
    width = getattr(layer, "width", None)
    if hasattr(layer, "heads") and hasattr(layer.heads, "num_params"):
        params = layer.heads.num_params()
    elif hasattr(layer, "num_params"):
        params = layer.num_params()
    else:
        params = sum(p.numel() for p in layer.parameters())
    return {"index": i, "kind": type(layer).__name__, "heads": heads, "width": width,
            "dim": dim if dim is not None else getattr(layer, "dim", None), "params": params}
