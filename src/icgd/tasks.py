"""Prompt samplers. Randomness only through the `torch.Generator` passed in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icgd._checks import positive_int
from icgd.nets import NetSpec, forward, init_weights


@dataclass(frozen=True)
class Prompt:
    """A batch of regression prompts: context ``X (B, n, d_in)``, ``Y (B, n, d_out)`` and held-out queries."""

    X: torch.Tensor
    Y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    teacher: torch.Tensor | None = None  # (B, D_w) weights of the teacher network, when there is one


def network_regression(spec: NetSpec, n: int, m: int = 16, batch: int = 1, *, generator: torch.Generator,
                       teacher_scale: float = 2.0, noise: float = 0.0, x_clip: float | None = None,
                       dtype: torch.dtype = torch.float64) -> Prompt:
    """x ~ N(0, I) (optionally clipped to ±x_clip); y = f(w*, x) (+ noise) for a teacher network of the same
    architecture with entries of V_j ~ N(0, teacher_scale²/in_j), one teacher per prompt."""
    n, m, batch = positive_int(n, "n"), positive_int(m, "m", minimum=0), positive_int(batch, "batch")
    x = torch.randn(batch, n + m, spec.d_in, generator=generator, dtype=dtype)
    if x_clip is not None:
        x = x.clamp(-x_clip, x_clip)
    teacher = init_weights(spec, batch, generator=generator, scale=teacher_scale, dtype=dtype)
    y = forward(spec, teacher, x)
    if noise:
        y = y + noise * torch.randn(y.shape, generator=generator, dtype=dtype)
    return Prompt(x[:, :n], y[:, :n], x[:, n:], y[:, n:], teacher)
