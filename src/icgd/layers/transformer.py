"""A stack of residual layers with named hook points, in the spirit of TransformerLens."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from icgd.errors import ICGDError, ShapeError
from icgd.layers.summary import LayerTable

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]


class HookPoint(nn.Module):
    """Identity module marking an activation; attach PyTorch forward hooks to read or edit it."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ActivationCache(dict):
    """Activations by hook name (``layers.3.hook_out``); ``cache["out", 3]`` and negative indices also work."""

    def __getitem__(self, key):
        if isinstance(key, tuple):
            kind, i = key
            # number of layers = highest cached layer index + 1 (counting only hook_in keys broke filtered caches)
            n = 1 + max((int(k.split(".")[1]) for k in self), default=-1)
            key = f"layers.{i % n if n else i}.hook_{kind}"
        return super().__getitem__(key)


class Transformer(nn.Module):
    """An ordered stack of layers; every layer maps ``(B, T, D) → (B, T, D)``.

    Hook points ``layers.{i}.hook_in`` and ``layers.{i}.hook_out`` surround layer i. The same module may appear
    at several positions (the constructions share one GD block across steps); hooks are per position.
    """

    def __init__(self, layers: Sequence[nn.Module], dim: int | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dim = dim
        self.hook_in = nn.ModuleList(HookPoint(f"layers.{i}.hook_in") for i in range(len(layers)))
        self.hook_out = nn.ModuleList(HookPoint(f"layers.{i}.hook_out") for i in range(len(layers)))

    def hook_points(self) -> dict[str, HookPoint]:
        return {hp.name: hp for hp in [*self.hook_in, *self.hook_out]}

    def _check(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 3:
            raise ShapeError(f"tokens must be (batch, tokens, dim), got shape {tuple(tokens.shape)}")
        if self.dim is not None and tokens.shape[-1] != self.dim:
            raise ShapeError(f"tokens have dimension {tokens.shape[-1]}, this transformer expects {self.dim}")

    def forward(self, tokens: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run layers ``start … stop−1`` (all by default)."""
        self._check(tokens)
        h = tokens
        for i in range(start, len(self.layers) if stop is None else stop):
            h = self.hook_out[i](self.layers[i](self.hook_in[i](h)))
        return h

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]]):
        """Attach ``(name, fn)`` hooks for the duration of the block; ``fn(activation, name)`` may return a
        replacement activation."""
        points = self.hook_points()
        handles = []
        try:
            for name, fn in fwd_hooks:
                if name not in points:
                    raise ICGDError(f"no hook point {name!r}; names look like 'layers.0.hook_out'")
                handles.append(points[name].register_forward_hook(
                    lambda mod, args, out, fn=fn: fn(out, mod.name)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: Iterable[tuple[str, HookFn]]) -> torch.Tensor:
        with self.hooks(fwd_hooks):
            return self(tokens)

    def run_with_cache(self, tokens: torch.Tensor, names_filter: Callable[[str], bool] | None = None
                       ) -> tuple[torch.Tensor, ActivationCache]:
        """The output and every hooked activation (each layer's input and output)."""
        cache = ActivationCache()

        def save(act: torch.Tensor, name: str) -> None:
            cache[name] = act.detach()

        names = [n for n in self.hook_points() if names_filter is None or names_filter(n)]
        out = self.run_with_hooks(tokens, [(n, save) for n in names])
        return out, ActivationCache(sorted(cache.items(), key=lambda kv: _hook_order(kv[0])))

    def summary(self) -> LayerTable:
        """One row per layer: kind, heads (or MLP width), token dim and nonzero parameter count; a list of dicts
        that prints as a table (``print(model.summary())``, rich, or the prompt)."""
        return LayerTable(layer_info(i, layer, self.dim) for i, layer in enumerate(self.layers))


def _hook_order(name: str) -> tuple[int, int]:
    _, i, kind = name.split(".")
    return int(i), 0 if kind == "hook_in" else 1


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
