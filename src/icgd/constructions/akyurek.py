"""Akyürek et al. (ICLR 2023), §3: the mov / mul / div / aff primitives as transformer layers, composed into one-pass
SGD (Theorem 1, iterated over the context) and ridge regression by Sherman–Morrison updates (Theorem 2, iterated).

**Tokens** (one row per prompt point; context tokens ``t = 1``, queries ``t = 0``)::

    ridge: h_i = [ x | y | one | t | pos (n_max) | u | yk | A (d²) | b | v | s | r | z | w | pred ]
    sgd:   h_i = [ x | y | one | t | pos (n_max) | u | yk | f | w | e | g | pred ]

``pos`` is a one-hot position code: context token i has ``pos[i] = 1`` (written by :meth:`AkyurekTransformer.
tokens_for`; the paper uses learned absolute position embeddings), queries have ``pos = 0``. The learner's state
(``A`` = the current inverse A_k⁻¹ row-major, ``b`` = Σ x_i y_i, ``w``) is replicated in every token, as the paper's
constant-width state is; ``u, yk, f, v, s, r, z, e, g`` are scratch, erased after every example.

**Primitives** (one layer each, :func:`div` a short list; the paper's definitions are in §3.1, Lemma 1):

* :func:`mov` — attention with the one-hot key ``pos_k`` copies slots of context token k into every token. It is a
  linear :class:`~icgd.layers.KernelAttention` whose only key is token k (``key_flag = pos_k``) with score
  ⟨one, pos_k⟩ = 1, so the copy is exact; if the prompt has no token k (n < k) nothing is read and every slot
  stays 0, which makes the whole update for example k an identity.
* :func:`mul` — products of matrices held in slots (several in parallel, Lemma 7). ``exact``: an
  :class:`~icgd.layers.EWML` layer, one head per output entry, ⟨Q h, K h⟩ V h = L_{i:}·R_{:j} → out_ij (or one head
  per column / row for outer products). ``faithful``: a GeLU :class:`~icgd.layers.MLP` using Lemma 4,
  ``pq ≈ √(π/2)/ε² (GeLU(εp + εq) − GeLU(εp) − GeLU(εq))`` — three units per product (the single-operand units
  shared); error ``(ε²/12)(4p³q + 6p²q² + 4pq³)/(pq)`` relative from the Taylor series plus ``~u/(ε|q|)`` from rounding
  (u the unit round-off).
* :func:`aff` — ``dst ← dst + Σ W src + b`` as an MLP, exact because ``relu(z) − relu(−z) = z`` (and ``gelu(z) −
  gelu(−z) = z`` in the faithful variant, which uses GeLU units throughout). "Storing" into a slot (paper) =
  adding after clearing; clearing a slot is ``W = −I`` on itself.
* :func:`div` (a list of layers). ``faithful`` — :func:`div_ln`, Lemma 8: one :class:`~icgd.layers.LayerNorm` over
  ``[N s, −N s, v_1, −v_1, …]`` (mean 0, σ ≈ N|s|√(2/m)) returns ``v/|s|`` up to a relative
  ``|v|²/(2N²s²) + m·eps_LN/(4N²s²)`` (≤ 1/(8λN²) + … in the ridge, since |v|²/s² ≤ 1/(4λ)).
  ``exact`` — products cannot divide, so the reciprocal is found by Newton's iteration from a LayerNorm seed:
  :func:`recip_seed` (LayerNorm, eps = 0, over ``[s, −s, 1, −1]``) gives ``r₀ = α√2/√(s²+1)`` with ``α = 2/(1+√2)``,
  so ``1 − s r₀ ∈ (−0.172, 0.172]`` for every s ≥ 1 (here s = 1 + uᵀA⁻¹u ≥ 1: no range to choose); then
  :data:`NEWTON_STEPS` = 5 :func:`recip_newton` EWML layers ``r ← 2r − s r²`` square the error each time (0.172³² ≈
  3e-25 < round-off): 1/s to machine precision; then a :func:`mul` gives ``z = r v``.

**Ridge** (Theorem 2 iterated; :func:`ridge`). ``aff A ← I/λ``, then for k = 1 … n_max:
``mov (u, yk) ← (x_k, y_k)``; ``mul v = A u, b += u yk``; ``mul s = uᵀv + 1``; ``div z = v/s``; ``mul A −= z vᵀ``;
``aff clear u, yk, v, s, r, z`` — so ``A_k⁻¹ = A_{k−1}⁻¹ − A_{k−1}⁻¹x_k x_kᵀA_{k−1}⁻¹/(1 + x_kᵀA_{k−1}⁻¹x_k)``
(Sherman–Morrison, Eq. 13) and ``b_k = b_{k−1} + x_k y_k``; finally ``mul w = A b`` and ``mul pred = wᵀx`` (on a
query token x = x_q): ``x_qᵀ (XᵀX + λI)⁻¹ Xᵀy``.

* exact: ``1 + 12·n_max + 2`` layers (per example: mov, 2 mul, LayerNorm seed, 5 Newton, mul z, mul A, aff);
  ``(2d + 15)·n_max + d + 1`` heads (per example: mov 1, mul v,b d + 1, mul s 2, Newton 2 × 5, mul z 1,
  mul A d; read-out d + 1); MLP widths 2d (init) and 6d + 6 (clear), seed LayerNorm width 4.
* faithful: ``1 + 6·n_max + 2`` layers, ``n_max`` heads (the movs); GeLU MLP widths per example 2d² + 2d + 1
  (mul v,b), 3d + 2 (mul s), d² + 2d (mul A), 6d + 6 (clear); LayerNorm width 2d + 2; read-out 2d² + d and 3d.
  The GeLU inputs are scaled per slot by typical sizes for unit-scale data (:func:`_ridge_magnitudes`).

**SGD** (Theorem 1 iterated; :func:`akyurek_gd`) — one pass of single-example SGD from w₀ = 0, the paper's SGD(α)
learner (§4.3) with α = `eta`, n_max = 40 by default: for k = 1 … n, ``w_k = w_{k−1} − 2α(x_k x_kᵀ w_{k−1} − y_k x_k + λ w_{k−1})``; the prediction
is ``w_nᵀ x_q``. Per example: ``mov (u, yk, f) ← (x_k, y_k, 1)``; ``mul e = wᵀu − yk f``; ``mul g = u e + λ f w``;
``aff w −= 2α g, clear u, yk, f, e, g``; then ``mul pred = wᵀx``: ``4·n_max + 1`` layers. The flag f (= 1 iff the
prompt has example k) gates the weight decay, so absent examples are identities.
Heads (exact): per example mov 1, mul e 2, mul g 1 (+1 if λ > 0); read-out 1; aff width 6d + 6. Faithful MLP
widths: 3d + 3 (mul e), 2d + 1 (+ 2d + 1 if λ > 0) (mul g), 6d + 6 (aff), 3d (read-out).

**Measured errors** (float64; ``x, w ~ N(0, I)``, y = wᵀx; 6 seeds × 5 shapes, d ≤ 8, n ≤ 40 with n_max = 40;
error = max |pred − reference| / max |reference| over a batch of 8 prompts × 3 queries):

====================  =========  =========  =========  =========  =========  =========
λ                     2          1          0.5        0.1        0.05       0.01
====================  =========  =========  =========  =========  =========  =========
ridge exact           7e-15      7e-15      9e-15      7e-14      2e-13      7e-13
ridge faithful        5e-9       8e-9       2e-8       6e-8       2e-7       1.4e-6
====================  =========  =========  =========  =========  =========  =========

``akyurek_gd`` vs the numpy SGD loop: exact 4e-16, faithful 2e-9 (η ∈ [0.01, 0.1], λ ∈ [0, 1]). The faithful
defaults are ε = 1e-5 (GeLU input scale, about the cube root of the float64 round-off, where Lemma 4's O(ε²) meets
the O(u/ε) cancellation) and N = 1e4 (LayerNorm constant; its O(1/(λN²)) part is then ≲ 1e-8). The error scales as
ε²: with ε = 1e-2 it is ~1e-3 (λ = 1) to ~1e-2 (λ = 0.1). Tested tolerances (tests/test_akyurek.py): exact ridge
1e-8 (the contract), exact SGD 1e-12; faithful ridge 1e-7 (λ = 1), 1e-6 (λ = 0.1), 2e-5 (λ = 0.01); faithful SGD
1e-7. In float32 (not tested) the exact ridge is ~5e-7 and the faithful one ~1e-3 (ε = 1e-2, N = 1e3).

**Deviations from the paper, and why**

* mov reads one token through a key mask (the linear-kernel attention of icgd) instead of a hard softmax: exact,
  and a missing token k reads nothing (a softmax would average the other tokens).
* The state is replicated in every token instead of moved from column to column; the prediction is read at the query
  tokens' ``pred`` slot.
* LayerNorm acts on a linear read of the token (icgd layers are residual; see :mod:`icgd.layers.norm`) — the paper
  reaches the same by Lemma 6's large bypass constants.
* The exact variant's division is a LayerNorm seed + Newton (products only); the paper's is Lemma 8's LayerNorm.
* The GeLU scale ε and the LayerNorm constant N are hyper-parameters (the paper leaves them implicit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from icgd._checks import as_float_tensor, batched, positive_float, positive_int
from icgd.constructions.base import PromptModel, check_dtype
from icgd.errors import ShapeError, SpecError
from icgd.layers import EWML, MLP, HeadBank, KernelAttention, RowMap, ValueMap
from icgd.layers.norm import LayerNorm
from icgd.memory import MemoryEstimate
from icgd.tokens import Layout, pack_prompt

VARIANTS = ("exact", "faithful")
NEWTON_STEPS = 5  # |1 − s r₀| ≤ 0.172 → 0.172^(2⁵) ≈ 3e-25: below float64 round-off
SEED_ALPHA = 2.0 / (1.0 + math.sqrt(2.0))  # centres s·r₀ ∈ [α, α√2) on 1
GELU_KAPPA = math.sqrt(math.pi / 2.0)  # Lemma 4's constant
DEFAULT_GELU_SCALE = {torch.float64: 1e-5, torch.float32: 1e-2}
DEFAULT_LN_BIG = {torch.float64: 1e4, torch.float32: 1e3}
LN_EPS = 1e-5  # the standard LayerNorm epsilon, kept in the faithful variant


# ----------------------------------------------------------------------------------------------------- layouts


def ridge_layout(d_in: int, n_max: int) -> Layout:
    """Token layout of :func:`ridge` (see the module docstring)."""
    d = d_in
    return Layout([("x", d), ("y", 1), ("one", 1), ("t", 1), ("pos", n_max), ("u", d), ("yk", 1), ("A", d * d),
                   ("b", d), ("v", d), ("s", 1), ("r", 1), ("z", d), ("w", d), ("pred", 1)])


def gd_layout(d_in: int, n_max: int) -> Layout:
    """Token layout of :func:`akyurek_gd` (see the module docstring)."""
    d = d_in
    return Layout([("x", d), ("y", 1), ("one", 1), ("t", 1), ("pos", n_max), ("u", d), ("yk", 1), ("f", 1),
                   ("w", d), ("e", 1), ("g", d), ("pred", 1)])


# ------------------------------------------------------------------------------------------------ head storage


Head = tuple[list[tuple[int, float]], list[tuple[int, float]], list[tuple[int, int, float]]]


def _sparse_heads(dim: int, heads: Sequence[Head], dtype: torch.dtype) -> HeadBank:
    """One group per head: query and key rows each read one coordinate ``(index, coef)``; the value map is COO
    ``(src, dst, coef)``. Groups are padded with zero rows / entries."""
    G = len(heads)
    r = max(max(len(q), len(k)) for q, k, _ in heads)
    e = max(len(v) for _, _, v in heads)
    idx = {name: torch.zeros(G, r, 1, dtype=torch.long) for name in ("q", "k")}
    coef = {name: torch.zeros(G, r, 1, dtype=dtype) for name in ("q", "k")}
    src, dst = torch.zeros(G, e, dtype=torch.long), torch.zeros(G, e, dtype=torch.long)
    vcoef = torch.zeros(G, e, dtype=dtype)
    for g, (q, k, v) in enumerate(heads):
        for name, rows in (("q", q), ("k", k)):
            for ri, (i, c) in enumerate(rows):
                idx[name][g, ri, 0], coef[name][g, ri, 0] = i, c
        for ei, (s, t, c) in enumerate(v):
            src[g, ei], dst[g, ei], vcoef[g, ei] = s, t, c
    return HeadBank(RowMap(dim, idx=idx["q"], coef=coef["q"]), RowMap(dim, idx=idx["k"], coef=coef["k"]),
                    ValueMap(dim, src=src, dst=dst, coef=vcoef))


def _mlp(W1: torch.Tensor, W2: torch.Tensor, activation: str) -> MLP:
    return MLP.from_weights(W1, W2, trainable=False, sparse=True, activation=activation)


# -------------------------------------------------------------------------------------------------- primitives


def _coords(layout: Layout, where: str | int) -> list[int]:
    """The coordinates of a slot name, or one coordinate given by its index."""
    if isinstance(where, int):
        if not 0 <= where < layout.dim:
            raise SpecError(f"coordinate {where} is outside the token (dimension {layout.dim})")
        return [where]
    s = layout.slice(where)
    return list(range(s.start, s.stop))


def mov(layout: Layout, key: int, moves: Sequence[tuple[str | int, str | int]], dtype: torch.dtype = torch.float64
        ) -> KernelAttention:
    """mov (§3.1): ``h_i[dst] += h_k[src]`` for every token i and each ``(src, dst)`` of `moves` (slot names or
    single coordinates), where k is the one token with ``h_k[key] ≠ 0`` (``key`` = the coordinate ``pos_k``);
    nothing is added if no token has it. One linear-kernel head, score ⟨h_i[one], h_k[key]⟩ = 1, one key."""
    pairs = []
    for src, dst in moves:
        s, t = _coords(layout, src), _coords(layout, dst)
        if len(s) != len(t):
            raise SpecError(f"mov: {src!r} has {len(s)} entries but {dst!r} has {len(t)}")
        pairs += list(zip(s, t))
    D = layout.dim
    W_q, W_k = torch.zeros(1, len(pairs), D, dtype=dtype), torch.zeros(1, len(pairs), D, dtype=dtype)
    W_v, W_o = torch.zeros(1, len(pairs), D, dtype=dtype), torch.zeros(1, D, len(pairs), dtype=dtype)
    W_q[0, 0, layout.index("one")] = 1.0
    W_k[0, 0, _coords(layout, key)[0]] = 1.0
    for row, (s, t) in enumerate(pairs):
        W_v[0, row, s] = 1.0
        W_o[0, t, row] = 1.0
    layer = KernelAttention(D, 1, len(pairs), score="linear", key_flag=key, dtype=dtype)
    with torch.no_grad():
        for name, value in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v), ("W_o", W_o)):
            getattr(layer, name).copy_(value)
    return layer.requires_grad_(False)


@dataclass(frozen=True)
class Product:
    """``out += coef · L R`` with L the slot `left` read as an a×b matrix, R the slot `right` as b×c and out the
    slot `out` as a×c (all row-major) — the paper's mul(H; a, b, c, …)."""

    out: str
    left: str
    right: str
    shape: tuple[int, int, int]
    coef: float = 1.0

    def starts(self, layout: Layout) -> tuple[int, int, int]:
        """First coordinates of the left, right and out slots, after checking their sizes."""
        a, b, c = self.shape
        for slot, size in ((self.left, a * b), (self.right, b * c), (self.out, a * c)):
            if layout.size(slot) != size:
                raise SpecError(f"mul {self.shape}: slot {slot!r} has {layout.size(slot)} entries, expected {size}")
        return layout.slice(self.left).start, layout.slice(self.right).start, layout.slice(self.out).start

    def entries(self, layout: Layout) -> list[tuple[int, int, int, float]]:
        """Scalar terms ``(left coord, right coord, out coord, coef)``."""
        a, b, c = self.shape
        L, R, O = self.starts(layout)
        return [(L + i * b + m, R + m * c + j, O + i * c + j, self.coef)
                for i in range(a) for j in range(c) for m in range(b)]


def _ewml_heads(layout: Layout, p: Product) -> list[Head]:
    """EWML heads for one product: an inner product per output entry, or, for outer products (b = 1), one head per
    column (⟨R_j, one⟩ · L → out[:, j]) or per row, whichever is fewer."""
    a, b, c = p.shape
    L, R, O = p.starts(layout)
    one = layout.index("one")
    if b == 1 and c <= a:
        return [([(R + j, 1.0)], [(one, 1.0)], [(L + i, O + i * c + j, p.coef) for i in range(a)]) for j in range(c)]
    if b == 1:
        return [([(L + i, 1.0)], [(one, 1.0)], [(R + j, O + i * c + j, p.coef) for j in range(c)]) for i in range(a)]
    return [([(L + i * b + m, 1.0) for m in range(b)], [(R + m * c + j, 1.0) for m in range(b)],
             [(one, O + i * c + j, p.coef)]) for i in range(a) for j in range(c)]


def _gelu_products(layout: Layout, products: Sequence[Product], scale: float, magnitude: Mapping[str, float],
                   dtype: torch.dtype) -> MLP:
    """A GeLU MLP computing every scalar term of `products` by Lemma 4. Operand p of a slot with typical size
    M_p enters as ε_p p with ε_p = scale / M_p; single-operand units are shared."""
    units: dict[tuple, int] = {}
    rows: list[dict[int, float]] = []
    out: list[tuple[int, int, float]] = []  # (out coord, unit, weight)

    def unit(key: tuple, row: dict[int, float]) -> int:
        if key not in units:
            units[key] = len(rows)
            rows.append(row)
        return units[key]

    slot_of = {layout.index(n, i): n for n, _ in layout.slots for i in range(layout.size(n))}
    for p in products:
        for li, ri, oi, coef in p.entries(layout):
            el, er = scale / magnitude.get(slot_of[li], 1.0), scale / magnitude.get(slot_of[ri], 1.0)
            pair_row = {li: el} if li != ri else {li: el + er}
            if li != ri:
                pair_row[ri] = er
            w = coef * GELU_KAPPA / (el * er)
            out.append((oi, unit(("pair", li, el, ri, er), pair_row), w))
            out.append((oi, unit(("one", li, el), {li: el}), -w))
            out.append((oi, unit(("one", ri, er), {ri: er}), -w))
    W1 = torch.zeros(len(rows), layout.dim, dtype=torch.float64)
    W2 = torch.zeros(layout.dim, len(rows), dtype=torch.float64)
    for u, row in enumerate(rows):
        for i, v in row.items():
            W1[u, i] += v
    for oi, u, w in out:
        W2[oi, u] += w
    return _mlp(W1.to(dtype), W2.to(dtype), "gelu")


def mul(layout: Layout, products: Sequence[Product], variant: str = "exact", *, scale: float = 1e-5,
        magnitude: Mapping[str, float] | None = None, dtype: torch.dtype = torch.float64) -> EWML | MLP:
    """mul (§3.1, Lemma 7 for several at once): ``out += coef · L R`` for every :class:`Product`. ``exact``: an EWML
    layer (products are trilinear heads); ``faithful``: a GeLU MLP by Lemma 4 with input scale `scale` (and optional
    typical sizes `magnitude` per slot, to scale each operand into the small-argument regime)."""
    if variant == "exact":
        heads = [h for p in products for h in _ewml_heads(layout, p)]
        return EWML(_sparse_heads(layout.dim, heads, dtype)).requires_grad_(False)
    return _gelu_products(layout, products, scale, magnitude or {}, dtype)


def aff(layout: Layout, terms: Sequence[tuple[str, str, float | torch.Tensor]],
        bias: Sequence[tuple[str, torch.Tensor]] = (), activation: str = "relu",
        dtype: torch.dtype = torch.float64) -> MLP:
    """aff (§3.1): ``h[dst] += W h[src] (+ b)`` for each ``(dst, src, W)`` in `terms` (W a number = W·I, or a
    matrix) and ``(dst, b)`` in `bias` (through the ``one`` slot); all read the layer's input. Exact:
    ``act(z) − act(−z) = z`` for act = relu or gelu, two units per written coordinate."""
    D = layout.dim
    M = torch.zeros(D, D, dtype=torch.float64)
    for dst, src, W in terms:
        W = torch.as_tensor(W, dtype=torch.float64)
        if W.dim() == 0:
            if layout.size(dst) != layout.size(src):
                raise SpecError(f"aff: a scalar weight needs slots of one size; {dst!r} and {src!r} differ")
            W = W * torch.eye(layout.size(dst), dtype=torch.float64)
        if W.shape != (layout.size(dst), layout.size(src)):
            raise SpecError(f"aff: W for {src!r} → {dst!r} must be {(layout.size(dst), layout.size(src))}, "
                            f"got {tuple(W.shape)}")
        M[layout.slice(dst), layout.slice(src)] += W
    for dst, b in bias:
        M[layout.slice(dst), layout.index("one")] += torch.as_tensor(b, dtype=torch.float64)
    coords = [i for i in range(D) if bool((M[i] != 0).any())]
    W1 = torch.cat([M[coords], -M[coords]])
    W2 = torch.zeros(D, 2 * len(coords), dtype=torch.float64)
    for u, i in enumerate(coords):
        W2[i, u], W2[i, len(coords) + u] = 1.0, -1.0
    return _mlp(W1.to(dtype), W2.to(dtype), activation)


def recip_seed(layout: Layout, den: str, out: str, dtype: torch.dtype = torch.float64) -> LayerNorm:
    """``h[out] += α √2/√(s² + 1)`` for s = h[den]: a LayerNorm (eps = 0) over ``[s, −s, 1, −1]`` (mean 0,
    σ = √((s²+1)/2)), the seed of the exact division; s·r₀ ∈ [α, α√2) for all s ≥ 1."""
    D, s, one = layout.dim, layout.index(den), layout.index("one")
    W_in = torch.zeros(4, D, dtype=dtype)
    W_in[0, s], W_in[1, s], W_in[2, one], W_in[3, one] = 1.0, -1.0, 1.0, -1.0
    W_out = torch.zeros(D, 4, dtype=dtype)
    W_out[layout.index(out), 2] = SEED_ALPHA
    return LayerNorm(W_in, W_out, eps=0.0)


def recip_newton(layout: Layout, den: str, r: str, dtype: torch.dtype = torch.float64) -> EWML:
    """One Newton step for 1/s: ``r ← 2r − s r²`` (error 1 − s r is squared), two EWML heads
    ⟨one, one⟩·r and −⟨s, r⟩·r."""
    one, s, ri = layout.index("one"), layout.index(den), layout.index(r)
    heads: list[Head] = [([(one, 1.0)], [(one, 1.0)], [(ri, ri, 1.0)]), ([(s, 1.0)], [(ri, 1.0)], [(ri, ri, -1.0)])]
    return EWML(_sparse_heads(layout.dim, heads, dtype)).requires_grad_(False)


def div_ln(layout: Layout, num: str, den: str, out: str, *, big: float, eps: float = LN_EPS,
           dtype: torch.dtype = torch.float64) -> LayerNorm:
    """div (§3.1, Lemma 8): ``h[out] += h[num] / |h[den]|`` approximately, by a LayerNorm over
    ``[N s, −N s, v_1, −v_1, …]`` (m = 2 + 2·|num| entries, mean 0) scaled back by ``N√(2/m)``; relative error
    ``≈ (|v|² + m·eps/2) / (2N²s²)``."""
    D, s, k = layout.dim, layout.index(den), layout.size(num)
    m = 2 + 2 * k
    W_in = torch.zeros(m, D, dtype=dtype)
    W_in[0, s], W_in[1, s] = big, -big
    W_out = torch.zeros(D, m, dtype=dtype)
    for i in range(k):
        W_in[2 + 2 * i, layout.index(num, i)], W_in[3 + 2 * i, layout.index(num, i)] = 1.0, -1.0
        W_out[layout.index(out, i), 2 + 2 * i] = big * math.sqrt(2.0 / m)
    return LayerNorm(W_in, W_out, eps=eps)


def div(layout: Layout, num: str, den: str, out: str, variant: str = "exact", *, scratch: str = "r",
        big: float = 1e4, dtype: torch.dtype = torch.float64) -> list[nn.Module]:
    """div (§3.1): ``h[out] += h[num] / h[den]`` for ``h[den] ≥ 1``, as a list of layers. ``exact``: the seed
    :func:`recip_seed` and :data:`NEWTON_STEPS` :func:`recip_newton` steps leave 1/s (to round-off) in the
    one-entry slot `scratch` (which must start at 0), then a :func:`mul` writes ``num · (1/s)``; 7 layers.
    ``faithful``: :func:`div_ln` (Lemma 8, dividing by |s|) with constant `big`; 1 layer."""
    if variant == "faithful":
        return [div_ln(layout, num, den, out, big=big, dtype=dtype)]
    newton = recip_newton(layout, den, scratch, dtype)
    k = layout.size(num)
    return [recip_seed(layout, den, scratch, dtype), *[newton] * NEWTON_STEPS,
            mul(layout, [Product(out, num, scratch, (k, 1, 1))], dtype=dtype)]


# ---------------------------------------------------------------------------------------------------- the model


class AkyurekTransformer(PromptModel):
    """The transformers built by :func:`ridge` and :func:`akyurek_gd` (see the module docstring). Context token i
    carries the one-hot position ``pos[i] = 1``; prompts may have 1 … n_max context examples."""

    def __init__(self, layers: Sequence[nn.Module], layout: Layout, *, d_in: int, n_max: int, algorithm: str,
                 variant: str, hyper: dict, dtype: torch.dtype, roles: Sequence[str]):
        super().__init__(layers, layout, d_in=d_in, d_out=1, answer="pred", sign=1.0, dtype=dtype, roles=roles)
        self.n_max, self.algorithm, self.variant, self.hyper = n_max, algorithm, variant, dict(hyper)

    def tokens_for(self, X, Y, x_query) -> tuple[torch.Tensor, bool]:
        """The prompt packed into tokens, with the one-hot positions of the context tokens."""
        X, Y, xq, single = self.check_prompt(X, Y, x_query)
        n = X.shape[1]
        if n > self.n_max:
            raise ShapeError(f"the prompt has {n} context examples but this model was built for at most "
                             f"n_max = {self.n_max}; rebuild it with n_max >= {n}")
        akyurek_memory(self.d_in, self.n_max, algorithm=self.algorithm, dtype=self.dtype, batch=X.shape[0],
                       tokens=n + xq.shape[1], build=False,
                       what=f"a forward pass of {X.shape[0]} prompt(s) × {n + xq.shape[1]} tokens").check(self.device())
        tokens = pack_prompt(self.layout, X, Y, xq).to(self.device())
        pos = self.layout.slice("pos")
        tokens[:, :n, pos.start:pos.start + n] = torch.eye(n, dtype=tokens.dtype, device=tokens.device)
        return tokens, single

    @torch.inference_mode()
    def weights(self, X, Y) -> torch.Tensor:
        """The weight vector the forward pass learned from the context, read from the ``w`` slot ``(B, d_in)``
        (ridge: ``(XᵀX + λI)⁻¹Xᵀy``; sgd: w_n)."""
        X = as_float_tensor(X, "X", self.dtype)
        batched(X, "X", 2)  # X must be (n, d) or (B, n, d)
        tokens, single = self.tokens_for(X, Y, X[..., :0, :])  # no queries
        w = self.layout.read(self(tokens), "w")[:, 0]
        return w[0] if single else w

    def layer_counts(self) -> dict[str, int]:
        """Number of layers of each kind and the total number of attention / EWML heads."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[type(layer).__name__] = counts.get(type(layer).__name__, 0) + 1
        counts["layers"] = len(self.layers)
        counts["heads"] = sum(int(getattr(layer, "num_heads", 0) or 0) for layer in self.layers)
        return counts


def akyurek_memory(d_in: int, n_max: int, *, algorithm: str = "ridge", dtype: torch.dtype = torch.float64,
                   batch: int = 0, tokens: int = 0, build: bool = True, what: str = "") -> MemoryEstimate:
    """Bytes :func:`ridge` (``algorithm="ridge"``) or :func:`akyurek_gd` (``"sgd"``) needs, without building anything:
    the n_max ``mov`` layers store dense (d + 2) × D maps (D = d² + 6d + n_max + 7 for ridge, 4d + n_max + 7 for
    sgd), the ``aff`` layers are built from a dense D × D float64 matrix, a forward pass holds a few (B, T, D) token
    tensors and (B, T, T) scores. Within a small factor."""
    d, s = d_in, torch.empty((), dtype=dtype).element_size()
    D = (d * d + 6 * d + n_max + 7) if algorithm == "ridge" else (4 * d + n_max + 7)
    params = n_max * 4 * (d + 2) * D * s + 64 * (d * d + d + 1) * (16 + s)
    build_bytes = (2 * 8 * D * D + 6 * 8 * (d * d + 3 * d + 3) * D) if build else 0
    BT = max(0, batch) * max(0, tokens)
    acts = s * (BT * (6 * D + 4 * (d + 2)) + 2 * BT * max(0, tokens))
    return MemoryEstimate(what or f"{algorithm}(d_in={d}, n_max={n_max})",
                          {"params": params, "build": build_bytes, "activations": acts},
                          reduce="reduce n_max (memory grows like n_max²) or d_in, or the batch and prompt size")


def _check_common(d_in, n_max, variant, dtype, algorithm: str) -> tuple[int, int, str, torch.dtype]:
    d_in = positive_int(d_in, "d_in")
    n_max = positive_int(n_max, "n_max")
    if variant not in VARIANTS:
        raise SpecError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    akyurek_memory(d_in, n_max, algorithm=algorithm, dtype=check_dtype(dtype)).check()
    return d_in, n_max, variant, check_dtype(dtype)


def _faithful_knobs(variant: str, dtype: torch.dtype, gelu_scale, ln_big) -> tuple[float, float]:
    if variant == "exact":
        if gelu_scale is not None or ln_big is not None:
            raise SpecError("gelu_scale and ln_big tune the paper-faithful approximations; pass them only with "
                            "variant='faithful'")
        return 0.0, 0.0
    scale = DEFAULT_GELU_SCALE[dtype] if gelu_scale is None else positive_float(gelu_scale, "gelu_scale")
    big = DEFAULT_LN_BIG[dtype] if ln_big is None else positive_float(ln_big, "ln_big")
    return scale, big


def _ridge_magnitudes(d: int, n_max: int, lam: float) -> dict[str, float]:
    """Typical sizes of the ridge's mul operands for unit-scale data (x ~ N(0, I), y = wᵀx with w ~ N(0, I)):
    |yk| ~ √d, A⁻¹ ≼ I/λ, |v| = |A⁻¹u| ≲ 1/λ, |b| = |Σ x_i y_i| ≲ n, |z| = |A⁻¹u|/(1 + uᵀA⁻¹u) ≤ 1/(2√λ);
    the GeLU units of Lemma 4 see ``gelu_scale × operand / size``."""
    return {"yk": math.sqrt(d), "A": 1.0 / lam, "v": 1.0 / lam, "b": float(n_max), "z": 0.5 / math.sqrt(lam)}


def ridge(d_in: int, *, lam: float, n_max: int, variant: str = "exact", dtype: torch.dtype = torch.float64,
          gelu_scale: float | None = None, ln_big: float | None = None) -> AkyurekTransformer:
    """A transformer whose forward pass computes ridge regression by Sherman–Morrison updates over the context
    (Akyürek et al. Theorem 2, iterated): ``predict(X, Y, x_q) = x_qᵀ (XᵀX + λI)⁻¹ Xᵀ y`` for prompts of 1 … `n_max`
    examples. ``variant="exact"`` (EWML products, Newton reciprocal: machine precision) or ``"faithful"`` (GeLU
    products with input scale `gelu_scale`, LayerNorm division with constant `ln_big`). See the module docstring."""
    d, n_max, variant, dtype = _check_common(d_in, n_max, variant, dtype, "ridge")
    lam = positive_float(lam, "lam")
    scale, big = _faithful_knobs(variant, dtype, gelu_scale, ln_big)
    L = ridge_layout(d, n_max)
    act = "relu" if variant == "exact" else "gelu"
    mag = _ridge_magnitudes(d, n_max, lam)

    def mul_(*products: Product) -> EWML | MLP:
        return mul(L, products, variant, scale=scale, magnitude=mag, dtype=dtype)

    init = aff(L, [], bias=[("A", torch.eye(d, dtype=torch.float64).flatten() / lam)], activation=act, dtype=dtype)
    mul_vb = mul_(Product("v", "A", "u", (d, d, 1)), Product("b", "u", "yk", (d, 1, 1)))
    mul_s = mul_(Product("s", "u", "v", (1, d, 1)), Product("s", "one", "one", (1, 1, 1)))
    divide = div(L, "v", "s", "z", variant, scratch="r", big=big, dtype=dtype)
    if variant == "exact":
        div_roles = ["div: seed r₀"] + [f"div: Newton {j + 1}" for j in range(NEWTON_STEPS)] + ["div: mul z = r v"]
    else:
        div_roles = ["div z = v/|s|"]
    mul_A = mul_(Product("A", "z", "v", (d, 1, d), coef=-1.0))
    clear = aff(L, [(n, n, -1.0) for n in ("u", "yk", "v", "s", "r", "z")], activation=act, dtype=dtype)
    layers: list[nn.Module] = [init]
    roles = ["aff A = I/λ"]
    for k in range(n_max):
        layers += [mov(L, L.index("pos", k), [("x", "u"), ("y", "yk")], dtype), mul_vb, mul_s, *divide, mul_A, clear]
        roles += [f"mov x_{k + 1}, y_{k + 1}", "mul v = A u, b += u y", "mul s = uᵀv + 1", *div_roles,
                  "mul A −= z vᵀ", "aff clear"]
    layers += [mul_(Product("w", "A", "b", (d, d, 1))), mul_(Product("pred", "w", "x", (1, d, 1)))]
    roles += ["mul w = A b", "mul pred = wᵀx"]
    hyper = {"lam": lam} | ({"gelu_scale": scale, "ln_big": big} if variant == "faithful" else {})
    return AkyurekTransformer(layers, L, d_in=d, n_max=n_max, algorithm="ridge", variant=variant, hyper=hyper,
                              dtype=dtype, roles=roles)


def akyurek_gd(d_in: int, *, eta: float, lam: float = 0.0, n_max: int = 40, variant: str = "exact",
               dtype: torch.dtype = torch.float64, gelu_scale: float | None = None) -> AkyurekTransformer:
    """A transformer whose forward pass runs one pass of single-example SGD over the context from w₀ = 0
    (Akyürek et al. Theorem 1, iterated; the paper's SGD(α) learner with α = `eta`):
    ``w_k = w_{k−1} − 2η(x_k x_kᵀ w_{k−1} − y_k x_k + λ w_{k−1})``, ``predict = w_nᵀ x_q``, for prompts of
    1 … `n_max` examples. ``variant="exact"`` (EWML products) or ``"faithful"`` (GeLU products, scale
    `gelu_scale`). See the module docstring."""
    d, n_max, variant, dtype = _check_common(d_in, n_max, variant, dtype, "sgd")
    eta = positive_float(eta, "eta")
    lam = positive_float(lam, "lam", allow_zero=True)
    scale, _ = _faithful_knobs(variant, dtype, gelu_scale, None)
    L = gd_layout(d, n_max)
    act = "relu" if variant == "exact" else "gelu"

    mag = {"yk": math.sqrt(d), "e": math.sqrt(d)}

    def mul_(*products: Product) -> EWML | MLP:
        return mul(L, products, variant, scale=scale, magnitude=mag, dtype=dtype)

    mul_e = mul_(Product("e", "w", "u", (1, d, 1)), Product("e", "yk", "f", (1, 1, 1), coef=-1.0))
    g_terms = [Product("g", "u", "e", (d, 1, 1))] + ([Product("g", "w", "f", (d, 1, 1), coef=lam)] if lam else [])
    mul_g = mul_(*g_terms)
    step = aff(L, [("w", "g", -2.0 * eta)] + [(n, n, -1.0) for n in ("u", "yk", "f", "e", "g")],
               activation=act, dtype=dtype)
    layers: list[nn.Module] = []
    roles: list[str] = []
    for k in range(n_max):
        key = L.index("pos", k)
        layers += [mov(L, key, [("x", "u"), ("y", "yk"), (key, L.index("f"))], dtype), mul_e, mul_g, step]
        roles += [f"mov x_{k + 1}, y_{k + 1}", "mul e = wᵀu − y", "mul g = u e + λ w", "aff w −= 2η g, clear"]
    layers.append(mul_(Product("pred", "w", "x", (1, d, 1))))
    roles.append("mul pred = wᵀx")
    hyper = {"eta": eta, "lam": lam} | ({"gelu_scale": scale} if variant == "faithful" else {})
    return AkyurekTransformer(layers, L, d_in=d, n_max=n_max, algorithm="sgd", variant=variant, hyper=hyper,
                              dtype=dtype, roles=roles)
