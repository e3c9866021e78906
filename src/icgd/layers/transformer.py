"""A stack of residual layers with named hook points (:mod:`icgd.hooks`), in the spirit of TransformerLens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules import module as _module

from icgd.errors import ShapeError
from icgd.hooks import ActivationCache, HookedModel, HookPoint
from icgd.layers.summary import LayerTable

__all__ = ["ActivationCache", "HookPoint", "Transformer", "layer_info"]


def _global_hooks() -> bool:
    """Whether a global module hook (``torch.nn.modules.module.register_module_forward_hook`` and friends) is set."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


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
        return self._run_layers(tokens, start, stop)[0]

    def _run_layers(self, h: torch.Tensor, start: int = 0, stop: int | None = None, owned: bool = False
                    ) -> tuple[torch.Tensor, bool]:
        """Layers ``start … stop−1`` on `h`; returns the result and whether this model owns it (`owned`: whether it
        owns `h`, i.e. no one else holds a reference that must not change).

        While no gradient is recorded, a layer with a ``forward_inplace`` method (the frozen sparse layers) adds its
        update into the residual stream in place: the stream is copied once (when not owned) instead of once per
        layer. Hook points without hooks are skipped; a hook on a hook point, a forward hook on a layer or a global
        module hook gives the plain path (every layer returns a new tensor); a layer's forward pre-hook sees the
        stream before the update, which goes into a copy unless the hook is marked ``reads_only`` (keeps no
        reference to its input, like the projection guard of :func:`~icgd.constructions.deep_gd`)."""
        fast = not torch.is_grad_enabled() and not _global_hooks()
        layers = list(self._modules["layers"]._modules.values())
        blocks = list(self._modules["blocks"]._modules.values())
        d = self.__dict__  # _scope is a plain attribute: skip nn.Module.__setattr__
        try:
            for i in range(start, len(layers) if stop is None else stop):
                d["_scope"] = f"layers.{i}."
                layer, slot = layers[i], blocks[i]._modules
                pre, post = slot["hook_resid_pre"], slot["hook_resid_post"]
                if not fast or pre._forward_hooks or pre._forward_pre_hooks:
                    h, owned = pre(h), False
                step = getattr(layer, "forward_inplace", None) if fast else None
                if step is None or layer._forward_hooks or layer._forward_pre_hooks_with_kwargs:
                    h, owned = layer(h), False
                else:
                    for hook in tuple(layer._forward_pre_hooks.values()):  # e.g. a guard that reads the input
                        out = hook(layer, (h,))
                        if out is not None:
                            h, owned = (out[0] if isinstance(out, tuple) else out), False
                        elif not getattr(hook, "reads_only", False):  # it may keep `h`: update a copy
                            owned = False
                    if not owned:
                        h, owned = h.clone(memory_format=torch.contiguous_format), True
                    h = step(h)
                if not fast or post._forward_hooks or post._forward_pre_hooks:
                    h, owned = post(h), False
        finally:
            d["_scope"] = ""
        return h, owned

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
