"""Sum-of-ReLU approximations of 1-D functions (Wu et al. Def. 4, Bai et al. Def. 12):

    f̂(t) = Σ_m c_m relu(a1_m t + a2_m),    with |a1_m| + |a2_m| ≤ 1.

The generic fit is the piecewise-linear interpolant on `knots` equispaced points of ``[−R, R]``, written as
ReLUs (Wu et al. App. A.2 sketch this for the sigmoid):

    f̂(t) = f(−R) relu(1) + s_0 relu(t + R) + Σ_{h=1}^{M−2} (s_h − s_{h−1}) relu(t − b_h)

— M = `knots` units, error O((2R/M)² max|f″|) on the interval, against the paper's Monte-Carlo Õ(M^{−1/2}).
Left of −R the fit is constant and right of R it continues linearly: callers must keep the argument inside.
Each unit is rescaled to ``|a1| + |a2| = 1`` with the factor moved into c (the norm condition of Def. 4).
ReLU and identity have exact fits; the ReLU derivative (a step) is a ramp of width `ramp`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from icgd.errors import NonFiniteError, SpecError
from icgd.nets import Activation


@dataclass(frozen=True)
class ReluFit:
    """Units ``(a1, a2, c)``, each a ``(M,)`` tensor, of f̂(t) = Σ c relu(a1 t + a2), valid on ``[−R, R]``."""

    a1: torch.Tensor
    a2: torch.Tensor
    c: torch.Tensor
    R: float

    @property
    def units(self) -> int:
        return self.a1.shape[0]

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return (self.c * torch.relu(t[..., None] * self.a1 + self.a2)).sum(-1)

    def sup_abs(self) -> float:
        """max |f̂| on [−R, R] (attained at a breakpoint or an end, f̂ being piecewise linear)."""
        pts = torch.cat([self.a2.new_tensor([-self.R, self.R]), -self.a2[self.a1 != 0] / self.a1[self.a1 != 0]])
        pts = pts[(pts >= -self.R) & (pts <= self.R)]
        return float(self(pts).abs().max())


def _units(a1: torch.Tensor, a2: torch.Tensor, c: torch.Tensor, R: float, dtype: torch.dtype) -> ReluFit:
    """Units rescaled to |a1| + |a2| = 1 (the factor moves into c), cast to `dtype`."""
    scale = (a1.abs() + a2.abs()).clamp(min=1e-300)
    return ReluFit((a1 / scale).to(dtype), (a2 / scale).to(dtype), (c * scale).to(dtype), R)


def interpolant(f: Callable[[torch.Tensor], torch.Tensor], R: float, knots: int,
                dtype: torch.dtype = torch.float64) -> ReluFit:
    """Piecewise-linear interpolant of `f` on `knots` equispaced points of [−R, R], as `knots` ReLU units."""
    if isinstance(knots, bool) or not isinstance(knots, int) or knots < 2:
        raise SpecError(f"a sum-of-ReLU interpolant needs an integer knots >= 2, got {knots!r}")
    if not (isinstance(R, (int, float)) and math.isfinite(R) and R > 0):
        raise SpecError(f"the fit interval half-width R must be a finite number > 0, got {R!r}")
    b = torch.linspace(-R, R, knots, dtype=torch.float64)
    fb = f(b)
    if not bool(torch.isfinite(fb).all()):
        raise NonFiniteError(f"the function to fit is not finite on [-{R}, {R}]; fit it on a smaller interval")
    s = (fb[1:] - fb[:-1]) / (b[1:] - b[:-1])  # slopes of the M − 1 segments
    a1 = torch.cat([b.new_tensor([0.0, 1.0]), torch.ones(knots - 2, dtype=torch.float64)])
    a2 = torch.cat([b.new_tensor([1.0, R]), -b[1:-1]])
    c = torch.cat([fb[:1], s[:1], s[1:] - s[:-1]])
    return _units(a1, a2, c, R, dtype)


def _exact(units: list[tuple[float, float, float]], R: float, dtype: torch.dtype) -> ReluFit:
    a1, a2, c = (torch.tensor(col, dtype=torch.float64) for col in zip(*units))
    return _units(a1, a2, c, R, dtype)


def activation_fits(act: Activation, R: float, knots: int, *, ramp: float = 1e-6,
                    dtype: torch.dtype = torch.float64) -> tuple[ReluFit, ReluFit]:
    """Fits of r and r′ on [−R, R].

    relu: r = relu(t) exactly (1 unit); r′ = relu(t/δ) − relu(t/δ − 1), equal to the step 1{t > 0} outside
    (0, δ) with δ = `ramp` (2 units). identity: r = relu(t) − relu(−t), r′ = relu(1), exact. Others: interpolants.
    """
    if act.name == "relu":
        return _exact([(1.0, 0.0, 1.0)], R, dtype), _exact([(1 / ramp, 0.0, 1.0), (1 / ramp, -1.0, -1.0)], R, dtype)
    if act.name == "identity":
        return _exact([(1.0, 0.0, 1.0), (-1.0, 0.0, -1.0)], R, dtype), _exact([(0.0, 1.0, 1.0)], R, dtype)
    return interpolant(act.fn, R, knots, dtype), interpolant(act.deriv, R, knots, dtype)


def clamped(fit: ReluFit) -> ReluFit:
    """`fit` made constant right of R as well (one more unit cancels its last slope), so that it stays within
    max(|f(±R) − f(±∞)|) + the fit error of a function with finite limits (a sigmoid) on the whole line."""
    R = fit.R
    ends = torch.tensor([R, R + 1.0], dtype=torch.float64)
    vals = fit(ends.to(fit.a1.dtype)).double()
    slope = float(vals[1] - vals[0])
    units = [fit.a1.double(), fit.a2.double(), fit.c.double()]
    a1, a2, c = (torch.cat([u, u.new_tensor([v])]) for u, v in zip(units, (1.0, -R, -slope)))
    return _units(a1, a2, c, R, fit.a1.dtype)
