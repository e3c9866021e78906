"""An explicit softmax-attention transformer whose forward pass runs L steps of projected gradient descent on an
N-layer network — the construction that Wu et al. (ICML 2025) leave open (their Theorem 2 only proves that one
exists).

**Token** (one row per prompt point): the ReLU construction's token (:func:`icgd.constructions.wu_layout`) with
three more scratch slots before ``one``::

    h_i = [ x | y | w | p̄ = (p1 … pN) | r̄′ | g | s̄ | w̃ | ms = (ms1 … msN) | mp = (mp1 … mpN) | one | t ]

``w̃ = (1 − t)·w`` is the weight vector on query tokens and 0 on context tokens; ``msj`` holds the token mean of
``sj`` and ``mpj`` the token mean of p̄(j−1) (``x`` for j = 1). Context tokens carry ``t = 1``, query tokens
``t = 0``; there are T = n + m tokens.

**Softmax attention** here is ``h_i + Σ_m Σ_s softmax_s(⟨Q_m h_i, K_m h_s⟩) V_m h_s`` over all T tokens, with no
1/√d and no 1/T (:class:`~icgd.layers.SparseSoftmaxAttention`, a :class:`~icgd.layers.SoftmaxAttention` stored as a
head bank).

Derivation
----------

*(a) The query tokens as a sink: the logistic function, exactly.* Let z_i = v_jk·p̄_i(j−1). A head with
query rows ``[a·p̄_i(j−1); 1]`` and key rows ``[w̃_jk(s); (b + ln(n/m))·(1 − t_s)]`` scores a context key 0 and a
query key ``a z_i + b + ln(n/m)`` — the same for all m queries, because w is replicated. With value
``V h_s = α(1 − t_s) + β t_s`` the output is

    m e^{a z_i + b + ln(n/m)} α + n β          n e^{a z_i + b} α + n β
    ───────────────────────────────────── = ────────────────────────── = β + (α − β)·logistic(a z_i + b),
        m e^{a z_i + b + ln(n/m)} + n            n e^{a z_i + b} + n

exactly, for every token i (context or query) and any number m ≥ 1 of queries. The queries are the *sink*: the only
keys that carry w. Sigmoid is one head (a = 1, b = 0, α = 1, β = 0); tanh(z) = 2·logistic(2z) − 1 is one head
(a = 2, α = 1, β = −1); softplus and gelu are fitted sums ``r̂(z) = b0 + Σ_u c_u logistic(a_u z + b_u)`` of `units`
heads (:func:`logistic_fit`, least squares on [−R_j, R_j]; the constant b0 is one uniform head), with a measured
error :attr:`LogisticFit.error`. The gate ``w̃ = (1 − t)·w`` that makes the queries special is one EWML head
(score ``⟨one, one − t⟩``, value w → w̃), exact.

*The role of n.* The n context keys each contribute e⁰ = 1 to the softmax denominator, so the sink keys carry
``+ln(n/m)``: n enters the weights only through this logarithm (and through the step's −ηT/(2n) below). Both
depend on the prompt, so the model sets them from the ``t`` slot on every call (all prompts of a batch share n and
m), as the ReLU construction does with its −ηT/(2n). The head bank stores ``b + ln(n/m)`` as the query scale of
the ``(1 − t)`` row block; ⟨αq, k⟩ = ⟨q, αk⟩, so this is the same as putting it in the key.

*(b) r′.* sigmoid: ``r′ = p(1 − p)``; tanh: ``1 − p²`` — one EWML head per unit on the p̄ just computed, exact.
softplus: ``r′ = logistic``, one sink head per unit, exact; gelu: a fitted sum of sink heads. An identity layer
(``output_activation=False``) has ``r(z) = z``, one EWML head per unit (``⟨p̄(j−1), v_jk⟩``, read from the token's
own w), and r′ = 1.

*(c) The GD step by linearised softmax.* Let s = s̄(j)[k] and p = p̄(j−1)[q], with s = 0 on queries (the loss
derivative is gated off them), σ = s − mean(s) and m_k = mean(σ^k) over the T tokens. Two heads with query
``±ε·one``, key ``s`` and value ``±(c/2ε) p`` give

    D(ε) = (c/2ε) Σ_s (softmax(εs)_s − softmax(−εs)_s) p_s = (c/T) Σ_s σ_s p_s + (c/T) ε² Σ_s κ(σ_s) p_s + O(ε⁴),

with κ(σ) = σ³/6 − m_2 σ/2 − m_3/6, because softmax(±εs)_s = (1 ± εσ_s + ε²(σ_s² − m_2)/2 ± ε³(…) + …)/T and the
even orders cancel in the difference. ``order=2`` uses this one pair per unit (error O(ε²)); ``order=4`` (the
default) adds a pair at ±2ε and takes the Richardson combination (4 D(ε) − D(2ε))/3, which cancels the ε² term
(error O(ε⁴)). With c = −ηT/(2n), the missing ``−η/(2n)·T·mean(s)·mean(p)`` (from ``Σ s p = Σ σ p + T s̄ p̄``) is
added by one uniform head (score 0) that writes the means ``ms = s̄`` and ``mp = p̄`` and one EWML layer with heads
``⟨ms_jk, one⟩·c·mp_j → w_jk``. Together: ``w ← w − η/(2n) Σ_i s̄_i(j)[k] p̄_i(j−1) = w − η ∇L_n(w)`` up to
O(ε^order) + round-off.

*The 1/ε growth.* The step's value weights are c/(2ε) ≈ ηT/(4nε) (order 2; 2/3·c/ε and c/(12ε) for order 4): they
grow as **1/ε** and amplify the round-off of the softmax weights, so the error vs ε is U-shaped,
``≈ A (ε|s|)^order + B u/(ε|s|)`` (u the unit round-off, |s| the size of the backprop deltas), with its minimum
near ε* ∝ u^{1/(order+1)}/|s|. ``eps=None`` picks :func:`auto_eps` = C·u^{1/(order+1)}/ρ, with ρ = sup|r′| standing
in for |s| (the deltas carry a factor r′ per layer) and C calibrated on random sigmoid and tanh tasks
(``docs/deep_gd_softmax.md``): order 4 gives ε ≈ 1.8e-3 (sigmoid) and 4.5e-4 (tanh) in float64, 0.10 and 0.025 in
float32.

*(d)* The loss derivative ``g = 2(p̄N − y)`` gated off the queries (MLP), the backprop EWMLs and the box projection
are those of the ReLU construction (:class:`~icgd.constructions.wu._Builder`); the projection MLP also erases every
scratch slot, w̃ and the means included (``z − relu(z) + relu(−z) = 0``, exactly). Nothing is zeroed outside a layer.

Layers and heads per GD step
----------------------------

2N + 6 layers; P = (N−1)K + d_out units; M = `units` for fitted activations; h = 2 (order 2) or 4 (order 4) heads
per unit in the step. Head counts are those the head banks store (``summary()``), zero-valued padding included.

====  =========  ===================  ===========================================================================
 #    role       layer                heads / width
====  =========  ===================  ===========================================================================
1     gate       EWML                 1 (w̃ = (1 − t) w)
2…    fwd j      softmax (sink)       out_j (sigmoid, tanh); (out_j + 1)·M (softplus, gelu: M per unit + the b0
                                      head, padded to M); identity: EWML, out_j
N+2   deriv      EWML or softmax      P EWML (sigmoid, tanh); P sink heads (softplus); (P + 1)·M (gelu)
N+3   loss       MLP                  width 2·d_out
…     back j     EWML (N layers)      out_j
2N+4  step       softmax              h·P pair heads + 1 uniform means head (+ h − 1 zero padding)
2N+5  mean       EWML                 P
2N+6  project    MLP                  2·D_w (box) + 2·(scratch coordinates)
====  =========  ===================  ===========================================================================

``readout=True`` appends the gate and the N fwd layers once more: the query tokens end with p̄(N) = f(w̄_L, x_q).
For sigmoid and tanh the head counts do not depend on the accuracy: the only approximation is the ε-term of (c).

**The query token.** Exactness of (a) needs at least one query token (the sink): :meth:`~ConstructedSoftmaxICGD.trace`
adds one at x = 0 (it changes nothing else: its loss derivative is gated to 0), and ``predict`` uses the real
queries — any number m ≥ 1 of them, with no mask: all query keys carry the same score, and ln(n/m) accounts for
their count, so a query sees the other queries' sink keys without harm.

**Relation to Wu et al.'s Theorem 2.** Theorem 2 proves, by universal approximation of the GD map by one
``FF ∘ Attn ∘ FF`` block (Kajitsuka & Sato's contextual mapping), that *some* softmax transformer with 4 layers per
step (FF, single-head softmax attention, FF, projection MLP) runs approximate GD, with no weights given (their
Remark 4; App. A.3 lists the explicit construction as open). This module is explicit: every weight is written down,
it uses 2N + 6 layers per step instead of 4, sparse multi-head softmax attention plus the EWML layers of Theorem 1
(softmax alone cannot multiply two token coordinates exactly), and its error is O(ε^order) + O(u/ε), measured,
instead of an unquantified κ. Theorem 2 assumes bounded parameters; here the step's value weights grow as 1/ε.

**Limitations.** relu networks are not supported (use :func:`~icgd.constructions.deep_gd`); softplus and gelu need
fit intervals (``box`` and ``x_bound``, or ``fit_range``), and :class:`~icgd.errors.FitRangeError` is raised if a
pre-activation leaves one; the prompt must contain at least one context token and one query token.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from icgd._checks import as_float_tensor, positive_float, positive_int
from icgd.constructions.base import StepScale, prompt_size
from icgd.constructions.wu import projection_guard
from icgd.constructions.wu import (_PY_ENTRY, _CHUNK, ConstructedICGD, _Builder, _itemsize, _range_index_bytes,
                                   _sparse_bytes,
                                   fit_ranges_from_box, per_layer_ranges, wu_layout)
from icgd.errors import ShapeError, SpecError
from icgd.layers import EWML, Transformer
from icgd.layers.attention import SparseSoftmaxAttention
from icgd.layers.heads import sparse_bank, sparse_bank_bytes
from icgd.memory import MemoryEstimate, check_layers
from icgd.nets import Activation, NetSpec, check_prompt, get_activation
from icgd.tokens import Layout

DEFAULT_UNITS = 64
# (τ/ε, ω) per head pair of the step: order 2 is one pair at ±ε; order 4 adds a pair at ±2ε with the Richardson
# weights (4/3, −1/3), which cancel the ε² term
RICHARDSON = {2: ((1.0, 1.0),), 4: ((1.0, 4.0 / 3.0), (2.0, -1.0 / 3.0))}
SUPPORTED = ("sigmoid", "tanh", "softplus", "gelu", "identity")
# eps = AUTO_EPS_FACTOR[order] · u^{1/(order+1)} / ρ (ρ = sup|r′|); calibrated by benchmarks/deep_gd_softmax_eps.py
AUTO_EPS_FACTOR = {2: 1.5, 4: 0.7}


def max_slope(spec: NetSpec) -> float:
    """ρ = max over the layers of sup_z |r′(z)|: 1/4 for sigmoid, 1 for tanh, softplus and identity, 1.13 for gelu.
    The backprop deltas s carry a factor r′ per layer, so ρ sets their scale."""
    z = torch.linspace(-30.0, 30.0, 60001, dtype=torch.float64)
    return max(float(spec.layer_act(j).deriv(z).abs().max()) for j in range(1, spec.depth + 1))


def auto_eps(dtype: torch.dtype, order: int = 4, spec: NetSpec | None = None) -> float:
    """The default ε of the step's head pairs: ``AUTO_EPS_FACTOR[order] · u^{1/(order+1)} / ρ``, u the unit
    round-off ``torch.finfo(dtype).eps / 2`` and ρ = :func:`max_slope` of `spec` (1/4, i.e. sigmoid, without one).

    The step's error is ≈ A (ε|s|)^order (truncation) + B u/(ε|s|) (round-off amplified by the 1/ε value weights),
    minimal at ε* ∝ u^{1/(order+1)}/|s|; the size |s| of the backprop deltas scales with ρ (and with the data, which
    the weights cannot know). The factors are calibrated on random sigmoid and tanh tasks (``docs/deep_gd_softmax.md``):
    order 4 gives ε ≈ 1.8e-3 (sigmoid) and 4.5e-4 (tanh) in float64, 0.10 and 0.025 in float32."""
    if dtype not in (torch.float32, torch.float64):
        raise SpecError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if order not in RICHARDSON:
        raise SpecError(f"order must be one of {sorted(RICHARDSON)}, got {order!r}")
    u = torch.finfo(dtype).eps / 2
    rho = 0.25 if spec is None else max_slope(spec)
    return AUTO_EPS_FACTOR[order] * u ** (1.0 / (order + 1)) / rho


# --------------------------------------------------------------------------------------------- logistic fits


@dataclass(frozen=True)
class LogisticFit:
    """``r̂(t) = b0 + Σ_u c_u logistic(a_u t + b_u)``, each of `a`, `b`, `c` a ``(M,)`` float64 tensor, valid on
    ``[−R, R]`` (R = inf for an exact identity); `error` is the measured ``max |r̂ − r|`` there (0 when exact)."""

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    b0: float
    R: float
    error: float

    @property
    def units(self) -> int:
        return self.a.shape[0]

    @property
    def exact(self) -> bool:
        return self.error == 0.0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        return self.b0 + (self.c * torch.sigmoid(t[..., None] * self.a + self.b)).sum(-1)

    def sup_abs(self, R: float | None = None) -> float:
        """max |r̂| on [−R, R] (default: the fit interval), on a fine grid."""
        R = self.R if R is None else R
        return float(self(torch.linspace(-R, R, 8193, dtype=torch.float64)).abs().max())


def _exact(a: float, c: float, b0: float) -> LogisticFit:
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return LogisticFit(one(a), one(0.0), one(c), b0, math.inf, 0.0)


SIGMOID = _exact(1.0, 1.0, 0.0)  # logistic(z)
TANH = _exact(2.0, 2.0, -1.0)  # 2·logistic(2z) − 1
CONSTANT_ONE = _exact(0.0, 0.0, 1.0)  # r′ of an identity layer


def _lstsq_fit(f: Callable, R: float, units: int, kappa: float, reach: float) -> LogisticFit | None:
    """Least-squares ``b0, c`` for `units` logistic steps of slope ``kappa/h`` centred on an equispaced grid of
    spacing h that covers [−R, R] plus `reach` step widths (h/kappa) on either side."""
    h = 2.0 * R / ((units - 1) - 2.0 * reach / kappa)
    if h <= 0:
        return None
    span = R + reach * h / kappa
    centres = torch.linspace(-span, span, units, dtype=torch.float64)
    a = torch.full((units,), kappa / h, dtype=torch.float64)
    b = -a * centres

    def design(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones(len(t), 1, dtype=t.dtype), torch.sigmoid(t[:, None] * a + b)], dim=1)

    t = torch.linspace(-R, R, 40 * units + 1, dtype=torch.float64)
    sol = torch.linalg.lstsq(design(t), f(t)[:, None], driver="gelsd").solution[:, 0]
    fine = torch.linspace(-R, R, 8001, dtype=torch.float64)
    error = float((design(fine) @ sol - f(fine)).abs().max())
    return LogisticFit(a, b, sol[1:].clone(), float(sol[0]), R, error)


def logistic_fit(f: Callable[[torch.Tensor], torch.Tensor], R: float, units: int,
                 dtype: torch.dtype = torch.float64) -> LogisticFit:
    """A sum of `units` logistic functions (plus a constant) fitting `f` on [−R, R] by least squares.

    Slopes and centres are equispaced steps; their width (κ ∈ {0.5, 1, 2} steps per spacing) and how far the grid
    reaches past ±R are chosen to minimise ``error + 4u·Σ|c|`` — the fit error plus the round-off of evaluating the
    sum in `dtype` (u its unit round-off), so float32 gets a better conditioned fit. The error falls fast with
    units/R for the smooth activations: softplus on [−8, 8] is ~1e-10 at 64 units, ~1e-6 on [−20, 20]."""
    if isinstance(units, bool) or not isinstance(units, int) or units < 2:
        raise SpecError(f"a logistic fit needs an integer units >= 2, got {units!r}; pass units=64 or more")
    if not R > 0 or not math.isfinite(R):
        raise SpecError(f"the fit interval half-width R must be a finite number > 0, got {R}")
    u = torch.finfo(dtype).eps / 2
    best, best_cost = None, math.inf
    for kappa in (0.5, 1.0, 2.0):
        for reach in (1.0, 2.0, 4.0):
            fit = _lstsq_fit(f, R, units, kappa, reach)
            if fit is None:
                continue
            cost = fit.error + 4 * u * float(fit.c.abs().sum() + abs(fit.b0))
            if cost < best_cost:
                best, best_cost = fit, cost
    if best is None:
        raise SpecError(f"cannot fit {units} logistic units on [-{R}, {R}]; pass more units")
    return best


@functools.lru_cache(maxsize=256)
def _activation_fit(name: str, derivative: bool, R: float, units: int, dtype: torch.dtype) -> LogisticFit:
    """:func:`logistic_fit` of a named activation (or its derivative), cached: models of the same shape share it."""
    act = get_activation(name)
    return logistic_fit(act.deriv if derivative else act.fn, R, units, dtype)


def activation_logistic_fits(act: Activation, R: float, units: int, dtype: torch.dtype = torch.float64
                             ) -> tuple[LogisticFit | None, LogisticFit | None]:
    """``(fit of r, fit of r′)`` as sums of logistic units for the sink heads; ``None`` where a layer is not a sink
    layer: r of identity (an EWML layer computes z exactly) and r′ of sigmoid and tanh (EWML from p̄)."""
    name = act.name
    if name == "sigmoid":
        return SIGMOID, None
    if name == "tanh":
        return TANH, None
    if name == "identity":
        return None, CONSTANT_ONE
    if name == "softplus":
        return _activation_fit(name, False, R, units, dtype), SIGMOID
    if name == "gelu":
        return _activation_fit(name, False, R, units, dtype), _activation_fit(name, True, R, units, dtype)
    raise SpecError(f"deep_gd_softmax supports sigmoid, tanh, softplus, gelu and identity, not {name!r}; "
                    f"use icgd.constructions.deep_gd (ReLU attention) for relu networks")


# --------------------------------------------------------------------------------------------- memory


def _sink_units(name: str, units: int) -> tuple[int | None, int | None]:
    """Logistic units of the sink heads for r and r′ (None: the layer is an EWML layer, not a sink)."""
    return {"sigmoid": (1, None), "tanh": (1, None), "identity": (None, 1), "softplus": (units, 1),
            "gelu": (units, units)}[name]


def deep_gd_softmax_memory(spec: NetSpec, *, units: int = DEFAULT_UNITS, order: int = 4, box: float | None = None,
                           dtype: torch.dtype = torch.float64, batch: int = 0, tokens: int = 0, build: bool = True,
                           what: str = "deep_gd_softmax") -> MemoryEstimate:
    """Bytes :func:`deep_gd_softmax` needs, without building anything (parts as in
    :func:`~icgd.constructions.wu.deep_gd_memory`; the parameters to within a few per cent)."""
    s, N, shapes = _itemsize(dtype), spec.depth, spec.shapes
    outs, ins = [o for o, _ in shapes], [i for _, i in shapes]
    P, Dw, d_out, S_in = spec.num_units, spec.num_params, spec.d_out, sum(ins)
    D = spec.d_in + 2 * d_out + Dw + 3 * P + 2 + Dw + P + S_in
    imax = max(ins)
    fit = [_sink_units(spec.layer_act(j).name, units) for j in range(1, N + 1)]
    params = sparse_bank_bytes(1, 2, Dw, 1, 1, s)  # gate
    for j in range(N):
        if fit[j][0] is None:
            params += sparse_bank_bytes(outs[j], ins[j], 1, 1, 1, s)
        else:
            params += (sparse_bank_bytes(outs[j] + 1, ins[j] + 2, 2, 2, fit[j][0], s)
                       + 2 * (outs[j] + 1) * fit[j][0] * 2 * s)
    Hd = [f[1] for f in fit if f[1] is not None]
    if all(spec.layer_act(j).name in ("sigmoid", "tanh", "identity") for j in range(1, N + 1)):
        params += sparse_bank_bytes(P, 2, 1, 1, 1, s)
    else:
        params += sparse_bank_bytes(P + 1, imax + 2, 2, 2, max(Hd), s) + 4 * (P + 1) * max(Hd) * s
    params += sparse_bank_bytes(d_out, 1, 1, 1, 1, s) + sum(sparse_bank_bytes(outs[j - 1], outs[j], 1, 1, 1, s)
                                                      for j in range(1, N))  # back
    H = 2 * len(RICHARDSON[order])
    params += sparse_bank_bytes(P + 1, 1, max(imax, P + S_in), 1, H, s) + 2 * (P + 1) * H * s  # step
    params += sparse_bank_bytes(P, 1, imax, 1, 1, s)  # mean
    params += _range_index_bytes(spec, s)
    C = (Dw if box is not None else 0) + 3 * P + d_out + Dw + P + S_in
    params += _sparse_bytes(10 * d_out, s) + _sparse_bytes(4 * C + (2 * Dw if box is not None else 0), s)
    entries = max(P * (2 * imax + 5), (P + 1) * (imax + 3) + P + S_in, Dw)
    build_bytes = max(_PY_ENTRY * entries, 3 * _sparse_bytes(4 * C + 2 * Dw, s)) if build else 0
    BT = max(0, batch) * max(0, tokens)
    Hmax = max([H, *(f[0] or 1 for f in fit), *Hd])
    per_token = max(2 * P * (imax + 2) + 2 * P, 3 * (P + 1) * max(imax, P + S_in), 2 * D + 8 * C)
    acts = s * (BT * (3 * D + per_token) + 3 * min(_CHUNK, BT * (P + 1) * Hmax)) if BT else 0
    return MemoryEstimate(what, {"params": params, "build": build_bytes, "activations": acts},
                          reduce="reduce width or depth (D_w grows like width²·depth), units, or the batch and "
                                 "prompt size")


# --------------------------------------------------------------------------------------------- layout, builder


def softmax_layout(spec: NetSpec) -> Layout:
    """:func:`~icgd.constructions.wu_layout` plus the slots ``wt`` (w̃), ``ms1 … msN`` (means of s̄(j)) and
    ``mp1 … mpN`` (means of p̄(j−1)) before ``one``."""
    base = wu_layout(spec)
    N = spec.depth
    extra = [("wt", spec.num_params)]
    extra += [(f"ms{j}", o) for j, (o, _) in enumerate(spec.shapes, start=1)]
    extra += [(f"mp{j}", i) for j, (_, i) in enumerate(spec.shapes, start=1)]
    slots = list(base.slots)
    at = [name for name, _ in slots].index("one")
    groups = dict(base.groups)
    groups.update({name: tuple(f"{name}{j}" for j in range(1, N + 1)) for name in ("ms", "mp")})
    return Layout(slots[:at] + extra + slots[at:], groups)


@dataclass
class _Sink:
    """A sink layer and what its query scales become for a prompt: ``alpha = base + ln(n/m)·mask``."""

    layer: SparseSoftmaxAttention
    base: torch.Tensor
    mask: torch.Tensor


class _SoftmaxBuilder(_Builder):
    """The layers of one GD step of the softmax construction (the loss, backprop and projection layers are the
    ReLU construction's)."""

    def units(self) -> list[tuple[int, int]]:
        return [(j, k) for j in range(1, self.spec.depth + 1) for k in range(self.spec.shapes[j - 1][0])]

    def wt(self, j: int, k: int, q: int) -> int:
        """Coordinate of w̃ = (1 − t)·V_j[k, q]."""
        return self.L.slice("wt").start + self.spec.weight_index(j, k, q)

    def p(self, j: int, k: int) -> int:
        return self.L.index(f"p{j}", k)

    def gate_layer(self) -> EWML:
        """``w̃ = (1 − t)·w``: one head, score ⟨[1, −1]·one, [one, t]⟩ = 1 − t, value w → w̃ (exact)."""
        w, wt = self.L.slice("w"), self.L.slice("wt")
        values = [[(w.start + i, wt.start + i, 1.0) for i in range(w.stop - w.start)]]
        q = [[(self.one, 1.0), (self.one, -1.0)]]
        k = [[(self.one, 1.0), (self.t, 1.0)]]
        return EWML(sparse_bank(self.D, q, k, values, self.dtype))

    def sink_rows(self, j: int, k: int) -> tuple[list, list, list]:
        """Query rows ``[p̄(j−1); one; −one]``, key rows ``[w̃_jk; one; t]`` and blocks ``[0 … 0, 1, 1]``: block 0
        scores z = v_jk·p̄(j−1) on query keys and 0 on context keys, block 1 scores 1 − t_s."""
        n_in = self.spec.shapes[j - 1][1]
        q = [(self.prev(j, i), 1.0) for i in range(n_in)] + [(self.one, 1.0), (self.one, -1.0)]
        k_ = [(self.wt(j, k, i), 1.0) for i in range(n_in)] + [(self.one, 1.0), (self.t, 1.0)]
        return q, k_, [0] * n_in + [1, 1]

    def sink_layer(self, units: Sequence[tuple[int, int, LogisticFit, int]]) -> _Sink:
        """Softmax heads writing ``r̂(v_jk·p̄(j−1))`` to coordinate `dst` for each ``(j, k, fit, dst)``.

        Head u of a unit has query scale ``(a_u, b_u + ln(n/m))`` on blocks (0, 1) and value ``c_u (1 − t)``, so it
        adds ``c_u logistic(a_u z + b_u)``; a one-unit fit folds b0 into its value (``(c + b0)(1 − t) + b0·t``),
        longer fits share one uniform head (score 0) that adds every b0."""
        H = max(fit.units for _, _, fit, _ in units)
        q, k_, blocks, values, offsets = [], [], [], [], []
        G = len(units) + any(fit.units > 1 and fit.b0 for _, _, fit, _ in units)
        alpha = torch.zeros(G, H, 2, dtype=torch.float64)
        mask = torch.zeros(G, H, 2, dtype=torch.float64)
        c = torch.zeros(G, H, dtype=torch.float64)
        for g, (j, k, fit, dst) in enumerate(units):
            rq, rk, bl = self.sink_rows(j, k)
            q.append(rq)
            k_.append(rk)
            blocks.append(bl)
            M = fit.units
            alpha[g, :M, 0], alpha[g, :M, 1], mask[g, :M, 1] = fit.a, fit.b, 1.0
            if M == 1:
                c0 = float(fit.c[0])
                values.append([(self.one, dst, c0 + fit.b0), (self.t, dst, -c0)])
                c[g, 0] = 1.0
            else:
                values.append([(self.one, dst, 1.0), (self.t, dst, -1.0)])
                c[g, :M] = fit.c
                if fit.b0:
                    offsets.append((self.one, dst, fit.b0))
        if offsets:  # zero rows: score 0, uniform weights summing to 1
            q.append([])
            k_.append([])
            blocks.append([])
            values.append(offsets)
            c[-1, 0] = 1.0
        alpha, mask, c = (x.to(self.dtype) for x in (alpha, mask, c))
        bank = sparse_bank(self.D, q, k_, values, self.dtype, alpha=alpha.clone(), c=c, block=blocks)
        return _Sink(SparseSoftmaxAttention(bank), alpha, mask)

    def linear_layer(self, j: int) -> EWML:
        """An identity layer: ``p̄(j)[k] = ⟨p̄(j−1), v_jk⟩`` (the token's own w), one EWML head per unit."""
        n_in = self.spec.shapes[j - 1][1]
        q = [[(self.prev(j, i), 1.0) for i in range(n_in)] for _ in range(self.spec.shapes[j - 1][0])]
        k_ = [[(self.w(j, k, i), 1.0) for i in range(n_in)] for k in range(self.spec.shapes[j - 1][0])]
        values = [[(self.one, self.p(j, k), 1.0)] for k in range(self.spec.shapes[j - 1][0])]
        return EWML(sparse_bank(self.D, q, k_, values, self.dtype))

    def fwd_layer(self, j: int, fit: LogisticFit | None) -> SparseSoftmaxAttention | EWML | _Sink:
        if fit is None:
            return self.linear_layer(j)
        return self.sink_layer([(j, k, fit, self.p(j, k)) for k in range(self.spec.shapes[j - 1][0])])

    def product_deriv_layer(self) -> EWML:
        """r′ from p̄ by EWML, exactly: sigmoid ``p − p·p``, tanh ``1 − p·p``, identity ``1``."""
        q, k_, values = [], [], []
        for j, k in self.units():
            p, name = self.p(j, k), self.spec.layer_act(j).name
            rows = {"sigmoid": ([(p, 1.0), (p, -1.0)], [(self.one, 1.0), (p, 1.0)]),
                    "tanh": ([(self.one, 1.0), (p, -1.0)], [(self.one, 1.0), (p, 1.0)]),
                    "identity": ([(self.one, 1.0)], [(self.one, 1.0)])}[name]
            q.append(rows[0])
            k_.append(rows[1])
            values.append([(self.one, self.L.index(f"r{j}", k), 1.0)])
        return EWML(sparse_bank(self.D, q, k_, values, self.dtype))

    def sink_deriv_layer(self, dfits: Sequence[LogisticFit]) -> _Sink:
        return self.sink_layer([(j, k, dfits[j - 1], self.L.index(f"r{j}", k)) for j, k in self.units()])

    def pair_step_layer(self, eps: float, order: int) -> tuple[SparseSoftmaxAttention, torch.Tensor, torch.Tensor]:
        """Head pairs (j, k, ±τ): query ``±τ·one``, key ``s̄(j)[k]``, value ``±ω/(2τ)·p̄(j−1) → w_jk`` (times
        −ηT/(2n), set per prompt) for each ``(τ/ε, ω)`` of ``RICHARDSON[order]``, and one uniform head writing the
        means ``s̄(j)[k] → ms``, ``p̄(j−1) → mp``.

        Returns the layer, the per-prompt part of its value scales (``±ω/(2τ)``) and the fixed part."""
        units = self.units()
        q = [[(self.one, 1.0)] for _ in units] + [[]]
        k_ = [[(self.L.index(f"s{j}", k), 1.0)] for j, k in units] + [[]]
        values = [[(self.prev(j, i), self.w(j, k, i), 1.0) for i in range(self.spec.shapes[j - 1][1])]
                  for j, k in units]
        means = [(self.L.index(f"s{j}", k), self.L.index(f"ms{j}", k), 1.0) for j, k in units]
        means += [(self.prev(j, i), self.L.index(f"mp{j}", i), 1.0)
                  for j in range(1, self.spec.depth + 1) for i in range(self.spec.shapes[j - 1][1])]
        values.append(means)
        temps, weights = [], []
        for mult, omega in RICHARDSON[order]:
            tau = mult * eps
            temps += [tau, -tau]
            weights += [omega / (2 * tau), -omega / (2 * tau)]
        G, H = len(units) + 1, len(temps)
        alpha = torch.zeros(G, H, 1, dtype=torch.float64)
        scaled = torch.zeros(G, H, dtype=torch.float64)
        alpha[:-1, :, 0] = torch.tensor(temps, dtype=torch.float64)
        scaled[:-1] = torch.tensor(weights, dtype=torch.float64)
        fixed = torch.zeros(G, H, dtype=torch.float64)
        fixed[-1, 0] = 1.0
        alpha, scaled, fixed = (x.to(self.dtype) for x in (alpha, scaled, fixed))
        bank = sparse_bank(self.D, q, k_, values, self.dtype, alpha=alpha, c=fixed + scaled)
        return SparseSoftmaxAttention(bank), scaled, fixed

    def mean_layer(self) -> EWML:
        """``w_jk += c·ms_jk·mp_j`` (c = −ηT/(2n), set per prompt): one EWML head per unit."""
        units = self.units()
        q = [[(self.L.index(f"ms{j}", k), 1.0)] for j, k in units]
        k_ = [[(self.one, 1.0)] for _ in units]
        values = [[(self.L.index(f"mp{j}", i), self.w(j, k, i), 1.0) for i in range(self.spec.shapes[j - 1][1])]
                  for j, k in units]
        return EWML(sparse_bank(self.D, q, k_, values, self.dtype))

    def project_coords(self, box: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ReLU construction's projection (box clip, erase p̄, r̄′, g, s̄) plus units erasing w̃, ms and mp:
        ``z ← z − relu(z) + relu(−z) = 0``."""
        coords, bounds = super().project_coords(box)
        extra = torch.cat([torch.arange(self.L.slice(n).start, self.L.slice(n).stop) for n in ("wt", "ms", "mp")])
        return torch.cat([coords, extra]), torch.cat([bounds, torch.zeros(extra.numel(), dtype=torch.float64)])


# --------------------------------------------------------------------------------------------- the model


def _checked_size(layout: Layout, h: torch.Tensor) -> tuple[int, int]:
    """``(n, T)`` of the prompt (:func:`~icgd.constructions.base.prompt_size`), with at least one query token."""
    n, T = prompt_size(layout, h)
    if T - n < 1:
        raise ShapeError("the softmax construction needs at least one query token (t = 0) as the sink of its "
                         "forward heads; pass x_query (trace adds one itself)")
    return n, T


class _SinkShift(nn.Module):
    """The sink heads' query scales ``alpha = base + ln(n/m) · mask`` for n context and m query tokens."""

    def __init__(self, layout: Layout, base: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.layout = layout
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, h: torch.Tensor, bank) -> dict[str, torch.Tensor]:
        n, T = _checked_size(self.layout, h)
        return {"alpha": self.base + math.log(n / (T - n)) * self.mask}


class _MeanScale(nn.Module):
    """The mean layer's value coefficients ``−ηT/(2n)`` for n context tokens out of T."""

    def __init__(self, layout: Layout, eta: float):
        super().__init__()
        self.layout, self.eta = layout, eta

    def forward(self, h: torch.Tensor, bank) -> dict[str, torch.Tensor]:
        n, T = _checked_size(self.layout, h)
        return {"c": torch.full_like(bank.c, -self.eta * T / (2.0 * n))}


class ConstructedSoftmaxICGD(ConstructedICGD):
    """The transformer built by :func:`deep_gd_softmax`: softmax attention, MLP and EWML layers only. Gradient
    descent happens only inside its layers.

    It shares the prompt handling, range checks, read-out and summaries of :class:`ConstructedICGD` (same API:
    ``trace``, ``predict``, ``summary``, ``block_summary``, ``layers``) and builds its own layers."""

    def __init__(self, spec: NetSpec, *, eta: float, steps: int, box: float | None, eps: float, order: int,
                 units: int, fit_ranges: list[float], x_bound: float | None, readout: bool, dtype: torch.dtype):
        layout = softmax_layout(spec)
        b = _SoftmaxBuilder(spec, layout, dtype)
        N = spec.depth
        fits = [activation_logistic_fits(spec.layer_act(j), fit_ranges[j - 1], units, dtype)
                for j in range(1, N + 1)]
        sinks: list[_Sink] = []

        def module(layer):
            if isinstance(layer, _Sink):
                sinks.append(layer)
                return layer.layer
            return layer

        gate = b.gate_layer()
        fwd = [module(b.fwd_layer(j, fits[j - 1][0])) for j in range(1, N + 1)]
        if all(f[1] is None or f[1] is CONSTANT_ONE for f in fits):
            deriv = b.product_deriv_layer()
        else:
            deriv = module(b.sink_deriv_layer([f[1] for f in fits]))
        step, scaled, fixed = b.pair_step_layer(eps, order)
        mean = b.mean_layer()
        R3 = 2.0 * (2.0 * _output_bound(spec, fits[-1][0], fit_ranges[-1]) + 1.0)
        block = [gate, *fwd, deriv, b.loss_layer(R3), *[b.back_layer(j) for j in range(N, 0, -1)], step, mean,
                 b.project_layer(box)]
        roles = (["gate"] + [f"fwd {j}" for j in range(1, N + 1)] + ["deriv", "loss"]
                 + [f"back {j}" for j in range(N, 0, -1)] + ["step", "mean", "project"])
        head = [gate, *fwd]
        if box is not None:
            block[-1].register_forward_pre_hook(projection_guard(layout, box, dtype))
        Transformer.__init__(self, block * steps + (head if readout else []), dim=layout.dim)
        self.spec, self.layout, self.eta, self.steps, self.box = spec, layout, eta, steps, box
        self.eps, self.order, self.units, self.fit_ranges = eps, order, units, fit_ranges
        self.x_bound, self.y_bound = x_bound, None
        self.readout, self.dtype, self.R3, self.fits = readout, dtype, R3, fits
        self.block_size = len(block)
        self.roles = roles * steps + (["readout gate"] + [f"readout {j}" for j in range(1, N + 1)] if readout else [])
        for s in sinks:  # the sink heads' ln(n/m), m = T − n query tokens, per call
            s.layer.coefficients = _SinkShift(layout, s.base, s.mask)
        step.coefficients = StepScale(layout, eta, scaled, fixed)  # ±(−ηT/(2n))/(2ε) per call
        mean.coefficients = _MeanScale(layout, eta)  # −ηT/(2n) per call
        self.register_buffer("_step_sign", scaled, persistent=False)  # device marker
        self._preactivation_index(b)

    def _check_memory(self, batch: int, tokens: int) -> None:
        deep_gd_softmax_memory(self.spec, units=self.units, order=self.order, box=self.box, dtype=self.dtype,
                               batch=batch, tokens=tokens, build=False,
                               what=f"a forward pass of {batch} prompt(s) × {tokens} tokens"
                               ).check(self._step_sign.device)

    def trace(self, X, Y, w0=None) -> torch.Tensor:
        """Weights read from the ``w`` slot after every GD block, ``(B, steps+1, D_w)`` (index 0 = `w0`). One query
        token at x = 0 is added as the sink of the forward heads; it does not enter the gradient."""
        X, Y, w0, single = check_prompt(self.spec, X, Y, self._initial(w0), self.dtype)
        tokens, _ = self.tokens_for(X, Y, w0, X.new_zeros(X.shape[0], 1, self.spec.d_in))
        _, ws = self._run(tokens, record=True)
        out = torch.stack(ws, dim=1)
        return out[0] if single else out

    def predict(self, X, Y, x_query, w0=None) -> torch.Tensor:
        """f(w̄_L, x_query) read from the query tokens' p̄(N) slot after the read-out layers, ``(B, m, d_out)``."""
        X = as_float_tensor(X, "X", self.dtype)
        return super().predict(X, Y, x_query, w0)


def _output_bound(spec: NetSpec, fit: LogisticFit | None, R: float) -> float:
    """A bound on |p̄(N)| on the query token, for the loss layer's gate: 1 for sigmoid and tanh, sup |r̂| on the fit
    interval for a fitted activation, R_N for an identity output layer."""
    if fit is None:
        return R
    if fit.exact:
        return 1.0
    return fit.sup_abs()


def _fit_ranges(spec: NetSpec, box: float | None, x_bound: float | None,
                fit_range: float | Sequence[float] | None) -> list[float]:
    """Per-layer intervals: needed only by fitted activations (softplus, gelu) and an identity output layer (the
    loss gate's bound); ``inf`` for the exact layers."""
    needs = [spec.layer_act(j).name in ("softplus", "gelu", "identity") for j in range(1, spec.depth + 1)]
    if fit_range is not None:
        ranges = per_layer_ranges(spec, fit_range)
    elif box is not None and x_bound is not None:
        ranges = fit_ranges_from_box(spec, box, x_bound)
    elif any(needs):
        raise SpecError(f"{spec.activation} layers (and an identity output layer) need fit intervals: pass box and "
                        f"x_bound (a-priori bound), or fit_range (e.g. from "
                        f"icgd.constructions.fit_ranges_from_data)")
    else:
        ranges = [math.inf] * spec.depth
    return [R if need else math.inf for R, need in zip(ranges, needs)]


def deep_gd_softmax(spec: NetSpec, *, eta: float, steps: int, box: float | None = None, eps: float | None = None,
                    x_bound: float | None = None, readout: bool = True, dtype: torch.dtype = torch.float64,
                    order: int = 4, units: int = DEFAULT_UNITS, fit_range: float | Sequence[float] | None = None
                    ) -> ConstructedSoftmaxICGD:
    """An explicit (2N+6)·steps-layer transformer of softmax attention, MLP and EWML layers (+ N+1 read-out layers)
    whose forward pass runs ``w ← clip(w − η ∇L_n(w), −box, box)``, ``L_n(w) = 1/(2n) Σ_i ‖f(w, x_i) − y_i‖²``.

    `eps`: temperature of the step's head pairs, error O(eps^order) + O(u/eps); ``None`` (the default) =
    :func:`auto_eps` for `dtype`, `order` and the activation (order 4: 1.8e-3 for sigmoid, 4.5e-4 for tanh in
    float64; 0.10 and 0.025 in float32); any number in (0, 1) is accepted — a fixed 1e-3 is within a factor 2 of
    the automatic one in float64. `order`: 4 = head pairs at ±eps and ±2eps with
    Richardson weights (error O(eps⁴)), 2 = one pair at ±eps (O(eps²)). `units`: logistic units per fitted
    activation (softplus, gelu); their intervals come from `fit_range` (one number or one per layer) or a priori
    from `box` and `x_bound`. sigmoid and tanh are exact and need no interval. See the module docstring for the
    derivation and the layers.
    """
    if not isinstance(spec, NetSpec):
        raise SpecError(f"spec must be an icgd.nets.NetSpec, got {type(spec).__name__}")
    if spec.activation not in SUPPORTED:
        raise SpecError(f"deep_gd_softmax supports {', '.join(SUPPORTED)} networks, not {spec.activation!r}; use "
                        f"icgd.constructions.deep_gd (ReLU attention) for relu networks")
    eta = positive_float(eta, "eta")
    steps = positive_int(steps, "steps", minimum=0)
    units = positive_int(units, "units", minimum=2)
    box = None if box is None else positive_float(box, "box")
    x_bound = None if x_bound is None else positive_float(x_bound, "x_bound")
    if dtype not in (torch.float32, torch.float64):
        raise SpecError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if isinstance(order, bool) or order not in RICHARDSON:
        raise SpecError(f"order must be 2 (one head pair ±eps, error O(eps²)) or 4 (pairs ±eps and ±2eps, "
                        f"Richardson weights, error O(eps⁴)), got {order!r}")
    if eps is None:
        eps = auto_eps(dtype, order, spec)
    else:
        eps = positive_float(eps, "eps")
        if eps >= 1.0:
            raise SpecError(f"eps must lie in (0, 1) (the step linearises softmax in eps·s), got {eps}; "
                            f"pass eps=None for the automatic choice")
    deep_gd_softmax_memory(spec, units=units, order=order, box=box, dtype=dtype,
                           what=f"deep_gd_softmax(width={spec.width}, depth={spec.depth}, units={units})").check()
    check_layers(f"deep_gd_softmax(steps={steps})", steps, 2 * spec.depth + 6, spec.depth + 1)
    ranges = _fit_ranges(spec, box, x_bound, fit_range)
    return ConstructedSoftmaxICGD(spec, eta=eta, steps=steps, box=box, eps=eps, order=order, units=units,
                                  fit_ranges=ranges, x_bound=x_bound, readout=readout, dtype=dtype)
