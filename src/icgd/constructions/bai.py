"""Bai et al. (NeurIPS 2023), "Transformers as statisticians": in-context gradient descent on convex losses of a
linear model with ReLU attention, in the style of Wu et al.'s construction (:mod:`icgd.constructions.wu`) with
N = 1 and no activation.

**Token** ``h_i = [ x | y | w | p | a | g | one | t ]``: ``w ∈ R^d`` is replicated in every token, ``p = wᵀx``,
``a`` the fitted sigmoid of p (logistic loss only), ``g`` the loss derivative, ``t`` 1 on context tokens.

**One GD step** on ``L(w) = (1/n) Σ_i ℓ(wᵀx_i, y_i) + (λ/2)‖w‖²``:

1. ``fwd``, ReLU attention, heads ±: ``Q = [x; 1]``, ``K = [w; 1]`` (block-scaled ±1), ``V = e_p e_oneᵀ`` →
   ``p = relu(wᵀx) − relu(−wᵀx) = wᵀx`` exactly.
2. ``sigmoid`` (logistic only), MLP: ``a = σ̂(p)``, a sum of `knots` ReLUs interpolating σ on [−R, R] and constant
   outside (:func:`~icgd.constructions.fits.clamped`), so ``|σ̂ − σ| ≤ max(σ(−R), fit error)`` everywhere.
3. ``loss``, EWML, one head ``⟨[t, t], [2p, −2y]⟩ e_one → g`` (squared) or ``⟨[t, t], [2a, −2y]⟩`` (logistic):
   ``g = 2 ℓ′(p, y)`` on context tokens and exactly 0 on queries (the t factor gates the query off).
   squared: ``ℓ = ½(p − y)²``; logistic: ``ℓ = log(1 + eᵖ) − y p`` with labels y ∈ {0, 1} (binary cross-entropy on
   the logit p), ``ℓ′ = σ(p) − y``.
4. ``decay`` (λ > 0), MLP: ``w ← w − ηλ (relu(w) − relu(−w))``. It reads the old w (the gradient terms are in g).
5. ``step``, ReLU attention, heads ±: ``Q = ±1``, ``K = g``, ``V = −ηT/(2n) (x → w)`` →
   ``w ← w − (η/n) Σ_i ℓ′(p_i, y_i) x_i``.
6. ``clean``, MLP: ``w ← clip(w, −box, box)`` (if a box is given) and ``p, a, g ← 0``.

``readout`` appends one ``fwd`` layer: the query tokens then hold ``p = w_Lᵀ x_q`` (for the logistic loss the logit;
σ of it is the probability). The squared loss is exact (no fit anywhere); the logistic loss carries the sigmoid fit's
error, O((2R/knots)²) in the gradient.
"""

from __future__ import annotations

import torch

from icgd._checks import as_float_tensor, batched, positive_float, positive_int
from icgd.constructions.base import PromptModel, StepScale, check_dtype
from icgd.constructions.fits import activation_fits, clamped, interpolant
from icgd.constructions.wu import _itemsize, _sparse_bytes
from icgd.errors import ShapeError, SpecError
from icgd.layers import EWML, MLP, ReLUAttention
from icgd.layers.heads import fit_heads, sparse_bank, sparse_bank_bytes
from icgd.memory import MemoryEstimate, check_layers
from icgd.nets import get_activation
from icgd.tokens import Layout, pack_prompt

LOSSES = ("squared", "logistic")
LOGISTIC_RANGE = 8.0  # |σ(±8) − {0, 1}| = 3.4e-4


def bai_layout(d_in: int) -> Layout:
    return Layout([("x", d_in), ("y", 1), ("w", d_in), ("p", 1), ("a", 1), ("g", 1), ("one", 1), ("t", 1)])


class _ConvexBuilder:
    def __init__(self, layout: Layout, dtype: torch.dtype):
        self.L, self.D, self.dtype = layout, layout.dim, dtype
        self.d = layout.size("x")
        self.one, self.t = layout.index("one"), layout.index("t")

    def forward_layer(self) -> ReLUAttention:
        q = [[(self.L.index("x", i), 1.0) for i in range(self.d)] + [(self.one, 1.0)]]
        k = [[(self.L.index("w", i), 1.0) for i in range(self.d)] + [(self.one, 1.0)]]
        identity = activation_fits(get_activation("identity"), 1.0, 2, dtype=self.dtype)[0]
        alpha, c = fit_heads([identity], self.dtype)
        values = [[(self.one, self.L.index("p"), 1.0)]]
        return ReLUAttention(sparse_bank(self.D, q, k, values, self.dtype, alpha=alpha, c=c,
                                         block=[[0] * self.d + [1]]))

    def sigmoid_layer(self, fit) -> MLP:
        W1 = torch.zeros(fit.units, self.D, dtype=self.dtype)
        W2 = torch.zeros(self.D, fit.units, dtype=self.dtype)
        W1[:, self.L.index("p")], W1[:, self.one] = fit.a1, fit.a2
        W2[self.L.index("a")] = fit.c
        return MLP.from_weights(W1, W2, trainable=False, sparse=True)

    def loss_layer(self, source: str) -> EWML:
        q = [[(self.t, 1.0), (self.t, 1.0)]]
        k = [[(self.L.index(source), 2.0), (self.L.index("y"), -2.0)]]
        return EWML(sparse_bank(self.D, q, k, [[(self.one, self.L.index("g"), 1.0)]], self.dtype))

    def _pairs_mlp(self, entries: list[tuple[int, float, float]]) -> MLP:
        """``z ← z − s·(relu(z − b) − relu(−z − b))`` for each ``(coordinate z, bound b, scale s)``: with s = 1 a
        clip to [−b, b] (b = 0 erases z), with b = 0 the shrink ``z ← (1 − s) z``."""
        W1 = torch.zeros(2 * len(entries), self.D, dtype=self.dtype)
        W2 = torch.zeros(self.D, 2 * len(entries), dtype=self.dtype)
        for u, (i, bound, scale) in enumerate(entries):
            W1[2 * u, i], W1[2 * u, self.one] = 1.0, -bound
            W1[2 * u + 1, i], W1[2 * u + 1, self.one] = -1.0, -bound
            W2[i, 2 * u], W2[i, 2 * u + 1] = -scale, scale
        return MLP.from_weights(W1, W2, trainable=False, sparse=True)

    def decay_layer(self, eta_lam: float) -> MLP:
        return self._pairs_mlp([(self.L.index("w", i), 0.0, eta_lam) for i in range(self.d)])

    def step_layer(self) -> ReLUAttention:
        q = [[(self.one, 1.0)]]
        k = [[(self.L.index("g"), 1.0)]]
        values = [[(self.L.index("x", i), self.L.index("w", i), 1.0) for i in range(self.d)]]
        alpha = torch.tensor([[[1.0], [-1.0]]], dtype=self.dtype)
        c = torch.tensor([[1.0, -1.0]], dtype=self.dtype)  # scaled by −ηT/(2n) per prompt size
        return ReLUAttention(sparse_bank(self.D, q, k, values, self.dtype, alpha=alpha, c=c))

    def clean_layer(self, box: float | None) -> MLP:
        w = [(self.L.index("w", i), box, 1.0) for i in range(self.d)] if box is not None else []
        scratch = [(self.L.index(s), 0.0, 1.0) for s in ("p", "a", "g")]
        return self._pairs_mlp(w + scratch)


class ConvexGD(PromptModel):
    """The transformer of :func:`convex_gd`; see :mod:`icgd.constructions.bai`."""

    def __init__(self, d_in: int, *, loss: str, eta: float, steps: int, lam: float, knots: int,
                 fit_range: float, box: float | None, dtype: torch.dtype):
        layout = bai_layout(d_in)
        b = _ConvexBuilder(layout, dtype)
        fwd = b.forward_layer()
        block, roles = [fwd], ["fwd"]
        fit = None
        if loss == "logistic":
            fit = clamped(interpolant(get_activation("sigmoid").fn, fit_range, knots, dtype))
            block.append(b.sigmoid_layer(fit))
            roles.append("sigmoid")
        block.append(b.loss_layer("a" if loss == "logistic" else "p"))
        roles.append("loss")
        if lam > 0:
            block.append(b.decay_layer(eta * lam))
            roles.append("decay")
        step = b.step_layer()
        block += [step, b.clean_layer(box)]
        roles += ["step", "clean"]
        super().__init__(block * steps + [fwd], layout, d_in=d_in, d_out=1, answer="p", sign=1.0, dtype=dtype,
                         roles=roles * steps + ["readout"])
        self.loss, self.eta, self.steps, self.lam, self.knots, self.box = loss, eta, steps, lam, knots, box
        self.fit, self.fit_range, self.block_size = fit, fit_range, len(block)
        step.coefficients = StepScale(layout, eta)  # −ηT/(2n) per call

    def check_prompt(self, X, Y, x_query):
        X, Y, xq, single = super().check_prompt(X, Y, x_query)
        if self.loss == "logistic" and not bool(((Y == 0) | (Y == 1)).all()):
            raise ShapeError("the logistic loss needs labels y in {0, 1}; map other labels first "
                             "(e.g. y = (label == positive_class))")
        return X, Y, xq, single

    def tokens_for(self, X, Y, x_query, w0=None) -> tuple[torch.Tensor, bool]:
        """Tokens of the prompt with ``w = w0`` (zero by default) in every token."""
        X, Y, xq, single = self.check_prompt(X, Y, x_query)
        w = torch.zeros(X.shape[0], self.d_in, dtype=self.dtype) if w0 is None else w0
        w, _ = batched(as_float_tensor(w, "w0", self.dtype), "w0", 1)
        if w.shape[-1] != self.d_in or w.shape[0] not in (1, X.shape[0]):
            raise ShapeError(f"w0 must be ({self.d_in},) or ({X.shape[0]}, {self.d_in}), got {tuple(w.shape)}")
        convex_gd_memory(self.d_in, knots=self.knots, loss=self.loss, dtype=self.dtype, batch=X.shape[0],
                         tokens=X.shape[1] + xq.shape[1], build=False,
                         what=f"a forward pass of {X.shape[0]} prompt(s) × {X.shape[1] + xq.shape[1]} tokens"
                         ).check(self.device())
        tokens = pack_prompt(self.layout, X, Y, xq, w=w.expand(X.shape[0], -1))
        return tokens.to(self.device()), single

    @torch.inference_mode()
    def trace(self, X, Y, w0=None) -> torch.Tensor:
        """``w`` read after every GD block, ``(B, steps + 1, d_in)`` (index 0 is w0)."""
        tokens, single = self.tokens_for(X, Y, _no_queries(X), w0)
        ws = [tokens[:, 0, self.layout.slice("w")]]
        h = tokens
        for s in range(self.steps):
            h = self(h, s * self.block_size, (s + 1) * self.block_size)
            ws.append(h[:, 0, self.layout.slice("w")])
        out = torch.stack(ws, dim=1)
        return out[0] if single else out

    def predict(self, X, Y, x_query, w0=None, *, grad: bool = False) -> torch.Tensor:
        """``w_Lᵀ x_q`` for every query (the logit for the logistic loss), ``(B, m, 1)``."""
        return super().predict(X, Y, x_query, grad=grad, w0=w0)

    def prefix_predictions(self, X, Y, w0=None) -> torch.Tensor:
        """Row i: the prediction at ``x_i`` from the pairs ``0 … i−1`` and the start `w0`, ``(B, n, 1)``. Row 0
        (empty context, which the tokens cannot hold: the loss has no term) is ``w0ᵀ x_0``, the start's own
        prediction (0 for the default w0 = 0)."""
        return super().prefix_predictions(X, Y, w0=w0)

    def empty_prediction(self, x_query: torch.Tensor, w0=None) -> torch.Tensor:
        """``w0ᵀ x_q`` at batched queries ``(B, m, d_in)`` (0 for w0 = None): ``(B, m, 1)``."""
        if w0 is None:
            return x_query.new_zeros(*x_query.shape[:2], 1)
        w, _ = batched(as_float_tensor(w0, "w0", x_query.dtype).to(x_query.device), "w0", 1)
        return x_query @ w.expand(x_query.shape[0], -1)[..., None]


def convex_gd_memory(d_in: int, *, knots: int = 64, loss: str = "squared", dtype: torch.dtype = torch.float64,
                     batch: int = 0, tokens: int = 0, build: bool = True, what: str = "convex_gd") -> MemoryEstimate:
    """Bytes :func:`convex_gd` needs (parameters to within a small factor; the sigmoid MLP of the logistic loss
    has `knots` units and is built from dense (knots, D) matrices), without building anything."""
    s, D = _itemsize(dtype), 2 * d_in + 6
    K = knots if loss == "logistic" else 0
    params = _sparse_bytes(3 * K + 8 * (d_in + 3), s) + 2 * sparse_bank_bytes(1, d_in + 1, d_in, 2, 2, s)
    build_bytes = (2 * K * D * s + _sparse_bytes(3 * K, s)) if build else 0
    BT = max(0, batch) * max(0, tokens)
    acts = s * BT * (6 * D + 3 * K + 4 * d_in)
    return MemoryEstimate(what, {"params": params, "build": build_bytes, "activations": acts},
                          reduce="reduce d_in, knots, or the batch and prompt size")


def _no_queries(X) -> torch.Tensor:
    """An empty query set shaped like X."""
    return torch.as_tensor(X)[..., :0, :]


def convex_gd(d_in: int, *, loss: str = "squared", eta: float, steps: int, lam: float = 0.0, knots: int = 64,
              fit_range: float = LOGISTIC_RANGE, box: float | None = None,
              dtype: torch.dtype = torch.float64) -> ConvexGD:
    """A ReLU-attention transformer whose forward pass runs `steps` steps of GD from w = 0 (or a given w0) on
    ``(1/n) Σ_i ℓ(wᵀx_i, y_i) + (λ/2)‖w‖²`` for the squared loss ``ℓ = ½(p − y)²`` (exact) or the logistic loss
    ``ℓ = log(1 + eᵖ) − y p``, y ∈ {0, 1} (sigmoid fitted by `knots` ReLUs on [−fit_range, fit_range], clamped
    outside). Optional projection onto the box |w| ≤ `box`. See :mod:`icgd.constructions.bai`."""
    d_in, steps = positive_int(d_in, "d_in"), positive_int(steps, "steps")
    if loss not in LOSSES:
        raise SpecError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    convex_gd_memory(d_in, knots=positive_int(knots, "knots", minimum=2), loss=loss, dtype=check_dtype(dtype),
                     what=f"convex_gd(d_in={d_in}, knots={knots})").check()
    check_layers(f"convex_gd(steps={steps})", steps, 6, 1)
    return ConvexGD(d_in, loss=loss, eta=positive_float(eta, "eta"), steps=steps,
                    lam=positive_float(lam, "lam", allow_zero=True), knots=positive_int(knots, "knots", minimum=2),
                    fit_range=positive_float(fit_range, "fit_range"),
                    box=None if box is None else positive_float(box, "box"), dtype=check_dtype(dtype))
