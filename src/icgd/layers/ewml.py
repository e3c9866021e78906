"""The element-wise multiplication layer of Wu et al. (Definition 6)."""

from __future__ import annotations

import torch

from icgd.errors import ShapeError
from icgd.layers.heads import HeadBank, HeadLayer, bank_for, gather_last
from icgd.layers.plans import fast_state, frozen, rows_of


class EWML(HeadLayer):
    """``h_i + Σ_m ⟨Q_m h_i, K_m h_i⟩ V_m h_i`` (Wu et al. Def. 6): each token attends only to itself, with no
    activation and no normalisation, so every head is a trilinear product — the one operation that attention and
    MLPs cannot do exactly (Wu et al. Remark 3).

    A frozen sparse bank (:func:`icgd.layers.plans.bank_plan`) reads its query, key and value columns as slices of
    the tokens where they run contiguously (else one gather) and writes the value entries' destination columns (in place under
    :meth:`~icgd.layers.transformer.Transformer._run_layers`)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self._forward(h, inplace=False)

    def forward_inplace(self, h: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` adding the update into `h` itself where the layer has a plan."""
        return self._forward(h, inplace=True)

    def _forward(self, h: torch.Tensor, inplace: bool) -> torch.Tensor:
        mods = self._modules  # (nn.Module.__getattr__ costs more than this layer's arithmetic on small inputs)
        bank = mods["heads"]
        fast = None
        if mods.get("coefficients") is None and self.__dict__.get("coefficients") is None:
            fast = fast_state(bank)
        if fast is None:
            hb = bank_for(self, h)
            qh, kh, vals = hb.project(h)  # (B, T, G, r), (B, T, G, r), (B, T, G, e)
            # no activation: the heads of a group fold into one weight per row, μ (G, r) (HeadBank.self_coefficients)
            coef = (qh * kh).mul_(hb.self_coefficients()).sum(-1)  # (B, T, G)
            return hb.v.add_to(h, coef.unsqueeze(-1) * vals)
        plan = fast.plan
        if h.shape[-1] != plan.dim:
            raise ShapeError(f"tokens have dimension {h.shape[-1]} but the heads expect {plan.dim}")
        B, T = h.shape[:2]
        G, r = plan.G, plan.r
        if frozen(fast.alpha, fast.c):  # μ · (query and key coefficients), (r, G), kept with the plan
            mu = fast.__dict__.get("ew_mu")
            if mu is None:
                mu = fast.ew_mu = (HeadBank.self_coefficients(bank).detach().t() * plan.ew_coef).contiguous()
        else:
            mu = HeadBank.self_coefficients(bank).t() * plan.ew_coef
        views = plan.ew_views
        if views is not None:  # slices of the tokens (rows (r, G)), no gather
            qh, kh, vals = rows_of(h, views[0], r, G), rows_of(h, views[1], r, G), views[2](h)
        else:
            cols = gather_last(h, plan.ew_idx)  # (B, T, 2·r·G + E): query, key and value columns, rows (r, G)
            qh, kh = cols[..., : G * r].view(B, T, r, G), cols[..., G * r: 2 * G * r].view(B, T, r, G)
            vals = cols[..., 2 * G * r:]
        prod = (qh * kh).mul_(mu)
        coef = prod.squeeze(-2) if r == 1 else prod.sum(-2)  # (B, T, G)
        upd = plan.per_group(coef) * vals * plan.vcoef  # (B, T, E)
        return plan.write(h, upd, inplace)
