"""Wu et al. (ICML 2025), Theorem 1: a (2N+4)L-layer transformer of ReLU attention, MLP and EWML layers whose
forward pass runs L steps of projected gradient descent on an N-layer network.

**Token** (one row per prompt point; the papers' columns, see :mod:`icgd.tokens`)::

    h_i = [ x | y | w = (w1 … wN) | p̄ = (p1 … pN) | r̄′ = (r1 … rN) | g | s̄ = (s1 … sN) | one | t ]

``w`` is replicated in every token (layer j's block ``wj`` is V_j row-major, :mod:`icgd.nets` order); ``pj`` holds
p̄_i(j), the output of layer j (p̄(0) is ``x``); ``rj`` holds r̄′ at layer j's pre-activation ``v_jk·p̄_i(j−1)``;
``g`` the loss derivative; ``sj`` the backprop delta at layer j's pre-activation; ``t`` is 1 on context tokens and 0
on queries.

**One GD step = 2N + 4 layers** (Wu §3, proofs C.2–C.7):

1. ``fwd j`` (j = 1 … N), ReLU attention, heads (k, m): ``Q = [a1_m p̄(j−1); a2_m·1]``, ``K = [v_jk; 1]``,
   ``V = c_m e_{pj[k]} e_oneᵀ`` → ``p̄(j)[k] = Σ_m c_m relu(a1_m v_jk·p̄(j−1) + a2_m) = r̂(v_jk·p̄(j−1))``.
2. ``deriv``, ReLU attention, heads (j, k, m), the same rows with the fit of r′ → ``r̄′(j−1)[k]``.
3. ``loss``, MLP: ``g[k] = relu(2(p̄N[k] − y[k]) − R3(1 − t)) − relu(−2(p̄N[k] − y[k]) − R3(1 − t))`` — exactly
   u = 2(p̄ − y) on context tokens and 0 on queries (R3 bounds |2p̄N| on the query).
4. ``back N … back 1``, EWML: ``s̄(N) = r̄′(N−1) ⊙ g``, then ``s̄(j) = r̄′(j−1) ⊙ (V_{j+1}ᵀ s̄(j+1))`` with
   heads k: ``Q = column k of V_{j+1}`` (read from ``w``), ``K = s̄(j+1)``, ``V = e_{sj[k]} e_{rj[k]}ᵀ``.
5. ``step``, ReLU attention, heads (j, k, ±): ``Q = ±1``, ``K = s̄(j)[k]``,
   ``V = ∓ η T/(2n) · (p̄(j−1) → w-slot of v_jk)``; relu(s) − relu(−s) = s gives
   ``w ← w − η/(2n) Σ_i s̄_i(j)[k] p̄_i(j−1) = w − η ∇L_n(w)`` (T = n + m tokens).
6. ``project``, MLP: ``w ← w − relu(w − B) + relu(−w − B)`` (= clip(w, −B, B)) and every scratch coordinate
   z ← z − relu(z) + relu(−z) = 0, exactly.

``readout=True`` appends the N ``fwd`` layers once more, so that the query tokens end with p̄(N) = f(w̄_L, x_q).

**Deviations from the paper, and why**

* Token form of ReLU attention (query from h_i, keys from h_s): read literally, the matrix form printed in the paper
  swaps the roles of Q and K, so each token's update would be weighted by the other tokens' rows instead of its
  own, and the heads would no longer compute the per-token forward and backward passes.
* Sum-of-ReLU fits are piecewise-linear interpolants with ``knots`` units on a per-layer interval ``[−R_j, R_j]``
  (error O(knots⁻²)); the paper's existence proof gives Õ(ε⁻²) heads. Activations: sigmoid, tanh, softplus, gelu
  as in the paper, plus relu (exact r, r′ a ramp of width 1e-6: beyond Theorem 1, exact unless a
  pre-activation falls in (0, 1e-6)) and identity.
* The projection set is the ℓ∞ box |w| ≤ B (exactly a ReLU MLP), not the paper's ℓ2 ball; ``box=None`` means no
  projection. The same MLP erases the scratch slots (the paper leaves this implicit).
* Any ``w0`` may be placed in the tokens (the paper's w⁰ = 0 keeps every hidden unit identical).
* The loss derivative is gated off the query token by the MLP's −R3(1 − t) term with R3 derived from the fits.
* The read-out layers (the paper has none).
* The step's value matrices carry −ηT/(2n), which depends on the prompt size: the model sets it from the ``t``
  slot on every call (all prompts of a batch share n and T).
* The 2N+4 layers of a step are one set of modules shared by all L steps; ``model.layers`` lists the full sequence.
* Fit intervals: if a pre-activation leaves ``[−R_j, R_j]`` during a run, :class:`~icgd.errors.FitRangeError` is
  raised (checked from the tokens after the ``fwd`` layers of every step) instead of returning wrong weights.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from icgd._checks import as_float_tensor, batched, positive_float, positive_int
from icgd.constructions.fits import ReluFit, activation_fits
from icgd.errors import FitRangeError, RangeError, ShapeError, SpecError
from icgd.constructions.base import StepScale
from icgd.layers import EWML, MLP, ReLUAttention, Transformer
from icgd.layers.heads import fit_heads, sparse_bank, sparse_bank_bytes
from icgd.memory import ENV as MEMORY_ENV
from icgd.memory import MemoryEstimate, check_layers
from icgd.nets import NetSpec, check_prompt, unflatten
from icgd.tokens import Layout, pack_prompt
from icgd.tokens import check_prompt as check_xy

DEFAULT_KNOTS = 64


def wu_layout(spec: NetSpec) -> Layout:
    """The token layout of the construction (see the module docstring)."""
    N = spec.depth
    outs = [o for o, _ in spec.shapes]
    slots = [("x", spec.d_in), ("y", spec.d_out)]
    slots += [(f"w{j}", o * i) for j, (o, i) in enumerate(spec.shapes, start=1)]
    for prefix in ("p", "r"):
        slots += [(f"{prefix}{j}", outs[j - 1]) for j in range(1, N + 1)]
    slots += [("g", spec.d_out)]
    slots += [(f"s{j}", outs[j - 1]) for j in range(1, N + 1)]
    slots += [("one", 1), ("t", 1)]
    groups = {name: tuple(f"{name}{j}" for j in range(1, N + 1)) for name in ("w", "p", "r", "s")}
    return Layout(slots, groups)


def fit_ranges_from_box(spec: NetSpec, box: float, x_bound: float) -> list[float]:
    """A-priori per-layer bounds R_j ≥ |v_jk · p(j−1)| valid for the whole run because |w| ≤ box:
    R_1 = d_in·B·x_bound and R_j = in_j·B·max_{|t|≤R_{j−1}} |r(t)|."""
    box, x_bound = positive_float(box, "box"), positive_float(x_bound, "x_bound")
    ranges, bound = [], x_bound
    for j, (_, i) in enumerate(spec.shapes, start=1):
        R = max(i * box * bound, 1e-3)
        ranges.append(R)
        t = torch.linspace(-R, R, 4097, dtype=torch.float64)
        bound = float(spec.layer_act(j)(t).abs().max())
    return ranges


def fit_ranges_from_data(spec: NetSpec, X: torch.Tensor, weights: torch.Tensor, margin: float = 1.25) -> list[float]:
    """Per-layer intervals from data: `margin` × the largest |pre-activation| of layer j over the inputs `X`
    ``(B, n, d_in)`` and every weight vector in `weights` ``(B, L, D_w)`` (e.g. a reference GD trajectory)."""
    margin = positive_float(margin, "margin")
    X = as_float_tensor(X, "X")
    X, _ = batched(X, "X", 2)
    W = as_float_tensor(weights, "weights", X.dtype)
    if W.dim() == 2:
        W = W[:, None]
    if W.dim() != 3 or W.shape[0] != X.shape[0]:
        raise ShapeError(f"weights must be (B, L, D_w) for {X.shape[0]} prompts, got {tuple(W.shape)}")
    Bsz, L, _ = W.shape
    p = X[:, None].expand(Bsz, L, *X.shape[1:]).reshape(Bsz * L, *X.shape[1:])
    ranges = []
    for j, V in enumerate(unflatten(spec, W.reshape(Bsz * L, -1)), start=1):
        u = p @ V.transpose(-1, -2)
        ranges.append(max(margin * float(u.abs().max()), 1e-3))
        p = spec.layer_act(j)(u)
    return ranges


def per_layer_ranges(spec: NetSpec, fit_range: float | Sequence[float]) -> list[float]:
    """A user's `fit_range` (one number, or one per layer) as a validated list of R_j."""
    ranges = [fit_range] * spec.depth if isinstance(fit_range, (int, float)) else list(fit_range)
    if len(ranges) != spec.depth:
        raise SpecError(f"fit_range needs one value per layer ({spec.depth}), got {len(ranges)}")
    return [positive_float(r, "fit_range") for r in ranges]


# --------------------------------------------------------------------------------------------- memory

_PY_ENTRY = 120  # bytes of one (index, coefficient) Python tuple in a list while a head bank is being built
_CHUNK = 1 << 23  # icgd.layers.attention._CHUNK_ELEMENTS: scores of many heads are mixed in chunks of this size


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _range_index_bytes(spec: NetSpec, s: int) -> int:
    """The range check's index buffers: the C coordinates of p̄(0 … N−1) (long; C = d_in + P − d_out), a (C, P) long
    index and a (C, P) mask, and P bounds (P units)."""
    P = spec.num_units
    C = spec.d_in + P - spec.d_out
    return C * 8 + C * P * (8 + s) + P * s


def _sparse_bytes(nnz: int, s: int) -> int:
    return nnz * (16 + s)


def _fit_units(spec: NetSpec, j: int, knots: int) -> tuple[int, int]:
    """ReLU units of the fits of r and r′ of layer j (see :func:`~icgd.constructions.fits.activation_fits`)."""
    return {"relu": (1, 2), "identity": (2, 1)}.get(spec.layer_act(j).name, (knots, knots))


def deep_gd_memory(spec: NetSpec, *, knots: int = DEFAULT_KNOTS, box: float | None = None,
                   dtype: torch.dtype = torch.float64, batch: int = 0, tokens: int = 0, build: bool = True,
                   what: str = "deep_gd") -> MemoryEstimate:
    """Bytes :func:`deep_gd` needs, without building anything: ``params`` (the parameters and buffers, exactly:
    one GD block is shared by all steps, so `steps` does not count), ``build`` (Python head lists and sparse
    temporaries while building, if `build`) and ``activations`` (one forward pass of `batch` prompts of `tokens`
    tokens). Token dimension D = d_in + 2·d_out + D_w + 3P + 2 (D_w weights, P = (N−1)K + d_out units)."""
    s, N, shapes = _itemsize(dtype), spec.depth, spec.shapes
    outs, ins = [o for o, _ in shapes], [i for _, i in shapes]
    P, Dw, d_out = spec.num_units, spec.num_params, spec.d_out
    D = spec.d_in + 2 * d_out + Dw + 3 * P + 2
    rmax, imax = max(ins) + 1, max(ins)
    H_r = [_fit_units(spec, j, knots)[0] for j in range(1, N + 1)]
    H_d = max(_fit_units(spec, j, knots)[1] for j in range(1, N + 1))
    C = (Dw if box is not None else 0) + 3 * P + d_out  # coordinates of the project MLP
    params = sum(sparse_bank_bytes(outs[j], ins[j] + 1, 1, 2, H_r[j], s) for j in range(N))  # fwd
    params += sparse_bank_bytes(P, rmax, 1, 2, H_d, s)  # deriv
    params += sparse_bank_bytes(d_out, 1, 1, 1, 1, s) + sum(sparse_bank_bytes(outs[j - 1], outs[j], 1, 1, 1, s)
                                                      for j in range(1, N))  # back
    params += sparse_bank_bytes(P, 1, imax, 1, 2, s) + P * 2 * s  # step and its sign buffer
    params += _range_index_bytes(spec, s)
    params += _sparse_bytes(10 * d_out, s)  # loss MLP
    params += _sparse_bytes(4 * C + (2 * Dw if box is not None else 0), s)  # project MLP
    entries = max(P * (2 * rmax + 1), P * (imax + 3), max((outs[j - 1] * (2 * outs[j] + 1) for j in range(1, N)),
                                                          default=0))
    build_bytes = max(_PY_ENTRY * entries, 3 * _sparse_bytes(4 * C + 2 * Dw, s)) if build else 0
    BT = max(0, batch) * max(0, tokens)
    per_token = max(2 * P * rmax + P, 3 * P * imax, 2 * D + 8 * C,
                    max((2 * outs[j - 1] * outs[j] for j in range(1, N)), default=0))
    acts = s * (BT * (3 * D + per_token) + 3 * min(_CHUNK, BT * P * H_d)) if BT else 0
    return MemoryEstimate(what, {"params": params, "build": build_bytes, "activations": acts},
                          reduce="reduce width or depth (D_w grows like width²·depth), knots, or the batch and "
                                 "prompt size")


# --------------------------------------------------------------------------------------------- head builders


class _Builder:
    """Builds the layers of one GD step for a spec and a layout."""

    def __init__(self, spec: NetSpec, layout: Layout, dtype: torch.dtype):
        self.spec, self.L, self.dtype = spec, layout, dtype
        self.D = layout.dim
        self.one = layout.index("one")
        self.t = layout.index("t")

    def prev(self, j: int, q: int) -> int:
        """Coordinate of p̄(j−1)[q] (p̄(0) = x)."""
        return self.L.index("x" if j == 1 else f"p{j - 1}", q)

    def w(self, j: int, k: int, q: int) -> int:
        """Coordinate of V_j[k, q] in the token."""
        return self.L.slice("w").start + self.spec.weight_index(j, k, q)

    def preact_rows(self, j: int, k: int) -> tuple[list, list, list]:
        """Query rows ``[p̄(j−1); 1]``, key rows ``[v_jk; 1]`` and row blocks ``[0 … 0, 1]`` of the unit (j, k)."""
        n_in = self.spec.shapes[j - 1][1]
        q = [(self.prev(j, i), 1.0) for i in range(n_in)] + [(self.one, 1.0)]
        k_ = [(self.w(j, k, i), 1.0) for i in range(n_in)] + [(self.one, 1.0)]
        return q, k_, [0] * n_in + [1]

    def forward_layer(self, j: int, fit: ReluFit) -> ReLUAttention:
        out_j = self.spec.shapes[j - 1][0]
        rows = [self.preact_rows(j, k) for k in range(out_j)]
        values = [[(self.one, self.L.index(f"p{j}", k), 1.0)] for k in range(out_j)]
        alpha, c = fit_heads([fit] * out_j, self.dtype)
        bank = sparse_bank(self.D, [r[0] for r in rows], [r[1] for r in rows], values, self.dtype,
                     alpha=alpha, c=c, block=[r[2] for r in rows])
        return ReLUAttention(bank)

    def deriv_layer(self, dfits: Sequence[ReluFit]) -> ReLUAttention:
        units = [(j, k) for j in range(1, self.spec.depth + 1) for k in range(self.spec.shapes[j - 1][0])]
        rows = [self.preact_rows(j, k) for j, k in units]
        values = [[(self.one, self.L.index(f"r{j}", k), 1.0)] for j, k in units]
        alpha, c = fit_heads([dfits[j - 1] for j, _ in units], self.dtype)
        bank = sparse_bank(self.D, [r[0] for r in rows], [r[1] for r in rows], values, self.dtype,
                     alpha=alpha, c=c, block=[r[2] for r in rows])
        return ReLUAttention(bank)

    def loss_layer(self, R3: float) -> MLP:
        d = self.spec.d_out
        W1: list[tuple[int, int, float]] = []
        W2: list[tuple[int, int, float]] = []
        for k in range(d):
            for u, sign in ((2 * k, 1.0), (2 * k + 1, -1.0)):
                W1 += [(u, self.L.index(f"p{self.spec.depth}", k), 2.0 * sign), (u, self.L.index("y", k), -2.0 * sign),
                       (u, self.one, -R3), (u, self.t, R3)]
                W2.append((self.L.index("g", k), u, sign))
        return MLP.from_weights(_coo(W1, (2 * d, self.D), self.dtype), _coo(W2, (self.D, 2 * d), self.dtype),
                                trainable=False)

    def back_layer(self, j: int) -> EWML:
        N, shapes = self.spec.depth, self.spec.shapes
        out_j = shapes[j - 1][0]
        if j == N:
            q = [[(self.L.index("g", k), 1.0)] for k in range(out_j)]
            k_ = [[(self.one, 1.0)] for _ in range(out_j)]
        else:
            out_next = shapes[j][0]
            q = [[(self.w(j + 1, i, k), 1.0) for i in range(out_next)] for k in range(out_j)]
            k_ = [[(self.L.index(f"s{j + 1}", i), 1.0) for i in range(out_next)] for _ in range(out_j)]
        values = [[(self.L.index(f"r{j}", k), self.L.index(f"s{j}", k), 1.0)] for k in range(out_j)]
        return EWML(sparse_bank(self.D, q, k_, values, self.dtype))

    def step_layer(self) -> ReLUAttention:
        units = [(j, k) for j in range(1, self.spec.depth + 1) for k in range(self.spec.shapes[j - 1][0])]
        q = [[(self.one, 1.0)] for _ in units]
        k_ = [[(self.L.index(f"s{j}", k), 1.0)] for j, k in units]
        values = [[(self.prev(j, i), self.w(j, k, i), 1.0) for i in range(self.spec.shapes[j - 1][1])]
                  for j, k in units]
        alpha = torch.tensor([[1.0], [-1.0]], dtype=self.dtype).expand(len(units), 2, 1).clone()
        c = torch.tensor([1.0, -1.0], dtype=self.dtype).expand(len(units), 2).clone()  # scaled per prompt size
        return ReLUAttention(sparse_bank(self.D, q, k_, values, self.dtype, alpha=alpha, c=c))

    def project_coords(self, box: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates the ``project`` MLP clips and their bounds: ``w`` to [−box, box] (if a box is given), the
        scratch slots to 0."""
        w = self.L.slice("w")
        scratch = [torch.arange(self.L.slice(n).start, self.L.slice(n).stop) for n in ("p", "r", "g", "s")]
        parts = ([torch.arange(w.start, w.stop)] if box is not None else []) + scratch
        coords = torch.cat(parts)
        bounds = torch.zeros(coords.numel(), dtype=torch.float64)
        if box is not None:
            bounds[: w.stop - w.start] = box
        return coords, bounds

    def project_layer(self, box: float | None) -> MLP:
        return clip_mlp(self.D, self.one, *self.project_coords(box), dtype=self.dtype)


def _coo(entries: Sequence[tuple[int, int, float]], shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A sparse COO matrix from ``(row, column, value)`` triples."""
    rows, cols, vals = zip(*entries)
    return torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals, dtype=dtype), shape,
                                   check_invariants=True).coalesce()


def clip_mlp(D: int, one: int, coords: torch.Tensor, bounds: torch.Tensor, dtype: torch.dtype) -> MLP:
    """A sparse MLP clipping each coordinate ``coords[u]`` to ``[−bounds[u], bounds[u]]`` with units 2u, 2u+1:
    ``z ← z − relu(z − b) + relu(−z − b)`` (b = 0 erases z exactly). Built from indices: no (2C, D) dense matrix."""
    C = coords.numel()
    u = torch.arange(C)
    nz = bounds != 0
    one_col = torch.full((int(nz.sum()),), one, dtype=torch.long)
    rows1 = torch.cat([2 * u, 2 * u + 1, 2 * u[nz], 2 * u[nz] + 1])
    cols1 = torch.cat([coords, coords, one_col, one_col])
    vals1 = torch.cat([torch.ones(C, dtype=torch.float64), -torch.ones(C, dtype=torch.float64), -bounds[nz],
                       -bounds[nz]])
    W1 = torch.sparse_coo_tensor(torch.stack([rows1, cols1]), vals1.to(dtype), (2 * C, D),
                                 check_invariants=True).coalesce()
    rows2, cols2 = torch.cat([coords, coords]), torch.cat([2 * u, 2 * u + 1])
    vals2 = torch.cat([-torch.ones(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)])
    W2 = torch.sparse_coo_tensor(torch.stack([rows2, cols2]), vals2.to(dtype), (D, 2 * C),
                                 check_invariants=True).coalesce()
    return MLP.from_weights(W1, W2, trainable=False)


def projection_guard(layout: Layout, box: float, dtype: torch.dtype):
    """A forward pre-hook for the ``project`` MLP that refuses a step it cannot clip exactly.

    The MLP clips ``z = w − η∇L`` to ``[−box, box]`` as ``z − relu(z − box) + relu(−z − box)``: exact for
    ``|z| ≤ 2·box`` (Sterbenz), but ``z − box`` is rounded beyond that, with an error up to ``|z|·eps``; at
    ``|z| ≈ 1e17`` it is the whole box width (float64 eps = 2⁻⁵²), and the clipped weight comes out 0 instead of
    ±box. Autograd GD clamps exactly. So the hook raises :class:`~icgd.errors.RangeError` when ``|z| > box/√eps``
    (6.7e7·box in float64, 2.9e3·box in float32), i.e. whenever the rounding error could exceed ``√eps·box``
    (1.5e-8·box in float64, below the construction's fit errors); below that bound the projection is within
    ``√eps·box`` of the exact clip."""
    limit = box / float(torch.finfo(dtype).eps) ** 0.5
    w = layout.slice("w")

    def hook(module, args):
        z = args[0][:, 0, w].detach()
        if z.numel() and float(z.abs().max()) > limit:
            raise RangeError(f"a GD step reached |w − η∇L| = {float(z.abs().max()):.3g}, beyond {limit:.3g} "
                             f"(box/√eps for {dtype}): the projection onto [−{box:g}, {box:g}] cannot be computed "
                             f"exactly that far out (the result would be off by up to the box width); use a smaller "
                             f"eta, rescale the data, or build the model in float64")
    hook.reads_only = True  # keeps no reference to its input: the in-place fast path may go on updating it
    return hook


class ConstructedICGD(Transformer):
    """The transformer built by :func:`deep_gd`. Gradient descent happens only inside its layers.

    ``w0`` (attribute, default None): the GD start used when ``predict``/``trace`` get no `w0`, so that
    ``model.predict(X, Y, x_query)`` follows the learner protocol once it is set."""

    w0: torch.Tensor | None = None

    def __init__(self, spec: NetSpec, *, eta: float, steps: int, box: float | None, knots: int,
                 fit_ranges: list[float], x_bound: float | None, y_bound: float | None, readout: bool,
                 dtype: torch.dtype, ramp: float = 1e-6):
        layout = wu_layout(spec)
        b = _Builder(spec, layout, dtype)
        N = spec.depth
        fits = [activation_fits(spec.layer_act(j), fit_ranges[j - 1], knots, ramp=ramp, dtype=dtype)
                for j in range(1, N + 1)]
        R3 = 2.0 * (2.0 * fits[-1][0].sup_abs() + 1.0)  # > |2 p̄N| on the query token, with a factor 2 to spare
        fwd = [b.forward_layer(j, fits[j - 1][0]) for j in range(1, N + 1)]
        block = [*fwd, b.deriv_layer([f[1] for f in fits]), b.loss_layer(R3),
                 *[b.back_layer(j) for j in range(N, 0, -1)], b.step_layer(), b.project_layer(box)]
        roles = ([f"fwd {j}" for j in range(1, N + 1)] + ["deriv", "loss"]
                 + [f"back {j}" for j in range(N, 0, -1)] + ["step", "project"])
        if box is not None:
            block[-1].register_forward_pre_hook(projection_guard(layout, box, dtype))
        layers = block * steps + (fwd if readout else [])
        super().__init__(layers, dim=layout.dim)
        self.spec, self.layout, self.eta, self.steps, self.box = spec, layout, eta, steps, box
        self.knots, self.fit_ranges, self.x_bound, self.y_bound = knots, fit_ranges, x_bound, y_bound
        self.readout, self.dtype, self.R3 = readout, dtype, R3
        self.fits = fits
        self.block_size = len(block)
        self.roles = roles * steps + ([f"readout {j}" for j in range(1, N + 1)] if readout else [])
        step: ReLUAttention = block[-2]
        # the step's value scale −ηT/(2n) (paper: −η(n+1)/(2n)) for n context tokens out of T, per call
        step.coefficients = StepScale(layout, eta)
        self.register_buffer("_step_sign", step.heads.c.detach().clone(), persistent=False)  # device marker
        self._memory_checked: set = set()
        self._preactivation_index(b)

    def _preactivation_index(self, b: _Builder) -> None:
        """Index buffers of :meth:`_check_range`: the token coordinates of every p̄(j−1) (`_pre_cols`, sorted), and for
        every slot (c, p) of the (columns, units) matrix holding each unit's v_jk at the rows of its p̄(j−1), the
        coordinate of that weight in the token (`_pre_w`, with a 0/1 mask `_pre_mask` for empty slots); R_j per unit."""
        N, shapes = self.spec.depth, self.spec.shapes
        units = [(j, k) for j in range(1, N + 1) for k in range(shapes[j - 1][0])]
        cols = sorted({b.prev(j, q) for j in range(1, N + 1) for q in range(shapes[j - 1][1])})
        pos = {c: i for i, c in enumerate(cols)}
        P = len(units)
        wi, mask = [b.one] * (len(cols) * P), [0.0] * (len(cols) * P)
        for p, (j, k) in enumerate(units):
            for q in range(shapes[j - 1][1]):
                slot = pos[b.prev(j, q)] * P + p
                wi[slot], mask[slot] = b.w(j, k, q), 1.0
        R = [self.fit_ranges[j - 1] for j, _ in units]
        for name, t in (("_pre_cols", torch.tensor(cols)), ("_pre_w", torch.tensor(wi)),
                        ("_pre_mask", torch.tensor(mask, dtype=self.dtype)),
                        ("_pre_R", torch.tensor(R, dtype=self.dtype))):
            self.register_buffer(name, t, persistent=False)

    # ----------------------------------------------------------------------------------------------- running

    def _check_range(self, tokens: torch.Tensor, step: int) -> None:
        """Raise if a pre-activation of the current step left its fit interval (uses p̄ read from the tokens): every
        unit's ``v_jk · p̄_i(j−1)`` at once, as the tokens' p̄ columns times a (columns, units) matrix holding each v_jk
        at the rows of p̄(j−1)."""
        B, T, _ = tokens.shape
        buf, t = self._buffers, tokens.detach()
        cols, R = buf["_pre_cols"], buf["_pre_R"]
        M = (t[:, 0].index_select(-1, buf["_pre_w"]) * buf["_pre_mask"]).view(B, cols.numel(), R.numel())
        prev = torch.gather(t, -1, cols.expand(B, T, cols.numel()))
        ratio = torch.bmm(prev, M).abs_().amax(dim=(0, 1)).div_(R)
        if float(ratio.max()) > 1 + 1e-9:
            self._range_error(tokens, step)

    def _range_error(self, tokens: torch.Tensor, step: int) -> None:
        w = tokens[:, 0, self.layout.slice("w")]
        for j, V in enumerate(unflatten(self.spec, w), start=1):
            prev = self.layout.read(tokens, "x" if j == 1 else f"p{j - 1}")
            u = float((prev @ V.transpose(-1, -2)).abs().max())
            R = self.fit_ranges[j - 1]
            if u > R * (1 + 1e-9):
                where = f"GD step {step + 1}" if step < self.steps else "the read-out"
                raise FitRangeError(
                    f"layer {j}'s pre-activation reached |v·p| = {u:.4g} at {where}, outside the fit interval "
                    f"[-{R:.4g}, {R:.4g}]; the result would be wrong. Build the model with a larger x_bound or "
                    f"fit_range, or a smaller box")

    def _check_inputs(self, X: torch.Tensor, Y: torch.Tensor, xq: torch.Tensor | None) -> None:
        xs = X if xq is None else torch.cat([X, xq], dim=1)
        if self.x_bound is not None and xs.numel() and float(xs.abs().max()) > self.x_bound:
            raise FitRangeError(f"an input has |x| = {float(xs.abs().max()):.4g} > x_bound = {self.x_bound}; "
                                f"rebuild the model with a larger x_bound or rescale the data")
        if self.y_bound is not None and float(Y.abs().max()) > self.y_bound:
            raise FitRangeError(f"a target has |y| = {float(Y.abs().max()):.4g} > y_bound = {self.y_bound}; "
                                f"rebuild the model with a larger y_bound or rescale the data")

    def _check_memory(self, batch: int, tokens: int) -> None:
        """Refuse a forward pass whose activations would not fit (see :mod:`icgd.memory`); a size that passed is not
        checked again (the limit is fixed by the environment and the device)."""
        key = (batch, tokens, str(self._step_sign.device), os.environ.get(MEMORY_ENV, ""))
        if key in self._memory_checked:
            return
        deep_gd_memory(self.spec, knots=self.knots, box=self.box, dtype=self.dtype, batch=batch, tokens=tokens,
                       build=False, what=f"a forward pass of {batch} prompt(s) × {tokens} tokens"
                       ).check(self._step_sign.device)
        self._memory_checked.add(key)

    def tokens_for(self, X, Y, w0=None, x_query=None) -> tuple[torch.Tensor, bool]:
        """Pack a prompt into this model's tokens; returns the tokens and whether the inputs were unbatched.
        `w0` defaults to the attribute :attr:`w0`."""
        X, Y, xq, single = check_xy(X, Y, x_query, d_in=self.spec.d_in, d_out=self.spec.d_out, dtype=self.dtype)
        _, _, w0, _ = check_prompt(self.spec, X, Y, self._initial(w0), self.dtype)
        self._check_inputs(X, Y, xq)
        self._check_memory(X.shape[0], X.shape[1] + (0 if xq is None else xq.shape[1]))
        if self.box is not None and float(w0.abs().max()) > self.box:
            raise FitRangeError(f"w0 has an entry of size {float(w0.abs().max()):.4g} outside the box {self.box}; "
                                f"clip it first: w0.clamp(-box, box)")
        tokens = pack_prompt(self.layout, X, Y, xq, w=w0).to(self._step_sign.device)
        return tokens, single

    def _run(self, tokens: torch.Tensor, record: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        N, S = self.spec.depth, self.block_size
        w = self.layout.slice("w")
        ws = [tokens[:, 0, w]]
        self._check(tokens)
        h, owned = tokens, False  # owned: the layers may update h in place (Transformer._run_layers)
        for step in range(self.steps):
            h, owned = self._run_layers(h, step * S, step * S + N, owned)
            self._check_range(h, step)
            h, owned = self._run_layers(h, step * S + N, (step + 1) * S, owned)
            if record:
                ws.append(h[:, 0, w].clone() if owned else h[:, 0, w])
        if self.readout:
            h, _ = self._run_layers(h, self.steps * S, None, owned)
            self._check_range(h, self.steps)
        return h, ws

    def _initial(self, w0):
        if w0 is None:
            w0 = self.w0
        if w0 is None:
            raise SpecError("the initial network weights are missing: pass w0= ((D_w,) or (B, D_w)) or set model.w0")
        return w0

    def trace(self, X, Y, w0=None) -> torch.Tensor:
        """Weights read from the ``w`` slot after every GD block, ``(B, steps+1, D_w)`` (index 0 = `w0`; default:
        the attribute :attr:`w0`)."""
        tokens, single = self.tokens_for(X, Y, w0)
        _, ws = self._run(tokens, record=True)
        out = torch.stack(ws, dim=1)
        return out[0] if single else out

    def predict(self, X, Y, x_query, w0=None) -> torch.Tensor:
        """f(w̄_L, x_query) read from the query tokens' p̄(N) slot after the read-out layers, ``(B, m, d_out)``: the
        learner protocol, with the GD start `w0` as a keyword (default: the attribute :attr:`w0`)."""
        if not self.readout:
            raise SpecError("this model was built with readout=False; build it with readout=True to predict")
        tokens, single = self.tokens_for(X, Y, w0, x_query)
        n = X.shape[-2]
        h, _ = self._run(tokens, record=False)
        out = self.layout.read(h, f"p{self.spec.depth}")[:, n:]
        return out[0] if single else out

    def prefix_predictions(self, X, Y, w0=None) -> torch.Tensor:
        """The learner protocol: row i is f(w̄_L, x_i) after the L in-context GD steps on the pairs ``0 … i−1``,
        ``(B, n, d_out)`` (``(n, d_out)`` unbatched); one :meth:`predict` per prefix length, batched over prompts
        (:func:`icgd.learners.base.prefix_by_queries`). Row 0 (empty context: the tokens need one pair, and the
        empty loss has no gradient) is what the model gives from `w0` itself: its read-out layers alone on the
        tokens holding `w0`, i.e. f(w0, x_0) up to the activation fits — not 0."""
        from icgd.learners.base import prefix_by_queries

        if not self.readout:
            raise SpecError("this model was built with readout=False; build it with readout=True to predict")
        X, Y, _, single = check_xy(X, Y, d_in=self.spec.d_in, d_out=self.spec.d_out, dtype=self.dtype)
        w0 = self._initial(w0)
        out = prefix_by_queries(lambda x, y, q: self.predict(x, y, q, w0), X, Y,
                                lambda q: self._readout_only(X[:, :1], Y[:, :1], q, w0))
        return out[0] if single else out

    def _readout_only(self, X, Y, x_query, w0) -> torch.Tensor:
        """The read-out layers alone (no GD step) on the tokens of ``(X, Y, x_query)`` with ``w = w0``: f(w0, x_q)
        as the model computes it, ``(B, m, d_out)``."""
        tokens, _ = self.tokens_for(X, Y, w0, x_query)
        h = Transformer.forward(self, tokens, self.steps * self.block_size)
        return self.layout.read(h, f"p{self.spec.depth}")[:, X.shape[1]:]

    def summary(self) -> list[dict]:
        rows = super().summary()
        for row, role in zip(rows, self.roles):
            row["role"] = role
        return rows

    def block_summary(self) -> list[dict]:
        """The 2N+4 layers of one GD step (rows of :meth:`summary`)."""
        return self.summary()[: self.block_size]


def deep_gd(spec: NetSpec, *, eta: float, steps: int, box: float | None = None, knots: int = DEFAULT_KNOTS,
            x_bound: float | None = None, y_bound: float | None = None, readout: bool = True,
            dtype: torch.dtype = torch.float64, fit_range: float | Sequence[float] | None = None) -> ConstructedICGD:
    """The (2N+4)·steps-layer transformer of Wu et al.'s Theorem 1 (+ N read-out layers) for the network `spec`.

    Its forward pass runs ``w ← clip(w − η ∇L_n(w), −box, box)``, ``L_n(w) = 1/(2n) Σ_i ‖f(w, x_i) − y_i‖²``, on
    the prompt in its tokens. Fit intervals, per layer: `fit_range` if given (one number or one per layer), else
    derived a priori from `box` and `x_bound` (|x| ≤ x_bound); see :func:`fit_ranges_from_data` for data-driven
    ones. `knots` ReLU units per fitted function. See the module docstring for the layers and every deviation.
    """
    if not isinstance(spec, NetSpec):
        raise SpecError(f"spec must be an icgd.nets.NetSpec, got {type(spec).__name__}")
    eta = positive_float(eta, "eta")
    steps = positive_int(steps, "steps", minimum=0)
    knots = positive_int(knots, "knots", minimum=2)
    box = None if box is None else positive_float(box, "box")
    x_bound = None if x_bound is None else positive_float(x_bound, "x_bound")
    y_bound = None if y_bound is None else positive_float(y_bound, "y_bound")
    if dtype not in (torch.float32, torch.float64):
        raise SpecError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    deep_gd_memory(spec, knots=knots, box=box, dtype=dtype,
                   what=f"deep_gd(width={spec.width}, depth={spec.depth}, knots={knots})").check()
    check_layers(f"deep_gd(steps={steps})", steps, 2 * spec.depth + 4, spec.depth)
    if fit_range is not None:
        ranges = per_layer_ranges(spec, fit_range)
    elif box is not None and x_bound is not None:
        ranges = fit_ranges_from_box(spec, box, x_bound)
    else:
        raise SpecError("cannot derive the fit interval: pass box and x_bound (a-priori bound), or fit_range "
                        "(e.g. from icgd.constructions.fit_ranges_from_data)")
    with gc_paused():  # thousands of small modules: no full collections of the whole heap while they are made
        return ConstructedICGD(spec, eta=eta, steps=steps, box=box, knots=knots, fit_ranges=ranges,
                               x_bound=x_bound, y_bound=y_bound, readout=readout, dtype=dtype)


@contextmanager
def gc_paused():
    """Python's cyclic garbage collector off for the block (if it was on). Building a model creates thousands of
    modules (hook points per layer position), and each allocation-triggered full collection scans every object of
    the process — with torch and scikit-learn loaded, about as long as the build itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
