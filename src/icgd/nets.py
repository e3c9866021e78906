"""Wu et al.'s N-layer bias-free network (Definition 1) on flat weight vectors.

    p(0) = x,   p(j) = r(V_j p(j−1))  for j = 1 … N,   f(w, x) = p(N)

with ``V_1 ∈ R^{K×d_in}``, ``V_j ∈ R^{K×K}``, ``V_N ∈ R^{d_out×K}`` and the activation r on every layer, the output
layer included (``output_activation=False`` drops it on the last layer).

**Weight order (a contract).** ``w`` is the row-major flattening of each layer's ``(out, in)`` matrix, layers in
order: exactly ``torch.cat([lin.weight.flatten() for lin in layers])`` for bias-free ``nn.Linear`` layers, and the
paper's ``w = [v_11, …, v_1K, …, v_N d_out]`` with ``v_jk`` row k of V_j.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from icgd._checks import as_float_tensor, batched, check_last_dim, positive_float, positive_int
from icgd import tokens
from icgd.errors import ShapeError, SpecError, UnknownActivationError


@dataclass(frozen=True)
class Activation:
    """An activation r with its derivative r′ (both element-wise)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    deriv: Callable[[torch.Tensor], torch.Tensor]
    smooth: bool  # C^∞, as Theorem 1 of Wu et al. requires

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.fn(t)


def _gelu_deriv(t: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return cdf + t * pdf


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("sigmoid", torch.sigmoid, lambda t: torch.sigmoid(t) * (1 - torch.sigmoid(t)), True),
        Activation("tanh", torch.tanh, lambda t: 1 - torch.tanh(t) ** 2, True),
        # r′(0) = 0, the convention of autograd
        Activation("relu", torch.relu, lambda t: (t > 0).to(t.dtype), False),
        Activation("gelu", nn.functional.gelu, _gelu_deriv, True),
        Activation("softplus", nn.functional.softplus, torch.sigmoid, True),
        Activation("identity", lambda t: t, torch.ones_like, True),
    ]
}


def get_activation(name: str | Activation) -> Activation:
    if isinstance(name, Activation):
        return name
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise UnknownActivationError(
            f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


@dataclass(frozen=True)
class NetSpec:
    """Shape of Wu's N-layer bias-free network: `depth` = N weight matrices, hidden width K."""

    d_in: int
    width: int
    depth: int
    d_out: int
    activation: str = "sigmoid"
    output_activation: bool = True

    def __post_init__(self) -> None:
        for name in ("d_in", "width", "depth", "d_out"):
            positive_int(getattr(self, name), name)
        get_activation(self.activation)
        if not isinstance(self.output_activation, bool):
            raise SpecError(f"output_activation must be True or False, got {self.output_activation!r}")

    @property
    def act(self) -> Activation:
        return get_activation(self.activation)

    def layer_act(self, j: int) -> Activation:
        """Activation of layer j (1-based)."""
        if j == self.depth and not self.output_activation:
            return ACTIVATIONS["identity"]
        return self.act

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """``(out_j, in_j)`` of every layer j = 1 … N."""
        dims = [self.d_in] + [self.width] * (self.depth - 1) + [self.d_out]
        return [(dims[j + 1], dims[j]) for j in range(self.depth)]

    @property
    def num_params(self) -> int:
        return sum(o * i for o, i in self.shapes)

    def offsets(self) -> list[slice]:
        """Slice of layer j's block in the flat weight vector, j = 1 … N (list index j − 1)."""
        out, start = [], 0
        for o, i in self.shapes:
            out.append(slice(start, start + o * i))
            start += o * i
        return out

    def weight_index(self, j: int, k: int, q: int) -> int:
        """Position of V_j[k, q] (1-based layer j, 0-based row k and column q) in the flat weight vector."""
        o, i = self.shapes[j - 1]
        if not (0 <= k < o and 0 <= q < i):
            raise SpecError(f"V_{j} has shape {(o, i)}, asked for entry {(k, q)}")
        return self.offsets()[j - 1].start + k * i + q

    @property
    def num_units(self) -> int:
        """Number of pre-activations per input, P = (N−1)K + d_out."""
        return sum(o for o, _ in self.shapes)


def _check_weights(spec: NetSpec, w) -> tuple[torch.Tensor, bool]:
    w, single = batched(as_float_tensor(w, "w"), "w", 1)
    check_last_dim(w, "w", spec.num_params, "spec.num_params")
    return w, single


def check_prompt(spec: NetSpec, X, Y, w0, dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Validate and batch a prompt ``(X, Y, w0)`` for `spec`: returns ``X (B, n, d_in)``, ``Y (B, n, d_out)``,
    ``w0 (B, D_w)`` and whether X was unbatched. Inputs take the dtype of `w0` unless `dtype` is given."""
    w0 = as_float_tensor(w0, "w0", dtype)
    X, Y, _, single = tokens.check_prompt(X, Y, d_in=spec.d_in, d_out=spec.d_out, dtype=w0.dtype)
    w0, _ = batched(w0, "w0", 1)
    check_last_dim(w0, "w0", spec.num_params, "spec.num_params")
    B = X.shape[0]
    if w0.shape[0] not in (1, B):
        raise ShapeError(f"w0 has {w0.shape[0]} rows but X has {B} prompts")
    return X, Y, w0.expand(B, -1), single


def unflatten(spec: NetSpec, w: torch.Tensor) -> list[torch.Tensor]:
    """Flat weights ``(D_w,)`` or ``(B, D_w)`` → per-layer matrices ``(…, out_j, in_j)``."""
    w = as_float_tensor(w, "w")
    if w.dim() not in (1, 2):
        raise ShapeError(f"w must have shape (D_w,) or (B, D_w), got {tuple(w.shape)}")
    check_last_dim(w, "w", spec.num_params, "spec.num_params")
    return [w[..., sl].reshape(*w.shape[:-1], o, i) for sl, (o, i) in zip(spec.offsets(), spec.shapes)]


def flatten(spec: NetSpec, mats: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer matrices → flat weights (the inverse of :func:`unflatten`)."""
    if len(mats) != spec.depth:
        raise ShapeError(f"expected {spec.depth} weight matrices, got {len(mats)}")
    for j, (m, shape) in enumerate(zip(mats, spec.shapes), start=1):
        if tuple(m.shape[-2:]) != shape:
            raise ShapeError(f"V_{j} must have shape (..., {shape[0]}, {shape[1]}), got {tuple(m.shape)}")
    return torch.cat([m.reshape(*m.shape[:-2], -1) for m in mats], dim=-1)


def forward_all(spec: NetSpec, w: torch.Tensor, X: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output p(1) … p(N) for batched ``w (B, D_w)`` and ``X (B, n, d_in)`` (no checks)."""
    p, outs = X, []
    for j, V in enumerate(unflatten(spec, w), start=1):
        p = spec.layer_act(j)(p @ V.transpose(-1, -2))
        outs.append(p)
    return outs


def forward(spec: NetSpec, w, X) -> torch.Tensor:
    """f(w, x) for flat weights ``w`` ``(D_w,)`` or ``(B, D_w)`` and inputs ``X`` ``(n, d_in)`` or ``(B, n, d_in)``.

    Returns ``(n, d_out)`` when both are unbatched, else ``(B, n, d_out)``.
    """
    w, w_single = _check_weights(spec, w)
    X, x_single = batched(as_float_tensor(X, "X", w.dtype), "X", 2)
    check_last_dim(X, "X", spec.d_in, "spec.d_in")
    if w.shape[0] != X.shape[0] and 1 not in (w.shape[0], X.shape[0]):
        raise ShapeError(f"w has {w.shape[0]} rows but X has {X.shape[0]} prompts")
    out = forward_all(spec, w, X)[-1]
    return out[0] if (w_single and x_single) else out


def to_module(spec: NetSpec, w) -> nn.Sequential:
    """An ``nn.Sequential`` of bias-free ``nn.Linear`` layers and activations computing f(w, ·)."""
    w, single = _check_weights(spec, w)
    if not single:
        raise ShapeError(f"to_module takes one weight vector (D_w,), got shape {tuple(w.shape)}")
    layers: list[nn.Module] = []
    for j, (V, (o, i)) in enumerate(zip(unflatten(spec, w[0]), spec.shapes), start=1):
        lin = nn.Linear(i, o, bias=False, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(V)
        layers.append(lin)
        layers.append(_ActModule(spec.layer_act(j)))
    return nn.Sequential(*layers)


class _ActModule(nn.Module):
    def __init__(self, act: Activation):
        super().__init__()
        self.act = act

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.act(t)

    def extra_repr(self) -> str:
        return self.act.name


def init_weights(spec: NetSpec, batch: int | None = None, *, generator: torch.Generator | None = None,
                 scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """Random weights, entries of V_j ~ N(0, scale²/in_j) (LeCun-style), flat order as in :func:`flatten`."""
    shape = (1 if batch is None else positive_int(batch, "batch"),)
    scale = positive_float(scale, "scale", allow_zero=True)
    parts = [torch.randn(*shape, o * i, generator=generator, dtype=dtype) * (scale / math.sqrt(i))
             for o, i in spec.shapes]
    w = torch.cat(parts, dim=-1)
    return w[0] if batch is None else w
