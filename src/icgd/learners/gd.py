"""Projected gradient descent on Wu's N-layer network, by autograd: the reference for :mod:`icgd.constructions`.

    L_n(w) = 1/(2n) Σ_i ‖f(w, x_i) − y_i‖²,    w ← clip(w − η ∇L_n(w), −B, B)
"""

from __future__ import annotations

import torch

from icgd._checks import as_float_tensor, positive_float, positive_int
from icgd.errors import NonFiniteError, ShapeError
from icgd.learners.base import Learner
from icgd.nets import NetSpec, check_prompt, forward, forward_all


def empirical_risk(spec: NetSpec, w: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """L_n(w) per prompt, ``(B,)``, for batched ``w (B, D_w)``, ``X (B, n, d_in)``, ``Y (B, n, d_out)`` (validated:
    shapes, finiteness; gradients flow to `w`)."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        w = as_float_tensor(w, "w")
    elif not bool(torch.isfinite(w.detach()).all()):
        raise NonFiniteError("w contains NaN or inf")
    X, Y, _, _ = check_prompt(spec, X, Y, w.detach(), w.dtype)
    if w.dim() != 2 or w.shape[0] not in (1, X.shape[0]):
        raise ShapeError(f"w must be (B, D_w) with B = {X.shape[0]} prompts, got {tuple(w.shape)}")
    return _risk(spec, w.expand(X.shape[0], -1), X, Y)


def _risk(spec: NetSpec, w: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    pred = forward_all(spec, w, X)[-1]
    return 0.5 * ((pred - Y) ** 2).sum(dim=(-1, -2)) / X.shape[-2]


def gd_trajectory(spec: NetSpec, X, Y, w0, eta: float, steps: int, box: float | None = None) -> torch.Tensor:
    """Iterates of (projected) gradient descent, ``(B, steps+1, D_w)``; index 0 is `w0`.

    Unbatched ``X (n, d_in)``, ``Y (n, d_out)``, ``w0 (D_w,)`` give ``(steps+1, D_w)``. Gradients come from autograd
    on :func:`empirical_risk`; all prompts are stepped together (the risks of different prompts are independent, so
    the gradient of their sum is the stack of their gradients). Works in float32 and float64.
    """
    X, Y, w, single = check_prompt(spec, X, Y, w0)
    eta = positive_float(eta, "eta")
    steps = positive_int(steps, "steps", minimum=0)
    if box is not None:
        box = positive_float(box, "box")
    traj = [w]
    with torch.enable_grad():
        for _ in range(steps):
            w = w.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_risk(spec, w, X, Y).sum(), w)
            w = w.detach() - eta * grad
            if box is not None:
                w = w.clamp(-box, box)
            traj.append(w)
    out = torch.stack(traj, dim=1)
    return out[0] if single else out


class NetworkGD(Learner):
    """The learner protocol around :func:`gd_trajectory`: `steps` steps of projected GD from `w0` on the network
    `spec` fitted to the context, then ``f(w_steps, x_query)``. The reference of :func:`icgd.constructions.deep_gd`
    and :func:`icgd.constructions.deep_gd_softmax`."""

    name = "network_gd"

    def __init__(self, spec: NetSpec, w0, *, eta: float, steps: int, box: float | None = None):
        self.spec, self.w0, self.eta, self.steps, self.box = spec, w0, eta, steps, box

    def _predict(self, X: torch.Tensor, Y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        w = gd_trajectory(self.spec, X, Y, self.w0, self.eta, self.steps, self.box)[:, -1]
        return forward(self.spec, w, x_query)

    def _hparams(self):
        return {"spec": self.spec, "eta": self.eta, "steps": self.steps, "box": self.box}
