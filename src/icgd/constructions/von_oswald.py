"""von Oswald et al. (ICML 2023): one linear self-attention layer is one gradient-descent step (Prop. 1), and GD++
(App. A.10).

**Tokens** ``e_j = [x_j | y_j | t_j]``: context tokens hold ``(x_i, y_i, 1)``, query tokens ``(x_q, 0, 0)``. The
``t`` slot is the key mask: keys and values come from the context only ("the query token is excluded", §2), and
:class:`~icgd.layers.LinearAttention` divides by the number of keys, n. One layer (Eq. 8)::

    e_j ← e_j + (1/n) Σ_{i≤n} P W_V e_i e_iᵀ W_Kᵀ W_Q e_j,
    W_K = W_Q = [[I_x, 0], [0, 0]],   W_V = [[0, 0], [W_0, −I_y]],   P = η [[0, 0], [0, I_y]]

so ``y_j ← y_j − (η/n) Σ_i (y_i − W x_i) x_iᵀ x_j``: with W_0 = 0, after layer k the context y-slots hold the
residuals ``y_i − W_k x_i`` and the query's y-slot holds ``−W_k x_q``, where ``W_{k+1} = W_k − η ∇L(W_k)``,
``L(W) = 1/(2n) Σ_i ‖W x_i − y_i‖²``. The prediction is the negated query y-slot (the paper's read-out).

**GD++** adds an x-block to the value and projection: ``W_V = [[I_x, 0], [0, −I_y]]``, ``P = [[−γ I_x, 0],
[0, η I_y]]``, so every token also moves ``x_j ← x_j − (γ/n) Σ_i x_i x_iᵀ x_j`` (both updates use the pre-layer
tokens); the next layer does GD on the transformed inputs (Eq. 23).

**Conventions.** η is the step of GD on L above (the paper's P = η/N carries the 1/N that icgd's layer applies
itself). γ is *normalised* the same way: icgd's ``γ`` is the paper's γ times N (``H(X) = I − (γ/N) X Xᵀ``), so the
γ = 0.179 the paper reads off trained 2-layer models at N = 10 is ``gamma=1.79`` here. Either may be one number
(tied layers, the paper's recurrent models) or one per layer.
"""

from __future__ import annotations

import torch

from icgd._checks import finite_float, positive_int
from icgd.constructions.base import PromptModel, check_dtype, per_layer
from icgd.layers import LinearAttention
from icgd.memory import check_layers
from icgd.tokens import Layout


def lsa_layout(d_in: int, d_out: int) -> Layout:
    return Layout([("x", d_in), ("y", d_out), ("t", 1)])


def von_oswald_weights(d_in: int, d_out: int = 1, *, eta: float, gamma: float = 0.0,
                       dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """The paper's matrices ``W_K, W_Q, W_V, P`` of one layer on ``(x, y)`` tokens, each ``(d_in + d_out)²``
    (Prop. 1; with ``gamma`` the GD++ layer of App. A.10), in icgd's normalised convention (P = η, not η/N)."""
    d_in, d_out = positive_int(d_in, "d_in"), positive_int(d_out, "d_out")
    eta, gamma = finite_float(eta, "eta"), finite_float(gamma, "gamma")
    D = d_in + d_out
    x, y = slice(0, d_in), slice(d_in, D)
    W_KQ = torch.zeros(D, D, dtype=dtype)
    W_KQ[x, x] = torch.eye(d_in, dtype=dtype)
    W_V = torch.zeros(D, D, dtype=dtype)
    W_V[y, y] = -torch.eye(d_out, dtype=dtype)
    P = torch.zeros(D, D, dtype=dtype)
    P[y, y] = eta * torch.eye(d_out, dtype=dtype)
    if gamma:
        W_V[x, x] = torch.eye(d_in, dtype=dtype)
        P[x, x] = -gamma * torch.eye(d_in, dtype=dtype)
    return {"W_K": W_KQ, "W_Q": W_KQ.clone(), "W_V": W_V, "P": P}


def _lsa_layer(layout: Layout, weights: dict[str, torch.Tensor]) -> LinearAttention:
    """One LSA head on the layout's tokens: the (x, y) matrices embedded, the ``t`` slot as key mask."""
    D, xy = layout.dim, slice(0, layout.size("x") + layout.size("y"))
    dtype = weights["P"].dtype
    layer = LinearAttention(D, 1, D, key_flag=layout.index("t"), dtype=dtype)
    with torch.no_grad():
        for key, name in LinearAttention.PAPER_NAMES.items():
            full = torch.zeros(1, D, D, dtype=dtype)
            full[0, xy, xy] = weights[key]
            getattr(layer, name).copy_(full)
    layer.requires_grad_(False)
    return layer


class LinearGD(PromptModel):
    """Stacked LSA layers that run GD (or GD++) on linear regression; see :mod:`icgd.constructions.von_oswald`."""

    def __init__(self, d_in: int, d_out: int, etas: list[float], gammas: list[float], dtype: torch.dtype):
        layout = lsa_layout(d_in, d_out)
        self.layer_weights = [von_oswald_weights(d_in, d_out, eta=e, gamma=g, dtype=dtype)
                              for e, g in zip(etas, gammas)]
        layers = [_lsa_layer(layout, w) for w in self.layer_weights]
        roles = [("GD++ step" if g else "GD step") + f" {k + 1}" for k, g in enumerate(gammas)]
        super().__init__(layers, layout, d_in=d_in, d_out=d_out, dtype=dtype, roles=roles)
        self.etas, self.gammas = etas, gammas

    def weights(self, layer: int = 0) -> dict[str, torch.Tensor]:
        """``W_K, W_Q, W_V, P`` of one layer on ``(x, y)`` tokens (see :func:`von_oswald_weights`)."""
        return {k: v.clone() for k, v in self.layer_weights[layer].items()}


def linear_gd(d_in: int, d_out: int = 1, *, eta, steps: int = 1, dtype: torch.dtype = torch.float64) -> LinearGD:
    """`steps` LSA layers whose query prediction is ``W_steps x_q`` with ``W_0 = 0``,
    ``W_{t+1} = W_t − η ∇L(W_t)``, ``L(W) = 1/(2n) Σ_i ‖W x_i − y_i‖²`` (von Oswald et al., Prop. 1).
    `eta` is one step size or one per layer."""
    d_in, d_out = positive_int(d_in, "d_in"), positive_int(d_out, "d_out")
    steps = positive_int(steps, "steps")
    check_layers(f"linear_gd(d_in={d_in}, steps={steps})", steps, 1, 0, 4 * 8 * (d_in + d_out + 1) ** 2)
    return LinearGD(d_in, d_out, per_layer(eta, steps, "eta"), [0.0] * steps, check_dtype(dtype))


def gd_plus_plus(d_in: int, *, eta, gamma, steps: int, d_out: int = 1,
                 dtype: torch.dtype = torch.float64) -> LinearGD:
    """`steps` GD++ layers (von Oswald et al. App. A.10): each moves every token's x by
    ``x ← (I − (γ/n) X Xᵀ) x`` and its y as one GD step on the current inputs. γ is normalised by n (the paper's
    γ times N); `eta` and `gamma` are numbers or one per layer."""
    d_in, d_out = positive_int(d_in, "d_in"), positive_int(d_out, "d_out")
    steps = positive_int(steps, "steps")
    check_layers(f"gd_plus_plus(d_in={d_in}, steps={steps})", steps, 1, 0, 4 * 8 * (d_in + d_out + 1) ** 2)
    return LinearGD(d_in, d_out, per_layer(eta, steps, "eta"), per_layer(gamma, steps, "gamma", allow_zero=True),
                    check_dtype(dtype))
