"""Hook points, the activation cache and the hooked-model base shared by every icgd model (TransformerLens style).

A :class:`HookPoint` is an identity module placed where an activation is worth reading; a hook's **name is its
module path**, so ``model.get_submodule(name)`` returns the :class:`HookPoint` for every name a model reports
(:meth:`HookedModel.hook_names`) and every key of a cache. :class:`HookedModel` gives a model

* ``run_with_cache(*inputs, names_filter=None)`` → ``(output, cache)``: every hooked activation, detached, by name,
  in execution order (an :class:`ActivationCache`);
* ``hooks(fwd_hooks=[(name, fn)])``: a context manager that attaches ``fn(activation, name)`` (which may return a
  replacement activation) and removes the hooks on exit, also on an exception;
* ``run_with_hooks(*inputs, fwd_hooks=...)`` and ``hook_points()`` / ``hook_names()``.

The inputs are those of the model's ``forward``: tokens ``(B, T, D)`` for a construction
(:class:`icgd.layers.Transformer`), ``(X, Y[, x_query])`` for the trained models (:mod:`icgd.models`).

**Hook names** (B prompts, T tokens, D = E the residual width, H heads, S keys):

==========================================  ===================  ===============================================
name                                        shape                where
==========================================  ===================  ===============================================
``blocks.{i}.hook_resid_pre``               (B, T, D)            residual stream entering block / layer i
``blocks.{i}.hook_resid_post``              (B, T, D)            residual stream after block / layer i
``layers.{i}.hook_pattern``                 (B, H, T, S)         construction attention layer i: its weights
``layers.{i}.hook_z``                       (B, T, H, D)         construction attention layer i: per-head output
``blocks.{i}.attn.hook_pattern``            (B, H, T, S)         trained models: attention weights of block i
``blocks.{i}.attn.hook_z``                  (B, T, H, dh or D)   trained models: per-head output of block i
``blocks.{i}.hook_attn_out``                (B, T, E)            ICLTransformer: attention output of block i
``blocks.{i}.hook_resid_mid``               (B, T, E)            ICLTransformer: between attention and MLP
``blocks.{i}.hook_mlp_out``                 (B, T, E)            ICLTransformer: MLP output of block i
``hook_embed`` / ``hook_resid_final``       (B, T, E)            ICLTransformer: embedded tokens / final stream
==========================================  ===================  ===============================================

So the residual stream after every block is ``blocks.{i}.hook_resid_post`` in the construction
:class:`~icgd.layers.Transformer` (one block = one layer), in :class:`~icgd.models.ICLTransformer` and in
:class:`~icgd.models.LSA`. ``hook_pattern`` holds the weights actually applied to the values (normalisation
included); ``hook_z`` the per-head contribution whose sum over heads (after the output projection, for
``ICLTransformer``) is the layer's update. Both are computed only while something listens to them: the unhooked
forward pass never materialises them.

**Shared modules.** A construction may run one layer module at several positions (a GD block reused for every
step): its internal hook point then has one name per position (``layers.3.hook_pattern``, ``layers.13.…``, all
paths of the same module), and a hook registered under one of them fires at that position only.

**Looped models.** ``ICLTransformer(loop=L > 1)`` runs its blocks L times; names then carry the pass,
``loop.{k}.blocks.{i}.hook_resid_post`` (and ``get_submodule`` accepts that prefix). A hook registered under a plain
name fires on every pass, one registered under ``loop.{k}.…`` on pass k only.

A cache also accepts TransformerLens-style shorthands: ``cache["resid_post", 3]`` is ``blocks.3.hook_resid_post``,
``cache["pattern", -1]`` the last block's pattern (``blocks.{i}.attn.hook_pattern`` or ``layers.{i}.hook_pattern``),
and ``cache["resid_post", 3, k]`` reads pass k of a looped model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from icgd.errors import ICGDError

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]


class HookPoint(nn.Module):
    """Identity module marking an activation; :class:`HookedModel` attaches forward hooks to read or edit it."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name

    @property
    def active(self) -> bool:
        """Whether a hook listens (layers then materialise activations their fast path never forms)."""
        return bool(self._forward_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ActivationCache(dict):
    """Activations by hook name, in execution order; tuple keys are shorthands (see the module docstring)."""

    def __init__(self, *args, n_blocks: int = 0, looped: bool = False):
        super().__init__(*args)
        self.n_blocks, self.looped = n_blocks, looped

    def __getitem__(self, key):
        if isinstance(key, tuple):
            key = self._resolve(*key)
        return super().__getitem__(key)

    def _resolve(self, kind: str, i: int, *loop: int) -> str:
        if i < 0 and self.n_blocks:
            i %= self.n_blocks
        prefix = f"loop.{loop[0] if loop else 0}." if self.looped else ""
        for name in (f"blocks.{i}.hook_{kind}", f"blocks.{i}.attn.hook_{kind}", f"layers.{i}.hook_{kind}"):
            if prefix + name in self:
                return prefix + name
        return f"{prefix}blocks.{i}.hook_{kind}"


def _strip_loop(name: str) -> str:
    if name.startswith("loop."):
        head, _, rest = name[5:].partition(".")
        if head.isdigit():
            return rest
    return name


class HookedModel(nn.Module):
    """Base of every hooked icgd model (hook dispatch in the spirit of TransformerLens's ``HookedRootModule``).

    Subclasses place :class:`HookPoint` modules and, when they run modules more than once, set :attr:`_passes`
    (looped models; :attr:`_prefix` = ``"loop.{k}."`` during pass k) or :attr:`_scope` (``"layers.{i}."`` while a
    module shared by several positions runs as layer i)."""

    _passes: int = 1

    def __init__(self) -> None:
        super().__init__()
        self._prefix = ""
        self._scope = ""

    def _name_hook_points(self) -> None:
        """Store each hook point's (first) module path in its ``name``."""
        for name, mod in self.named_modules():
            if isinstance(mod, HookPoint):
                mod.name = name

    def hook_points(self) -> dict[str, HookPoint]:
        """Hook points by module path (without loop prefix; a shared module appears under each of its paths)."""
        return {name: mod for name, mod in self.named_modules(remove_duplicate=False) if isinstance(mod, HookPoint)}

    def _prefixes(self) -> list[str]:
        return [""] if self._passes == 1 else [f"loop.{k}." for k in range(self._passes)]

    def hook_names(self) -> list[str]:
        """Every hook name a forward pass can produce."""
        return [p + name for p in self._prefixes() for name in self.hook_points()]

    def get_submodule(self, target: str) -> nn.Module:
        """``nn.Module.get_submodule``, also for hook names with a ``loop.{k}.`` prefix."""
        return super().get_submodule(_strip_loop(target) if self._passes > 1 else target)

    def _resolve(self, name: str, points: dict[str, HookPoint]) -> HookPoint:
        path = name
        if name.startswith("loop."):
            head = name[5:].partition(".")[0]
            if self._passes == 1 or not head.isdigit() or int(head) >= self._passes:
                raise ICGDError(f"no hook point {name!r}: this model runs {self._passes} pass(es), so loop prefixes "
                                f"go from 'loop.0.' to 'loop.{self._passes - 1}.'" if self._passes > 1 else
                                f"no hook point {name!r}: this model is not looped; drop the 'loop.' prefix")
            path = _strip_loop(name)
        if path not in points:
            example = next(iter(points), "blocks.0.hook_resid_post")
            raise ICGDError(f"no hook point {name!r}; names look like {example!r} (see model.hook_names())")
        return points[path]

    def _namer(self, points: dict[str, HookPoint]) -> Callable[[nn.Module], str]:
        """The function giving the full name under which a hook point fires now."""
        aliases: dict[int, list[str]] = {}
        for path, mod in points.items():
            aliases.setdefault(id(mod), []).append(path)

        def name_of(mod: nn.Module) -> str:
            paths = aliases[id(mod)]
            if len(paths) > 1 and self._scope:
                return self._prefix + next((p for p in paths if p.startswith(self._scope)), paths[0])
            return self._prefix + paths[0]
        return name_of

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]] = ()) -> Iterator[HookedModel]:
        """Attach ``(name, fn)`` hooks for the duration of the block; ``fn(activation, full_name)`` may return a
        replacement activation. The hooks are removed on exit, also when the block raises."""
        points, handles = self.hook_points(), []
        name_of = self._namer(points)

        def wrap(fn: HookFn, want: str):
            def hook(mod, args, out):
                name = name_of(mod)
                if name != want and (want.startswith("loop.") or _strip_loop(name) != want):
                    return None
                return fn(out, name)
            return hook

        try:
            for name, fn in fwd_hooks:
                handles.append(self._resolve(name, points).register_forward_hook(wrap(fn, name)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, *inputs, fwd_hooks: Iterable[tuple[str, HookFn]] = (), **kwargs):
        """``self(*inputs, **kwargs)`` with the hooks attached."""
        with self.hooks(fwd_hooks):
            return self(*inputs, **kwargs)

    def _cache_size(self) -> int:
        blocks = getattr(self, "blocks", None)
        return len(blocks) if blocks is not None else 0

    def run_with_cache(self, *inputs, names_filter: Callable[[str], bool] | None = None, **kwargs
                       ) -> tuple[torch.Tensor, ActivationCache]:
        """The output and every hooked activation (detached), keyed by hook name in execution order.

        Caching attention patterns and per-head outputs (``hook_pattern``, ``hook_z``) makes attention take its
        slower, materialising path; filter them out (``names_filter``) for a cheaper cache."""
        cache = ActivationCache(n_blocks=self._cache_size(), looped=self._passes > 1)
        points, handles = self.hook_points(), []
        name_of = self._namer(points)

        def save(mod, args, out):
            name = name_of(mod)
            if names_filter is None or names_filter(name):
                cache[name] = out.detach()

        by_module: dict[int, tuple[HookPoint, list[str]]] = {}
        for path, mod in points.items():
            by_module.setdefault(id(mod), (mod, []))[1].append(path)
        try:
            for mod, paths in by_module.values():
                if names_filter is None or any(names_filter(p + q) for p in self._prefixes() for q in paths):
                    handles.append(mod.register_forward_hook(save))
            out = self(*inputs, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return out, cache
