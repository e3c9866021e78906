"""Compact storage for thousands of attention heads.

A head m of the papers has ``Q_m, K_m ∈ R^{r×D}`` and ``V_m ∈ R^{D×D}``. The constructions need thousands of heads
per layer whose matrices hold a handful of nonzeros each; dense storage would take tens of GB. A
:class:`HeadBank` stores heads in **groups** that share their query/key rows and their value map:

    Q_{g,h} = diag(α_{g,h}[block_g]) Q_g,    K_{g,h} = K_g,    V_{g,h} = c_{g,h} V_g

so that ``⟨Q_{g,h} h_i, K_{g,h} h_s⟩ = Σ_b α_{g,h,b} U_{g,b}(i, s)`` with the shared row-block scores
``U_{g,b}(i, s) = Σ_{rows ρ in block b} (Q_g h_i)_ρ (K_g h_s)_ρ``. The work on rows is done once per group, and each
head only costs a scalar combination of its group's block scores. ``Q_g``/``K_g`` (:class:`RowMap`) and ``V_g``
(:class:`ValueMap`) are either dense or sparse (a few ``(index, coefficient)`` pairs per row / COO entries).
:meth:`HeadBank.dense` materialises the per-head matrices (for tests and small layers).
"""

from __future__ import annotations

import torch
from torch import nn

from icgd.errors import ShapeError


def _param(t: torch.Tensor, trainable: bool) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=trainable)


class RowMap(nn.Module):
    """G linear maps ``R^D → R^r``: ``(B, T, D) → (B, T, G, r)``.

    Dense: a weight ``(G, r, D)``. Sparse: row ρ of group g is ``Σ_z coef[g, ρ, z] · h[idx[g, ρ, z]]``.
    """

    def __init__(self, dim: int, *, weight: torch.Tensor | None = None, idx: torch.Tensor | None = None,
                 coef: torch.Tensor | None = None, trainable: bool = False):
        super().__init__()
        self.dim = dim
        self.is_dense = weight is not None
        if self.is_dense:
            if weight.dim() != 3 or weight.shape[-1] != dim:
                raise ShapeError(f"dense row weight must be (groups, rows, {dim}), got {tuple(weight.shape)}")
            self.weight = _param(weight, trainable)
        else:
            if idx is None or coef is None or idx.shape != coef.shape or idx.dim() != 3:
                raise ShapeError("sparse rows need idx and coef of the same shape (groups, rows, nnz)")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= dim):
                raise ShapeError(f"row indices must lie in [0, {dim})")
            self.register_buffer("idx", idx.long())
            self.coef = _param(coef, trainable)

    @property
    def groups(self) -> int:
        return (self.weight if self.is_dense else self.idx).shape[0]

    @property
    def rows(self) -> int:
        return (self.weight if self.is_dense else self.idx).shape[1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.is_dense:
            return torch.einsum("btd,grd->btgr", h, self.weight)
        return (h[..., self.idx] * self.coef).sum(-1)

    def dense(self) -> torch.Tensor:
        """The maps as a dense ``(G, r, D)`` tensor."""
        if self.is_dense:
            return self.weight.detach()
        out = torch.zeros(*self.idx.shape[:2], self.dim, dtype=self.coef.dtype, device=self.coef.device)
        return out.scatter_add_(-1, self.idx, self.coef.detach())

    def nnz(self) -> int:
        return int(((self.weight if self.is_dense else self.coef) != 0).sum())


class ValueMap(nn.Module):
    """G linear maps ``R^D → R^D`` split into a read (``(B, T, D) → (B, T, G, e)``) and an emit
    (``(B, T, G, e) → (B, T, D)``, summing over groups), so attention weights can be applied in between.

    Dense: a weight ``(G, D, D)`` (e = D). Sparse: COO entries ``coef · h[src] → out[dst]``, each ``(G, e)``.
    """

    def __init__(self, dim: int, *, weight: torch.Tensor | None = None, src: torch.Tensor | None = None,
                 dst: torch.Tensor | None = None, coef: torch.Tensor | None = None, trainable: bool = False):
        super().__init__()
        self.dim = dim
        self.is_dense = weight is not None
        if self.is_dense:
            if weight.dim() != 3 or weight.shape[-2:] != (dim, dim):
                raise ShapeError(f"dense value weight must be (groups, {dim}, {dim}), got {tuple(weight.shape)}")
            self.weight = _param(weight, trainable)
        else:
            if src is None or dst is None or coef is None or not (src.shape == dst.shape == coef.shape):
                raise ShapeError("sparse values need src, dst and coef of the same shape (groups, entries)")
            for name, t in (("src", src), ("dst", dst)):
                if t.numel() and (int(t.min()) < 0 or int(t.max()) >= dim):
                    raise ShapeError(f"value {name} indices must lie in [0, {dim})")
            self.register_buffer("src", src.long())
            self.register_buffer("dst", dst.long())
            self.coef = _param(coef, trainable)

    @property
    def groups(self) -> int:
        return (self.weight if self.is_dense else self.src).shape[0]

    def read(self, h: torch.Tensor) -> torch.Tensor:
        if self.is_dense:
            return torch.einsum("btd,ged->btge", h, self.weight)
        return h[..., self.src] * self.coef

    def emit(self, vals: torch.Tensor) -> torch.Tensor:
        if self.is_dense:
            return vals.sum(-2)
        out = vals.new_zeros(*vals.shape[:-2], self.dim)
        return out.index_add(-1, self.dst.reshape(-1), vals.reshape(*vals.shape[:-2], -1))

    def dense(self) -> torch.Tensor:
        if self.is_dense:
            return self.weight.detach()
        G = self.src.shape[0]
        out = torch.zeros(G, self.dim, self.dim, dtype=self.coef.dtype, device=self.coef.device)
        g = torch.arange(G, device=self.src.device)[:, None].expand_as(self.src)
        return out.index_put_((g, self.dst, self.src), self.coef.detach(), accumulate=True)

    def nnz(self) -> int:
        return int(((self.weight if self.is_dense else self.coef) != 0).sum())


class HeadBank(nn.Module):
    """G groups × H heads sharing rows within a group (see the module docstring).

    `alpha` ``(G, H, nb)`` scales row-block b of the query of head h; `block` ``(G, r)`` assigns each row a block;
    `c` ``(G, H)`` scales the group's value map.
    """

    def __init__(self, q: RowMap, k: RowMap, v: ValueMap, *, alpha: torch.Tensor | None = None,
                 c: torch.Tensor | None = None, block: torch.Tensor | None = None, trainable: bool = False):
        super().__init__()
        G, r = q.groups, q.rows
        if (k.groups, k.rows) != (G, r) or v.groups != G or q.dim != k.dim or q.dim != v.dim:
            raise ShapeError("query rows, key rows and values must have the same groups, rows and dimension")
        ref = q.weight if q.is_dense else q.coef
        if block is None:
            block = torch.zeros(G, r, dtype=torch.long, device=ref.device)
        if block.shape != (G, r):
            raise ShapeError(f"block must have shape ({G}, {r}), got {tuple(block.shape)}")
        nb = int(block.max()) + 1 if block.numel() else 1
        if alpha is None:
            alpha = torch.ones(G, 1, nb, dtype=ref.dtype, device=ref.device)
        if c is None:
            c = torch.ones(G, alpha.shape[1], dtype=ref.dtype, device=ref.device)
        if alpha.dim() != 3 or alpha.shape[0] != G or alpha.shape[2] != nb or c.shape != alpha.shape[:2]:
            raise ShapeError(f"alpha must be ({G}, H, {nb}) and c ({G}, H); got {tuple(alpha.shape)}, {tuple(c.shape)}")
        self.q, self.k, self.v = q, k, v
        self.register_buffer("block", block.long())
        self.register_buffer("onehot", nn.functional.one_hot(block.long(), nb).to(ref.dtype))
        self.alpha = _param(alpha, trainable)
        self.c = _param(c, trainable)

    @classmethod
    def from_dense(cls, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, trainable: bool = False) -> HeadBank:
        """Heads given as dense ``Q, K (M, r, D)`` and ``V (M, D, D)``: one group per head."""
        if Q.dim() != 3 or Q.shape != K.shape or V.shape != (Q.shape[0], Q.shape[2], Q.shape[2]):
            raise ShapeError(f"need Q, K of shape (M, r, D) and V of shape (M, D, D); got "
                             f"{tuple(Q.shape)}, {tuple(K.shape)}, {tuple(V.shape)}")
        D = Q.shape[-1]
        return cls(RowMap(D, weight=Q, trainable=trainable), RowMap(D, weight=K, trainable=trainable),
                   ValueMap(D, weight=V, trainable=trainable), trainable=trainable)

    @property
    def dim(self) -> int:
        return self.q.dim

    @property
    def num_heads(self) -> int:
        return self.alpha.shape[0] * self.alpha.shape[1]

    def num_params(self) -> int:
        """Nonzero stored parameters (the per-head dense equivalent is ``3·heads·D²``)."""
        return self.q.nnz() + self.k.nnz() + self.v.nnz() + int((self.alpha != 0).sum()) + int((self.c != 0).sum())

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head ``Q, K (heads, r, D)`` and ``V (heads, D, D)``, heads ordered group-major."""
        Qg, Kg, Vg = self.q.dense(), self.k.dense(), self.v.dense()
        alpha, c = self.alpha.detach(), self.c.detach()
        G, H, _ = alpha.shape
        scale = torch.gather(alpha, 2, self.block[:, None, :].expand(G, H, -1))  # (G, H, r)
        Q = (scale[..., None] * Qg[:, None]).reshape(G * H, *Qg.shape[1:])
        K = Kg[:, None].expand(G, H, *Kg.shape[1:]).reshape(G * H, *Kg.shape[1:])
        V = (c[..., None, None] * Vg[:, None]).reshape(G * H, *Vg.shape[1:])
        return Q, K, V

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query rows, key rows ``(B, T, G, r)`` and value reads ``(B, T, G, e)``."""
        if h.shape[-1] != self.dim:
            raise ShapeError(f"tokens have dimension {h.shape[-1]} but the heads expect {self.dim}")
        return self.q(h), self.k(h), self.v.read(h)


class BankView:
    """A :class:`HeadBank` seen with other head coefficients ``alpha`` and/or ``c`` for one call (the bank itself is
    not changed); everything else is the bank's."""

    def __init__(self, bank: HeadBank, alpha: torch.Tensor | None = None, c: torch.Tensor | None = None):
        self._bank = bank
        self.alpha = bank.alpha if alpha is None else alpha
        self.c = bank.c if c is None else c

    def __getattr__(self, name: str):
        return getattr(self._bank, name)

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return HeadBank.dense(self)


def bank_for(layer: nn.Module, h: torch.Tensor) -> HeadBank | BankView:
    """The heads of `layer` for the input `h`: ``layer.heads``, or, when the layer has ``coefficients`` (a module
    mapping the tokens and the bank to ``{"alpha": …, "c": …}``, e.g. a GD step whose size depends on the number
    of context tokens), a :class:`BankView` with those coefficients. Nothing is stored between calls."""
    coefficients = getattr(layer, "coefficients", None)
    return layer.heads if coefficients is None else BankView(layer.heads, **coefficients(h, layer.heads))


class HeadLayer(nn.Module):
    """Base of the layers whose heads live in a :class:`HeadBank` (ReLU attention, EWML).

    ``coefficients`` (optional child module) gives prompt-dependent head coefficients per call (:func:`bank_for`).
    """

    def __init__(self, heads: HeadBank, **options):
        super().__init__()
        self.heads = heads
        for name, value in options.items():
            setattr(self, name, value)

    @classmethod
    def from_dense(cls, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, *, trainable: bool = False, **options):
        """From per-head dense ``Q, K (M, r, D)`` and ``V (M, D, D)``; `options` go to the constructor."""
        return cls(HeadBank.from_dense(Q, K, V, trainable=trainable), **options)

    @property
    def num_heads(self) -> int:
        return self.heads.num_heads

    @property
    def dim(self) -> int:
        return self.heads.dim

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, dim={self.dim}"
