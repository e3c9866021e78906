"""The element-wise multiplication layer of Wu et al. (Definition 6)."""

from __future__ import annotations

import torch

from icgd.layers.heads import HeadLayer, bank_for


class EWML(HeadLayer):
    """``h_i + Σ_m ⟨Q_m h_i, K_m h_i⟩ V_m h_i`` (Wu et al. Def. 6): each token attends only to itself, with no
    activation and no normalisation, so every head is a trilinear product — the one operation that attention and
    MLPs cannot do exactly (Wu et al. Remark 3)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hb = bank_for(self, h)
        qh, kh, vals = hb.project(h)  # (B, T, G, r), (B, T, G, r), (B, T, G, e)
        # no activation: the heads of a group fold into one weight per row, μ (G, r) (HeadBank.self_coefficients)
        coef = (qh * kh).mul_(hb.self_coefficients()).sum(-1)  # (B, T, G)
        return hb.v.add_to(h, coef.unsqueeze(-1) * vals)
