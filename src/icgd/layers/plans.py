"""Index plans: what the sparse layers of the constructions read and write, worked out once from their weights.

A frozen sparse layer (a :class:`~icgd.layers.heads.HeadBank` whose rows each read one token coordinate, or an
:class:`~icgd.layers.mlp.MLP` with sparse weights) computes the same function on every call, so the coordinates it
reads, the coefficients it multiplies them by and the coordinates it writes are fixed. A plan holds them as flat
index and coefficient tensors, so that a layer's forward pass is a handful of tensor operations on the few token
columns it touches:

* :class:`BankPlan` (ReLU attention, EWML): the query/key/value columns, the placement of the shared rows'
  products in a small ``(blocks·groups, columns)`` matrix (the shared-key and shared-query identities of
  :class:`~icgd.layers.attention.ReLUAttention`: one matmul gives every block score), the value entries (source
  column, group, destination column, coefficient);
* :class:`LinearPlan` (each sparse MLP weight): a compact dense block on the columns it reads when that is small,
  else one gather of each row's few entries.

Plans are cached on their module while the tensors they come from are unchanged (the same objects, in-place
version counters, device, dtype and whether α and c require grad) and are only built while the query, key and value
coefficients are frozen (do not require grad), so that gradients with respect to them keep flowing through the
layers' own code. The layers then update the residual stream in the written columns (a slice add where they form
one contiguous run, else ``index_add``): out of place for a plain call, in place when
:class:`~icgd.layers.transformer.Transformer` owns the tensor and no gradient is recorded.
"""

from __future__ import annotations

import torch

from icgd.layers.heads import gather_last


def frozen(*tensors: torch.Tensor) -> bool:
    """No tensor requires grad (a plan holds detached copies of what it is built from)."""
    return not any(t.requires_grad for t in tensors)


def cached(owner, attr: str, tensors: tuple[torch.Tensor, ...], extra: tuple, build):
    """``build()`` cached in ``owner.__dict__[attr]`` while `tensors` are the same objects with the same in-place
    versions (and `extra`, e.g. their device and dtype, is equal); the cache holds the tensors, so that no new tensor
    can take their place in memory while it lives."""
    entry = owner.__dict__.get(attr)
    if entry is not None and entry[3] == extra and entry[4] == list(map(id, tensors)) \
            and entry[1] == [t._version for t in tensors]:
        return entry[2]
    value = build()
    owner.__dict__[attr] = (tensors, [t._version for t in tensors], value, extra, list(map(id, tensors)))
    return value


def bank_tensors(bank) -> tuple[torch.Tensor, ...] | None:
    """The tensors of a :class:`~icgd.layers.heads.HeadBank` a plan depends on — query idx/coef, key idx/coef, value
    src/dst/coef, block, alpha, c — read straight from the modules' dicts (``nn.Module.__getattr__`` costs more than
    the layer's arithmetic here), or None when the bank has no plan (dense maps, rows reading several coordinates)."""
    m = bank._modules
    q, k, v = m["q"], m["k"], m["v"]
    if q.is_dense or k.is_dense or v.is_dense:
        return None
    qi, ki = q._buffers["idx"], k._buffers["idx"]
    if qi.shape[-1] != 1 or ki.shape[-1] != 1:
        return None
    p = bank._parameters
    return (qi, q._parameters["coef"], ki, k._parameters["coef"], v._buffers["src"], v._buffers["dst"],
            v._parameters["coef"], bank._buffers["block"], p["alpha"], p["c"])


class Cols:
    """Reading a sorted set of token coordinates ``(…, D) → (…, c)``: a slice (a view) when they form one
    contiguous run, else one gather."""

    def __init__(self, idx: torch.Tensor):
        self.idx = idx.contiguous()
        self.n = idx.numel()
        first = int(idx[0]) if self.n else 0
        self.run = (first, first + self.n) if self.n and int(idx[-1]) - first == self.n - 1 else None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.run is not None:
            return h[..., self.run[0]:self.run[1]]
        return gather_last(h, self.idx)


def _positions(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Position of each of `values` in the sorted unique `table`."""
    return torch.searchsorted(table, values)


class Shared:
    """The block scores ``U_{g,b}(t) = Σ_{ρ in b} (P_g h_t)_ρ (S_g h_0)_ρ`` of per-token rows P against rows S that
    every token shares: the rows' products placed in ``Mᵀ (B, nb·G, c)`` (built from token 0), times the c columns the
    per-token rows read, one batched matmul. Row pairs with a zero coefficient are left out."""

    def __init__(self, per_idx, per_coef, sh_idx, sh_coef, block, nb: int):
        G, r = per_idx.shape
        keep = (per_coef != 0) & (sh_coef != 0)
        self.per = Cols(torch.unique(per_idx[keep]))
        self.sh = Cols(torch.unique(sh_idx[keep]))
        c = self.per.n
        g = torch.arange(G)[:, None].expand(G, r)
        pos = ((block * G + g) * c + _positions(per_idx, self.per.idx).clamp(max=max(c - 1, 0)))[keep]
        src = sh_idx[keep]  # token coordinate of the shared row
        runs = Reader(self.sh.idx).runs
        self.sh_runs = runs  # the shared columns as contiguous runs (None: too many, read with a gather)
        coef = (per_coef * sh_coef)[keep]
        self.size, self.shape = nb * G * c, (nb * G, c)
        # Mᵀ as one gather of the shared columns times a coefficient per slot (0 where no row pair lands), when no
        # slot receives two row pairs; else a scatter-add of the pairs
        self.single = pos.numel() == 0 or int(torch.bincount(pos, minlength=self.size).max()) <= 1
        if self.single:
            self.src = torch.zeros(self.size, dtype=torch.long).index_copy_(0, pos, src)
            self.coef = torch.zeros(self.size, dtype=coef.dtype).index_copy_(0, pos, coef)
        else:
            self.pos, self.src, self.coef = pos.contiguous(), src.contiguous(), coef.contiguous()

    def shared_view(self, h: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """The shared rows' columns of every token, for the invariance test: views of their runs (no copy), or one
        gather when they form many runs."""
        if self.sh_runs is None:
            return self.sh(h)
        return [h[..., a:b] for a, b in self.sh_runs]

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """``Uᵀ (B, nb·G, T)`` (block b of group g in row ``b·G + g``) from the tokens, whose shared rows' columns
        are the same in every token (so they are read from token 0)."""
        B = h.shape[0]
        h0 = h[:, 0]
        if self.single:
            M = (h0.index_select(-1, self.src) * self.coef).view(B, *self.shape)
        else:
            kv = h0.index_select(-1, self.src) * self.coef
            M = h.new_zeros(B, self.size).index_add_(1, self.pos, kv).view(B, *self.shape)
        return torch.bmm(M, self.per(h).transpose(1, 2))


class BankPlan:
    """The plan of a frozen sparse :class:`~icgd.layers.heads.HeadBank` whose query and key rows each read one
    coordinate (see the module docstring). Value entries with a zero coefficient are dropped."""

    def __init__(self, bank):
        q, k, v = bank.q, bank.k, bank.v
        G, r = q.idx.shape[:2]
        self.G, self.nb, self.r, self.dim = G, bank.onehot.shape[-1], r, q.dim
        # built on the CPU, then moved to the bank's device (bank_plan)
        qi, qc = q.idx[..., 0].cpu(), q.coef.detach()[..., 0].cpu()
        ki, kc = k.idx[..., 0].cpu(), k.coef.detach()[..., 0].cpu()
        self._rows = (qi, qc, ki, kc, bank.block.cpu())
        self._keys = self._queries = None
        # value entries: coef · h[src] → out[dst], entry e of group vg[e]
        vsrc, vdst, vc = v.src.cpu(), v.dst.cpu(), v.coef.detach().cpu()
        keep = vc != 0
        g = torch.arange(G)[:, None].expand_as(vsrc)
        self.vcols = Cols(torch.unique(vsrc[keep]))
        self.vpos = _positions(vsrc[keep], self.vcols.idx).contiguous()
        self.vg = g[keep].contiguous()
        self.vg_identity = self.vg.numel() == G and bool((self.vg == torch.arange(G)).all())
        self.vgpos = (self.vg * self.vcols.n + self.vpos).contiguous()
        self.vcoef = vc[keep].contiguous()
        self.dst = vdst[keep].contiguous()
        dst_runs = Reader(self.dst).runs if self.dst.numel() else None
        # the destination columns as one increasing run of distinct columns: an in-place slice add (the same
        # additions as index_add_, without its scatter)
        self.dst_run = dst_runs[0] if dst_runs is not None and len(dst_runs) == 1 else None
        # EWML: every row's query and key column, rows (r, G) so that the sum over a group's rows runs over a leading
        # axis, then the value sources; the rows' coefficient products (μ is multiplied in per call)
        self.ew_idx = torch.cat([qi.t().reshape(-1), ki.t().reshape(-1), vsrc[keep]]).contiguous()
        self.ew_coef = (qc * kc).t().contiguous()  # (r, G)
        # the same columns as views where they allow it (no gather): each of the query and key parts one run of r·G
        # columns, or r columns each read by every group (broadcast over the groups); the values through a Reader
        parts = (_rows_view(qi.t().reshape(-1).tolist(), r, G), _rows_view(ki.t().reshape(-1).tolist(), r, G))
        vread = Reader(vsrc[keep])
        self.ew_views = (*parts, vread) if None not in parts and not (parts[0][0] and parts[1][0]) \
            and vread.runs is not None else None  # (one part per group at least: the product is (r, G))
        self._per_T: dict = {}
        self._tables = None

    def _side(self, per_token: str) -> Shared:
        qi, qc, ki, kc, block = self._rows
        out = Shared(qi, qc, ki, kc, block, self.nb) if per_token == "q" else Shared(ki, kc, qi, qc, block, self.nb)
        return _to(out, self.vcoef.device)

    @property
    def keys_shared(self) -> Shared:
        """Per-token query rows against shared key rows."""
        if self._keys is None:
            self._keys = self._side("q")
        return self._keys

    @property
    def queries_shared(self) -> Shared:
        """Per-token key rows against shared query rows."""
        if self._queries is None:
            self._queries = self._side("k")
        return self._queries

    def vcoef_over(self, T: int) -> torch.Tensor:
        """The value coefficients divided by the number of keys T (cached per T)."""
        out = self._per_T.get(T)
        if out is None:
            if len(self._per_T) > 16:
                self._per_T.clear()
            out = self._per_T[T] = self.vcoef / T
        return out

    def sector_tables(self, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sectors' coefficients of U_0 and of U_1, each ``(G, sectors)`` (cached for the last table)."""
        if self._tables is None or self._tables[0] is not coef:
            self._tables = (coef, coef[..., 0].contiguous(), coef[..., 1].contiguous())
        return self._tables[1], self._tables[2]

    def per_group(self, A: torch.Tensor) -> torch.Tensor:
        """Group weights ``(…, G)`` spread to the value entries ``(…, E)``."""
        return A if self.vg_identity else A.index_select(-1, self.vg)

    def write(self, h: torch.Tensor, upd: torch.Tensor, inplace: bool) -> torch.Tensor:
        """``h`` plus the value entries' updates ``upd (B, T or 1, E)`` at their destination columns."""
        if inplace and self.dst_run is not None:  # a slice add broadcasts a (B, 1, E) update itself
            h[..., self.dst_run[0]:self.dst_run[1]].add_(upd)
            return h
        if upd.shape[1] != h.shape[1]:
            upd = upd.expand(h.shape[0], h.shape[1], upd.shape[-1])
        return h.index_add_(-1, self.dst, upd) if inplace else h.index_add(-1, self.dst, upd)


def _rows_view(cols: list[int], r: int, G: int) -> tuple[bool, int, int] | None:
    """Columns of r·G rows in (r, G) order as ``(broadcast, start, stop)``: one run of r·G columns (False), or r
    consecutive columns each read by all G rows of its r (True); None otherwise."""
    if not cols:
        return None
    a = cols[0]
    if cols == list(range(a, a + r * G)):
        return (False, a, a + r * G)
    firsts = cols[::G]
    if firsts == list(range(a, a + r)) and all(cols[i * G:(i + 1) * G] == [firsts[i]] * G for i in range(r)):
        return (True, a, a + r)
    return None


def rows_of(h: torch.Tensor, view: tuple[bool, int, int], r: int, G: int) -> torch.Tensor:
    """``(B, T, r, G)`` (or ``(B, T, r, 1)`` broadcasting over the groups) view of the rows :func:`_rows_view`
    describes."""
    broadcast, a, b = view
    cols = h[..., a:b]
    return cols.unsqueeze(-1) if broadcast else cols.view(*h.shape[:-1], r, G)


def _to(obj, device: torch.device):
    """`obj` with its tensor attributes on `device`."""
    for name, value in list(vars(obj).items()):
        if isinstance(value, torch.Tensor):
            setattr(obj, name, value.to(device))
        elif isinstance(value, Cols):
            setattr(obj, name, _to(value, device))
    return obj


def bank_plan(bank) -> BankPlan | None:
    """The cached :class:`BankPlan` of `bank`, or None when it has none (dense maps, rows reading several
    coordinates, or query/key/value weights that require grad)."""
    tensors = bank_tensors(bank)
    if tensors is None or not frozen(tensors[1], tensors[3], tensors[6]):
        return None
    return cached(bank, "_plan_cache", tensors[:8], (tensors[1].device, tensors[1].dtype),
                  lambda: _to(BankPlan(bank), tensors[0].device))


class Fast:
    """What a head-bank layer without per-call coefficients needs on every call: its plan, α and c (the bank's
    parameters themselves) and, when the group sums go through their sector form, the sector boundaries and the
    two coefficient tables."""

    def __init__(self, plan: BankPlan, alpha: torch.Tensor, c: torch.Tensor, sectors):
        self.plan, self.alpha, self.c = plan, alpha, c
        self.sectors = None if sectors is None else (sectors[0], *plan.sector_tables(sectors[1]))


def fast_state(bank) -> Fast | None:
    """The cached :class:`Fast` state of `bank` (None without a plan); rebuilt when a tensor of the bank or
    ``icgd.layers.heads.SECTOR_MIN_HEADS`` changes."""
    from icgd.layers import heads

    tensors = bank_tensors(bank)
    if tensors is None or not frozen(tensors[1], tensors[3], tensors[6]):
        return None
    extra = (tensors[1].device, tensors[1].dtype, heads.SECTOR_MIN_HEADS, tensors[8].requires_grad,
             tensors[9].requires_grad)  # relu_sectors() is None while alpha or c require grad

    def build():
        plan = bank_plan(bank)
        return Fast(plan, tensors[8], tensors[9], bank.relu_sectors())
    return cached(bank, "_fast_cache", tensors, extra, build)


def sector_mix(x: torch.Tensor, y: torch.Tensor | None, bounds: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor
               ) -> torch.Tensor:
    """``F_g(x, y)`` of :func:`~icgd.layers.heads.relu_sectors` for scores ``x, y (G, X)``: each score's sector by
    its angle, then that sector's linear form ``cx x + cy y``."""
    if y is None:
        y = torch.zeros_like(x)
    sector = torch.searchsorted(bounds, torch.atan2(y, x))  # (G, X)
    return torch.addcmul(x * torch.gather(cx, 1, sector), y, torch.gather(cy, 1, sector))


def head_mix(Ut: torch.Tensor, plan: BankPlan, alpha: torch.Tensor, c: torch.Tensor, sectors) -> torch.Tensor:
    """``Σ_h c_{g,h} relu(Σ_b α_{g,h,b} U_{g,b})`` for ``Uᵀ (nb·G, X)`` → ``(G, X)``: through the sector table when
    given, else head by head (two batched matmuls over the groups; chunked by :func:`relu_mix` when large)."""
    G, nb, X = plan.G, plan.nb, Ut.shape[-1]
    if sectors is not None:  # (bounds, coef) of relu_sectors, or (bounds, cx, cy) of Fast
        tables = sectors[1:] if len(sectors) == 3 else plan.sector_tables(sectors[1])
        return sector_mix(Ut[:G], Ut[G:2 * G] if nb == 2 else None, sectors[0], *tables)
    from icgd.layers.attention import _CHUNK_ELEMENTS, relu_mix

    U = Ut.view(nb, G, X).transpose(0, 1)  # (G, nb, X)
    H = alpha.shape[1]
    if G * H * X > _CHUNK_ELEMENTS:
        return relu_mix(U.transpose(1, 2).unsqueeze(0), alpha, c)[0]
    S = torch.bmm(alpha, U).relu_()  # (G, H, X)
    return torch.bmm(c.unsqueeze(1), S).view(G, X)


MAX_RUNS = 8  # a column list of at most this many contiguous runs is read as slices (views, or one cat), not gathered


class Reader:
    """Reading a list of token coordinates (repeats and any order allowed) ``(…, D) → (…, n)``: one slice (a view)
    when they are one contiguous run, one ``cat`` of slices when they are at most ``MAX_RUNS`` runs, else a gather."""

    def __init__(self, idx: torch.Tensor):
        self.idx = idx.contiguous()
        self.n = idx.numel()
        runs: list[list[int]] = []
        for c in idx.tolist():
            if runs and runs[-1][1] == c:
                runs[-1][1] = c + 1
            else:
                runs.append([c, c + 1])
        self.runs = [tuple(r) for r in runs] if 0 < len(runs) <= MAX_RUNS else None
        # k ≥ 2 copies of one run (a, b): read as one slice broadcast over a new axis of k (no cat)
        self.repeat = (*self.runs[0], len(self.runs)) if self.runs is not None and len(self.runs) > 1 \
            and all(r == self.runs[0] for r in self.runs) else None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.runs is None:
            return gather_last(h, self.idx)
        if len(self.runs) == 1:
            a, b = self.runs[0]
            return h[..., a:b]
        return torch.cat([h[..., a:b] for a, b in self.runs], dim=-1)


class LinearPlan:
    """A frozen sparse matrix ``W (out, in)`` applied to the last axis, ``x ↦ x Wᵀ``, restricted to the rows with a
    nonzero entry (`rows`, in the plan's output order): a compact dense block on the columns it reads (`cols`) when
    that block holds at most ``DENSE_FILL`` times the nonzeros (or is tiny), else entry by entry: the k-th entries of
    all rows are read at once (:class:`Reader`: slices where the columns run contiguously; one broadcast column when
    every row's k-th entry reads the same coordinate) and summed with fused multiply-adds.

    ``reorder=True`` lets the plan choose the output order of the rows (the rows' first readers of each column in
    column order, then the second readers, …), so that the k-th entries run over contiguous columns; `rows` then
    gives the order. Otherwise `rows` is sorted."""

    DENSE_FILL = 4
    TINY = 256

    def __init__(self, W: torch.Tensor, reorder: bool = False):
        device = W.device
        W = W.detach().coalesce().cpu()
        (ri, ci), val = W.indices(), W.values()
        keep = val != 0
        ri, ci, val = ri[keep], ci[keep], val[keep]
        rows = torch.unique(ri)
        self.cols = Cols(torch.unique(ci))
        R, C = rows.numel(), self.cols.n
        self.dense = R * C <= max(self.DENSE_FILL * val.numel(), self.TINY)
        if not self.dense and reorder and R:
            first = torch.full((W.shape[0],), W.shape[1], dtype=torch.long)
            first.scatter_reduce_(0, ri, ci, reduce="amin")  # each row's first column
            col = first[rows]
            rank = torch.zeros(R, dtype=torch.long)  # how many earlier rows read the same first column
            seen: dict[int, int] = {}
            for i, c in enumerate(col.tolist()):
                rank[i] = seen.get(c, 0)
                seen[c] = rank[i].item() + 1
            rows = rows[torch.argsort(rank * (W.shape[1] + 1) + col, stable=True)]
        self.rows = rows
        pos_of = torch.full((W.shape[0],), -1, dtype=torch.long)
        pos_of[rows] = torch.arange(R)
        rpos = pos_of[ri]
        if self.dense:
            block = torch.zeros(R, C, dtype=val.dtype)
            block.index_put_((rpos, _positions(ci, self.cols.idx)), val, accumulate=True)
            self.block_t = block.t().contiguous()  # (C, R)
        else:
            counts = torch.bincount(rpos, minlength=R)
            z = int(counts.max()) if R else 0
            order = torch.argsort(rpos * (W.shape[1] + 1) + ci, stable=True)  # by row, then column
            rpos, ci, val = rpos[order], ci[order], val[order]
            start = torch.cumsum(counts, 0) - counts
            slot = torch.arange(rpos.numel()) - start[rpos]
            idx = torch.full((z, R), -1, dtype=torch.long)
            coef = torch.zeros(z, R, dtype=val.dtype)
            idx[slot, rpos], coef[slot, rpos] = ci, val
            self.entries = []  # per k: (Reader, coefficients (R,)) or (column (start, stop), coefficients)
            for k in range(z):
                used = idx[k][idx[k] >= 0]
                if used.numel() and bool((used == used[0]).all()):
                    c0 = int(used[0])
                    self.entries.append(((c0, c0 + 1), coef[k].contiguous()))
                    continue
                ik = idx[k].clone()
                ik[ik < 0] = _fill_pads(ik, W.shape[1])
                self.entries.append((Reader(ik), coef[k].contiguous()))
            self.z = z
        self.out_dim, self.R = W.shape[0], R
        r = rows.tolist()
        self.out_run = (r[0], r[-1] + 1) if R and r == list(range(r[0], r[-1] + 1)) else None
        _to(self, device)
        if not self.dense:
            self.entries = [(read if isinstance(read, tuple) else _to(read, device), coef.to(device))
                            for read, coef in self.entries]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(x Wᵀ)[…, rows]``, ``(…, R)``."""
        if self.dense:
            return torch.matmul(self.cols(x), self.block_t)
        out = None
        for read, coef in self.entries:
            if not isinstance(read, tuple) and read.repeat is not None:  # k copies of one run: (…, k, L) views
                a, b, k = read.repeat
                part, coef = x[..., a:b].unsqueeze(-2), coef.view(k, b - a)
                if out is None:
                    out = (part * coef).view(*x.shape[:-1], self.R)  # a new contiguous (…, k, L) tensor
                else:
                    out.view(*x.shape[:-1], k, b - a).addcmul_(part, coef)
                continue
            part = x[..., read[0]:read[1]] if isinstance(read, tuple) else read(x)
            out = part * coef if out is None else out.addcmul_(part, coef)
        return out

    def add_to(self, h: torch.Tensor, out: torch.Tensor, inplace: bool) -> torch.Tensor:
        """``h`` plus `out` ``(…, R)`` at the rows (a slice add when they are one sorted run and `inplace`)."""
        if inplace and self.out_run is not None:
            h[..., self.out_run[0]:self.out_run[1]].add_(out)
            return h
        return h.index_add_(-1, self.rows, out) if inplace else h.index_add(-1, self.rows, out)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """``x Wᵀ`` with every output row, ``(…, out)`` (zeros outside `rows`)."""
        out = x.new_zeros(*x.shape[:-1], self.out_dim)
        return out.index_copy_(-1, self.rows, self(x))


def _fill_pads(idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Columns in ``[0, dim)`` for the padded slots (coefficient 0; −1 in `idx`) of an entry list: the previous
    column + 1 where that continues a run into the next real column (or ends the list), else the previous column,
    so that pads do not break contiguous runs."""
    vals = idx.tolist()
    nxt: list[int | None] = [None] * len(vals)
    following = None
    for i in range(len(vals) - 1, -1, -1):
        nxt[i] = following
        if vals[i] >= 0:
            following = vals[i]
    out, prev = [], None
    for i, c in enumerate(vals):
        if c >= 0:
            prev = c
            continue
        if prev is not None and prev + 1 < dim and (nxt[i] is None or nxt[i] == prev + 2):
            guess = prev + 1
        elif prev is not None:
            guess = prev
        else:
            guess = max(nxt[i] - 1, 0) if nxt[i] is not None else 0
        out.append(guess)
        prev = guess
    return torch.tensor(out, dtype=torch.long)
