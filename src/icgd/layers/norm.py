"""Layer normalisation as a residual layer.

The paper's λ (Ba et al.; Akyürek et al. Eq. 7) is ``λ(z) = γ ⊙ (z − mean(z)) / sqrt(var(z) + ε) + β`` with the
biased variance over the r coordinates of z. icgd's layers are all residual ``(B, T, D) → (B, T, D)``, so
:class:`LayerNorm` applies λ to a linear read of the token and writes the result back linearly:

    h_i + W_out λ(W_in h_i),     W_in ∈ R^{r×D},  W_out ∈ R^{D×r}.

With ``W_in`` selecting some coordinates this is the paper's LayerNorm restricted to them — the role played in the
paper by the large constants of Lemma 6 that make the other hidden units bypass the normalisation. Dividing by the
standard deviation is the only division a transformer layer has (Akyürek et al. Lemma 8).
"""

from __future__ import annotations

import torch
from torch import nn

from icgd.errors import ShapeError, SpecError


class LayerNorm(nn.Module):
    """``h + W_out (γ ⊙ (z − mean z) / sqrt(var z + eps) + β)``, ``z = W_in h``, applied to every token.

    ``eps = 0`` is allowed (the caller then guarantees var z > 0: a zero variance gives NaN)."""

    def __init__(self, W_in: torch.Tensor, W_out: torch.Tensor, *, eps: float = 1e-5,
                 gain: torch.Tensor | None = None, bias: torch.Tensor | None = None, trainable: bool = False):
        super().__init__()
        if W_in.dim() != 2 or W_out.dim() != 2 or W_out.shape != (W_in.shape[1], W_in.shape[0]):
            raise ShapeError(f"need W_in (r, D) and W_out (D, r), got {tuple(W_in.shape)} and {tuple(W_out.shape)}")
        r = W_in.shape[0]
        if r < 1:
            raise SpecError("LayerNorm needs at least one normalised coordinate (W_in has no rows)")
        if not eps >= 0:
            raise SpecError(f"eps must be >= 0, got {eps}")
        gain = torch.ones(r, dtype=W_in.dtype) if gain is None else gain
        bias = torch.zeros(r, dtype=W_in.dtype) if bias is None else bias
        if gain.shape != (r,) or bias.shape != (r,):
            raise ShapeError(f"gain and bias must have shape ({r},), got {tuple(gain.shape)} and {tuple(bias.shape)}")
        self.dim, self.width, self.eps = W_in.shape[1], r, float(eps)
        self.W_in = nn.Parameter(W_in.clone(), requires_grad=trainable)
        self.W_out = nn.Parameter(W_out.clone(), requires_grad=trainable)
        self.gain = nn.Parameter(gain.to(W_in.dtype).clone(), requires_grad=trainable)
        self.bias = nn.Parameter(bias.to(W_in.dtype).clone(), requires_grad=trainable)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.dim:
            raise ShapeError(f"tokens have dimension {h.shape[-1]}, the LayerNorm expects {self.dim}")
        z = h @ self.W_in.T
        z = z - z.mean(-1, keepdim=True)
        normed = z / torch.sqrt((z * z).mean(-1, keepdim=True) + self.eps)
        return h + (self.gain * normed + self.bias) @ self.W_out.T

    def num_params(self) -> int:
        """Nonzero parameters."""
        return sum(int((p != 0).sum()) for p in self.parameters())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, width={self.width}, eps={self.eps:g}"
