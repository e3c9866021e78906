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

With at most two row blocks, a group's ReLU heads sum to ``F_g(U_0, U_1) = Σ_h c_{g,h} relu(α_{g,h,0} U_0 + α_{g,h,1}
U_1)``, positively homogeneous and linear on each angular sector between the heads' breakpoints:
:func:`relu_sectors` tabulates it once, so a layer evaluates the exact head sum in O(log H) per score.

The builders :func:`sparse_rowmap`, :func:`sparse_valuemap`, :func:`sparse_bank` and :func:`fit_heads` make banks
from ``(coordinate, coefficient)`` lists, as the constructions of :mod:`icgd.constructions` write them;
:func:`sparse_bank_bytes` is the stored size of such a bank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from icgd.errors import ShapeError

SECTOR_MIN_HEADS = 8  # heads per group from which relu_sectors beats evaluating every head
MAX_RUNS = 8  # RowMap.token_view compares up to this many contiguous column runs as views, else gathers


def relu_sectors(alpha: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact piecewise-linear form of ``F_g(x, y) = Σ_h c_{g,h} relu(α_{g,h,0} x + α_{g,h,1} y)`` (nb ≤ 2).

    F_g is positively homogeneous and linear on each angular sector of the plane between consecutive angles where
    a head's score changes sign (``atan2(α_1, α_0) ± π/2``): there ``F_g = A_0 x + A_1 y`` with
    ``A = Σ_{heads active in the sector} c_h α_h``. Returns the sorted sector boundaries ``(G, 2H)`` in [−π, π]
    and the coefficients ``(G, 2H + 1, 2)`` of the sectors (index i: between boundaries i − 1 and i), each found
    by testing which heads are active at the sector's middle angle."""
    G, H, nb = alpha.shape
    a = alpha if nb == 2 else torch.cat([alpha, torch.zeros_like(alpha)], dim=-1)
    phi = torch.atan2(a[..., 1], a[..., 0])
    b = torch.cat([phi - math.pi / 2, phi + math.pi / 2], dim=1)
    b = torch.remainder(b + math.pi, 2 * math.pi) - math.pi  # (G, 2H) in [−π, π)
    bounds = torch.sort(b, dim=1).values
    edges = torch.cat([torch.full_like(bounds[:, :1], -math.pi), bounds, torch.full_like(bounds[:, :1], math.pi)], 1)
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])  # (G, 2H + 1)
    direction = torch.stack([torch.cos(mid), torch.sin(mid)], dim=-1)  # (G, S, 2)
    active = (torch.einsum("gsn,ghn->gsh", direction, a) > 0).to(a.dtype)
    coef = torch.einsum("gsh,gh,ghn->gsn", active, c, a)
    return bounds.contiguous(), coef


def gather_last(h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``h[..., idx]`` for a 1-D index (torch.gather along the last axis: about twice as fast as index_select on a
    CPU, where the last axis is the contiguous one)."""
    return torch.gather(h, -1, idx.expand(*h.shape[:-1], idx.numel()))


def _cache_key(*tensors: torch.Tensor) -> tuple:
    """What a cache derived from `tensors` depends on: the tensor objects themselves (held, so that no new tensor can
    take their place in memory while the cache lives) and their in-place version counters."""
    return tensors, tuple(t._version for t in tensors)


def _same_key(old: tuple | None, new: tuple) -> bool:
    return old is not None and len(old[0]) == len(new[0]) and all(a is b for a, b in zip(old[0], new[0])) \
        and old[1] == new[1]


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
            return torch.einsum("...d,grd->...gr", h, self.weight)
        G, r, z = self.idx.shape
        if z == 1:  # one coordinate per row (the constructions): a single gather, no (…, r, nnz) intermediate
            return gather_last(h, self.idx.view(-1)).view(*h.shape[:-1], G, r) * self.coef.view(G, r)
        return (h[..., self.idx] * self.coef).sum(-1)

    def columns(self) -> torch.Tensor | None:
        """The sorted token coordinates the sparse rows read with a nonzero coefficient (None when dense); cached
        while `idx` and `coef` are unchanged."""
        return None if self.is_dense else self._column_runs()[0]

    def _column_runs(self) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        key = _cache_key(self.idx, self.coef)
        if not _same_key(getattr(self, "_columns_key", None), key):
            cols = torch.unique(self.idx[self.coef.detach() != 0])
            runs: list[tuple[int, int]] = []
            for c in cols.tolist():
                if runs and runs[-1][1] == c:
                    runs[-1] = (runs[-1][0], c + 1)
                else:
                    runs.append((c, c + 1))
            self._columns, self._runs, self._columns_key = cols, runs, key
        return self._columns, self._runs

    def token_view(self, h: torch.Tensor) -> list[torch.Tensor]:
        """What decides whether every token of ``h (B, T, D)`` has the same rows: the coordinates the sparse rows read
        (equal across tokens implies equal rows) as views of their contiguous runs (a gather when there are many
        runs), or the rows themselves when dense."""
        if self.is_dense:
            return [self(h)]
        cols, runs = self._column_runs()
        if len(runs) > MAX_RUNS:
            return [gather_last(h, cols)]
        return [h[..., a:b] for a, b in runs]

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
            return torch.einsum("...d,ged->...ge", h, self.weight)
        G, e = self.src.shape
        return gather_last(h, self.src.view(-1)).view(*h.shape[:-1], G, e) * self.coef

    def emit(self, vals: torch.Tensor) -> torch.Tensor:
        if self.is_dense:
            return vals.sum(-2)
        out = vals.new_zeros(*vals.shape[:-2], self.dim)
        return out.index_add(-1, self.dst.reshape(-1), vals.reshape(*vals.shape[:-2], -1))

    def add_to(self, h: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """``h + emit(vals)`` (a new tensor); `vals` ``(B, T, G, e)`` or ``(B, 1, G, e)`` (the same for every token)."""
        if self.is_dense or vals.shape[:-2] != h.shape[:-1]:
            return h + self.emit(vals)
        return h.index_add(-1, self.dst.reshape(-1), vals.reshape(*vals.shape[:-2], -1))

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

    def relu_sectors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:func:`relu_sectors` of this bank's α and c (cached while they are unchanged), or None where the head
        sum is cheaper head by head (more than 2 row blocks, fewer than ``SECTOR_MIN_HEADS`` heads per group, or
        trainable coefficients, whose gradients must flow through every head)."""
        G, H, nb = self.alpha.shape
        if nb > 2 or H < SECTOR_MIN_HEADS or self.alpha.requires_grad or self.c.requires_grad:
            return None
        key = _cache_key(self.alpha, self.c)
        if not _same_key(getattr(self, "_sectors_key", None), key):
            self._sectors, self._sectors_key = relu_sectors(self.alpha.detach(), self.c.detach()), key
        return self._sectors

    def self_coefficients(self) -> torch.Tensor:
        """``μ (G, r)``: when the heads' scores are only summed (no activation, as in EWML), head h of group g adds
        ``c_{g,h} Σ_b α_{g,h,b} U_{g,b}``, so the group's weight is ``Σ_ρ μ_{g,ρ} (Q_g h)_ρ (K_g h)_ρ`` with
        ``μ_{g,ρ} = Σ_h c_{g,h} α_{g,h,block(ρ)}``."""
        lam = torch.einsum("gh,ghn->gn", self.c, self.alpha)
        return torch.gather(lam, 1, self.block)

    def shared_scores(self, rows: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """Block scores ``U (B, G, T, nb)`` of per-token rows ``(B, T, G, r)`` against rows shared by all tokens
        ``(B, G, r)``: one batched matmul over the groups,
        ``U_{g,b}(t) = Σ_{ρ in block b} rows_{t,g,ρ} shared_{g,ρ}``."""
        W = (shared.unsqueeze(-1) * self.onehot).transpose(-1, -2)  # (B, G, nb, r)
        return torch.matmul(W, rows.permute(0, 2, 3, 1)).transpose(-1, -2)  # blocks-major storage, (B, G, T, nb) view

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query rows, key rows ``(B, T, G, r)`` and value reads ``(B, T, G, e)``."""
        if h.shape[-1] != self.dim:
            raise ShapeError(f"tokens have dimension {h.shape[-1]} but the heads expect {self.dim}")
        return self.q(h), self.k(h), self.v.read(h)


class BankView:
    """A :class:`HeadBank` seen with other head coefficients ``alpha`` and/or ``c`` for one call (the bank itself is
    not changed); everything else is the bank's."""

    def __init__(self, bank: HeadBank, alpha: torch.Tensor | None = None, c: torch.Tensor | None = None,
                 c_scale: float | None = None):
        self._bank, self._c_scale = bank, c_scale
        self.alpha = bank.alpha if alpha is None else alpha
        if c_scale is not None:  # c = c_scale · (the bank's c)
            c = bank.c * c_scale
        self.c = bank.c if c is None else c

    def __getattr__(self, name: str):
        return getattr(self._bank, name)

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return HeadBank.dense(self)

    def self_coefficients(self) -> torch.Tensor:
        return HeadBank.self_coefficients(self)

    def relu_sectors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The sectors of the viewed coefficients: the head sum is linear in c, so a view that only rescales the
        bank's c rescales the bank's cached sector coefficients; any other view computes its own."""
        if self.alpha is self._bank.alpha and self._c_scale is not None:
            sectors = self._bank.relu_sectors()
            return None if sectors is None else (sectors[0], sectors[1] * self._c_scale)
        return HeadBank.relu_sectors(self)


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


# ------------------------------------------------------------------------------------------- sparse builders


def sparse_rowmap(dim: int, groups: Sequence[Sequence[tuple[int, float]]], dtype: torch.dtype) -> RowMap:
    """A sparse :class:`RowMap` with one row per ``(coordinate, coefficient)`` pair of each group (every row reads a
    single coordinate, as in the constructions); shorter groups are padded with zero rows."""
    r = max(len(g) for g in groups)
    idx = [[i for i, _ in rows] + [0] * (r - len(rows)) for rows in groups]
    coef = [[c for _, c in rows] + [0.0] * (r - len(rows)) for rows in groups]
    return RowMap(dim, idx=torch.tensor(idx, dtype=torch.long).view(len(groups), r, 1),
                  coef=torch.tensor(coef, dtype=dtype).view(len(groups), r, 1))


def sparse_valuemap(dim: int, groups: Sequence[Sequence[tuple[int, int, float]]], dtype: torch.dtype) -> ValueMap:
    """A sparse :class:`ValueMap` from ``(source, destination, coefficient)`` COO entries per group (``coef ·
    h[source] → out[destination]``); shorter groups are padded with zero entries."""
    e = max(len(g) for g in groups)
    pad = [(0, 0, 0.0)]
    rows = [list(g) + pad * (e - len(g)) for g in groups]
    src = torch.tensor([[t[0] for t in g] for g in rows], dtype=torch.long)
    dst = torch.tensor([[t[1] for t in g] for g in rows], dtype=torch.long)
    coef = torch.tensor([[float(t[2]) for t in g] for g in rows], dtype=dtype)
    return ValueMap(dim, src=src, dst=dst, coef=coef)


def sparse_bank(dim: int, q_rows: Sequence[Sequence[tuple[int, float]]], k_rows: Sequence[Sequence[tuple[int, float]]],
                values: Sequence[Sequence[tuple[int, int, float]]], dtype: torch.dtype, *,
                alpha: torch.Tensor | None = None, c: torch.Tensor | None = None,
                block: Sequence[Sequence[int]] | None = None) -> HeadBank:
    """A :class:`HeadBank` from per-group query rows, key rows (``(coordinate, coefficient)`` lists, see
    :func:`sparse_rowmap`), value entries (:func:`sparse_valuemap`), optional head coefficients `alpha` ``(G, H,
    nb)``, `c` ``(G, H)`` and the row block of each query row (padded rows go to block 0)."""
    q, k, v = sparse_rowmap(dim, q_rows, dtype), sparse_rowmap(dim, k_rows, dtype), sparse_valuemap(dim, values, dtype)
    if block is not None:
        block = torch.tensor([list(b) + [0] * (q.rows - len(b)) for b in block], dtype=torch.long)
    return HeadBank(q, k, v, alpha=alpha, c=c, block=block)


def fit_heads(fits: Sequence, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha (G, H, 2)`` and ``c (G, H)`` of groups whose heads are the units ``c_h relu(a1_h u + a2_h)`` of a
    sum-of-ReLU fit (any object with ``units`` and tensors ``a1``, ``a2``, ``c``, e.g.
    :class:`~icgd.constructions.fits.ReluFit`), one fit per group; shorter fits are padded with zero heads."""
    H = max(f.units for f in fits)
    alpha = torch.zeros(len(fits), H, 2, dtype=dtype)
    c = torch.zeros(len(fits), H, dtype=dtype)
    for g, f in enumerate(fits):
        alpha[g, : f.units, 0], alpha[g, : f.units, 1], c[g, : f.units] = f.a1, f.a2, f.c
    return alpha, c


def sparse_bank_bytes(G: int, r: int, e: int, nb: int, H: int, s: int) -> int:
    """Stored bytes of a sparse :class:`HeadBank` of G groups, r rows, e value entries, nb row blocks and H heads per
    group with s-byte floats: q/k idx (long) + coef, value src/dst (long) + coef, block (long), onehot, alpha and
    c."""
    return G * r * 2 * (8 + s) + G * e * (16 + s) + G * r * 8 + G * r * nb * s + G * H * (nb + 1) * s
