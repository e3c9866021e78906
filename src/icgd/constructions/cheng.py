"""Cheng, Chen & Sra (ICML 2024): attention with a kernel non-linearity performs functional gradient descent.

**Tokens** ``[x | y | t]`` as in :mod:`icgd.constructions.von_oswald`. One :class:`~icgd.layers.KernelAttention`
layer, keys and values from the n context tokens only (the mask M = diag(I_n, 0)), query/key maps B = C = I on the
x-slot, value ``V = diag(0, …, 0, −r)``::

    y_j ← y_j − (η/n) Σ_{i≤n} y_i k(x_i, x_j)

keeps the invariant (their Eq. 3.2): context y-slots hold the residuals ``y_i − f_l(x_i)`` and the query's y-slot
holds ``−f_l(x_q)``, where ``f_0 = 0`` and ``f_{l+1}(x) = f_l(x) + (η/n) Σ_i (y_i − f_l(x_i)) k(x_i, x)`` — one
step of gradient descent on ``L(f) = 1/(2n) Σ_i (f(x_i) − y_i)²`` in the RKHS of k. The prediction is the negated
query y-slot.

Kernels (the layer's scores): ``linear`` ⟨x, x'⟩ (von Oswald's GD), ``relu`` relu(⟨x, x'⟩), ``exp``
exp(⟨x, x'⟩), ``rbf`` exp(−‖x − x'‖²/(2·bandwidth²)).
"""

from __future__ import annotations

import torch

from icgd._checks import positive_float, positive_int
from icgd.constructions.base import PromptModel, check_dtype, per_layer
from icgd.constructions.von_oswald import lsa_layout
from icgd.errors import SpecError
from icgd.layers import KernelAttention
from icgd.memory import check_layers
from icgd.layers.attention import KERNELS
from icgd.tokens import Layout


def _fgd_layer(layout: Layout, kernel: str, eta: float, bandwidth: float, dtype: torch.dtype) -> KernelAttention:
    d_in, D = layout.size("x"), layout.dim
    layer = KernelAttention(D, 1, d_in, score=kernel, bandwidth=bandwidth, key_flag=layout.index("t"), dtype=dtype)
    select_x = torch.zeros(1, d_in, D, dtype=dtype)
    select_x[0, :, layout.slice("x")] = torch.eye(d_in, dtype=dtype)
    W_v = torch.zeros(1, d_in, D, dtype=dtype)
    W_v[0, 0, layout.index("y")] = -1.0  # value: −y_i (one row suffices; d_head = d_in ≥ 1)
    W_o = torch.zeros(1, D, d_in, dtype=dtype)
    W_o[0, layout.index("y"), 0] = eta
    with torch.no_grad():
        layer.W_q.copy_(select_x)
        layer.W_k.copy_(select_x)
        layer.W_v.copy_(W_v)
        layer.W_o.copy_(W_o)
    layer.requires_grad_(False)
    return layer


class FunctionalGD(PromptModel):
    """Kernel-attention layers running functional GD; see :mod:`icgd.constructions.cheng`."""

    def __init__(self, d_in: int, kernel: str, etas: list[float], bandwidth: float, dtype: torch.dtype):
        layout = lsa_layout(d_in, 1)
        layers = [_fgd_layer(layout, kernel, e, bandwidth, dtype) for e in etas]
        super().__init__(layers, layout, d_in=d_in, d_out=1, dtype=dtype,
                         roles=[f"functional GD step {k + 1}" for k in range(len(etas))])
        self.kernel, self.etas, self.bandwidth = kernel, etas, bandwidth


def functional_gd(d_in: int, *, kernel: str, eta, steps: int, bandwidth: float = 1.0,
                  dtype: torch.dtype = torch.float64) -> FunctionalGD:
    """`steps` kernel-attention layers whose prediction is f_steps(x_q), ``f_0 = 0``,
    ``f_{t+1}(x) = f_t(x) + (η/n) Σ_i (y_i − f_t(x_i)) k(x_i, x)`` (Cheng, Chen & Sra, Prop. 1).
    `kernel` is linear, relu, exp or rbf; `eta` is one step size or one per layer."""
    d_in, steps = positive_int(d_in, "d_in"), positive_int(steps, "steps")
    check_layers(f"functional_gd(d_in={d_in}, steps={steps})", steps, 1, 0, 4 * 8 * (d_in + 2) ** 2)
    if kernel not in KERNELS:
        raise SpecError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    return FunctionalGD(d_in, kernel, per_layer(eta, steps, "eta"), positive_float(bandwidth, "bandwidth"),
                        check_dtype(dtype))
