"""Metrics that compare in-context learners: error curves, R², bootstrap CIs, SPD/ILWD, model cos, probes, LSA weights.

Everything works on plain tensors or on **predictors**. A predictor is anything that maps a batch of contexts and
query points to predictions (:class:`Predictor`)::

    f(X, Y, x_query) -> (B, m, d_out)      X (B, n, d), Y (B, n, d_out), x_query (B, m, d)

either a callable or an object with a ``predict(X, Y, x_query)`` method (the reference learners of
:mod:`icgd.learners`; the method wins when both exist). Predictions of shape ``(B, m)`` are read as one output.
Every query must be answered from the context alone, independently of the other queries of the same prompt
(Akyürek et al. probe "as separate sequences sharing the prefix").

Conventions:

* prediction/target tensors are ``(B, n)`` (one output) or ``(B, n, d_out)``; the first axis is the batch of
  prompts, the second the position (number of in-context examples, or query index);
* weights of a linear predictor are ``(B, d_out, d)``, one row per output, so that ``ŷ = W x`` (von Oswald et al.'s
  ``W ∈ R^{N_y×N_x}``, sklearn's ``coef_``). The linear learners of :mod:`icgd.learners` store ``(B, d, d_out)``:
  transpose with ``.mT`` before comparing;
* scalars come back as Python floats, curves and matrices as tensors in the input's dtype and on its device;
* randomness only through an explicit ``torch.Generator`` (``None`` draws from torch's global generator).

Sources: Garg et al. 2022 (squared error normalised by d); Wu et al. 2025 §5 (R² per number of in-context
examples); Akyürek et al. 2023 §4 and App. F (SPD, ILWD, the R² of the implicit linear fit), §5 and App. E (probes
for XᵀY and w_OLS); von Oswald et al. 2023 §3 and App. A.3 (preds diff, model cos, model diff, rescaling and
interpolating trained LSA weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from icgd._checks import as_float_tensor, positive_float, positive_int
from icgd.errors import NonFiniteError, ShapeError, SpecError
from icgd.tokens import check_prompt

__all__ = [
    "Predictor",
    "squared_error_per_position",
    "r2_from_sums",
    "r2_per_position",
    "r2_score",
    "bootstrap_ci",
    "spd",
    "implicit_weights",
    "ilwd",
    "query_sensitivity",
    "alignment_metrics",
    "model_cos",
    "model_diff",
    "preds_diff",
    "ols_weights",
    "moment_vector",
    "LinearProbe",
    "fit_linear_probe",
    "probe_layers",
    "probe_mse",
    "probe_r2",
    "attention_map",
    "compare_lsa_weights",
]

MODEL_COS_EPS = 1e-8  # von Oswald et al.'s `train.py::analyse`: g / (‖g‖ + 1e-8)


@runtime_checkable
class Predictor(Protocol):
    """``f(X (B, n, d), Y (B, n, d_out), x_query (B, m, d)) -> (B, m, d_out)``."""

    def __call__(self, X: torch.Tensor, Y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------------------------
# input checks


def _tensor(value, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    t = as_float_tensor(value, name, None if like is None else like.dtype)
    if like is not None:
        t = t.to(like.device)
    return t.detach()


def _pred_target(pred, target, names: tuple[str, str] = ("pred", "target")) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tensors of the same shape ``(B, n)`` or ``(B, n, d_out)``, returned as ``(B, n, d_out)``."""
    a = _tensor(pred, names[0])
    b = _tensor(target, names[1], like=a)
    if a.dim() not in (2, 3):
        raise ShapeError(
            f"{names[0]} must be (B, n) or (B, n, d_out) (batch of prompts, positions, outputs), got shape "
            f"{tuple(a.shape)}; for a single prompt add a batch axis with [None]"
        )
    if a.shape != b.shape:
        raise ShapeError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}; "
            f"both are (B, n) or (B, n, d_out)"
        )
    if a.numel() == 0:
        raise ShapeError(f"{names[0]} is empty (shape {tuple(a.shape)}); pass at least one prompt and position")
    if a.dim() == 2:
        a, b = a.unsqueeze(-1), b.unsqueeze(-1)
    return a, b


def _optional_d(d) -> int | None:
    return None if d is None else positive_int(d, "d")


def _context(X, Y, x_query=None, query_name: str = "x_query"):
    """Batched prompts for the metrics, validated by the one prompt validator :func:`icgd.tokens.check_prompt`:
    ``X (B, n, d)``, ``Y (B, n, d_out)`` and, when given, queries ``(B, m, d)``; returns ``(X, Y, queries or None)``.
    Two conveniences on top of it: ``Y (B, n)`` is one output, and queries ``(m, d)`` are shared by all prompts.
    Unlike a learner, the metrics need the batch axis: a 2-D X is refused."""
    X = _tensor(X, "X")
    if X.dim() != 3:
        raise ShapeError(
            f"X must be (B, n, d) (batch of prompts, context pairs, input dimension), got shape {tuple(X.shape)}; "
            "for a single prompt add a batch axis with X[None]"
        )
    B, n, d = X.shape
    Y = _tensor(Y, "Y", like=X)
    if Y.dim() == 2 and tuple(Y.shape) == (B, n):
        Y = Y.unsqueeze(-1)
    q = None if x_query is None else _tensor(x_query, query_name, like=X)
    if q is not None and q.dim() == 2 and q.shape[-1] == d:
        q = q.unsqueeze(0).expand(B, -1, -1)
    try:
        X, Y, q, _ = check_prompt(X, Y, q, min_pairs=0)
    except ShapeError as e:
        msg = str(e).replace("x_query", query_name)
        if msg.startswith(query_name):
            msg += f"; (m, {d}) is also accepted, shared by all prompts"
        raise ShapeError(msg) from None
    if q is not None and q.shape[1] == 0:
        raise ShapeError(f"{query_name} has no points (shape {tuple(q.shape)}); pass at least one query per prompt")
    return X, Y, q


def _predict_fn(learner, name: str) -> Callable:
    predict = getattr(learner, "predict", None)
    if callable(predict):
        return predict
    if callable(learner):
        return learner
    raise SpecError(
        f"{name} must be a predictor: a callable f(X, Y, x_query) -> (B, m, d_out) or an object with a "
        f"predict(X, Y, x_query) method; got {type(learner).__name__}"
    )


def _run(learner, name: str, X: torch.Tensor, Y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Call a predictor and check that it answered ``(B, m, k)`` (``(B, m)`` is read as k = 1)."""
    out = _predict_fn(learner, name)(X, Y, q)
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(np.asarray(out), dtype=X.dtype, device=X.device)
        except (TypeError, ValueError) as exc:
            raise ShapeError(f"{name} returned {type(out).__name__}, expected a (B, m, d_out) tensor") from exc
    B, m = q.shape[:2]
    if out.dim() == 2 and tuple(out.shape) == (B, m):
        out = out.unsqueeze(-1)
    if out.dim() != 3 or tuple(out.shape[:2]) != (B, m):
        raise ShapeError(
            f"{name} returned predictions of shape {tuple(out.shape)} for x_query {tuple(q.shape)}: expected "
            f"({B}, {m}, d_out), one row per query point"
        )
    if not out.is_floating_point():
        out = out.to(X.dtype)
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteError(f"{name} returned NaN or inf predictions")
    return out


def r2_from_sums(ss_res: torch.Tensor, ss_tot: torch.Tensor) -> torch.Tensor:
    """icgd's one R² rule on sums of squares: ``1 − ss_res/ss_tot`` elementwise, and where the targets do not vary
    (``ss_tot = 0``) 1 if the prediction is perfect (``ss_res = 0``) and 0 otherwise — sklearn's ``r2_score`` with
    ``force_finite=True``. Every R² of icgd (:func:`r2_per_position`, :func:`r2_score`, the bootstrap statistics of
    the reproductions, :func:`icgd.mechanism.layer_alignment`) goes through it."""
    ok = ss_tot != 0
    safe = torch.where(ok, ss_tot, torch.ones_like(ss_tot))
    return torch.where(ok, 1 - ss_res / safe, (ss_res == 0).to(ss_res.dtype))


# ---------------------------------------------------------------------------------------------------------------
# error curves and R²


def squared_error_per_position(pred, target, d: int | None = None) -> torch.Tensor:
    """Squared error per position, averaged over the batch: ``e_k = (1/B) Σ_b Σ_o (ŷ_bko − y_bko)² [/ d]`` → ``(n,)``.

    `pred`, `target`: ``(B, n)`` or ``(B, n, d_out)``. With `d` (the input dimension) the error is divided by d, the
    normalisation of Garg et al. 2022 under which the zero predictor scores 1 on ``y = wᵀx``, ``w, x ~ N(0, I_d)``.
    The SPD curve of Akyürek et al. (Eq. 15) per number of examples is this function applied to two learners'
    predictions.
    """
    a, b = _pred_target(pred, target)
    d = _optional_d(d)
    err = ((a - b) ** 2).sum(-1).mean(0)
    return err / d if d is not None else err


def r2_per_position(pred, target) -> torch.Tensor:
    """Coefficient of determination at each position, over the batch of prompts → ``(n,)``.

    For position k and output o::

        R²_ko = 1 − Σ_b (ŷ_bko − y_bko)² / Σ_b (y_bko − ȳ_ko)²,   ȳ_ko = (1/B) Σ_b y_bko,

    and ``R²_k`` is the plain average of ``R²_ko`` over the outputs (sklearn's ``multioutput="uniform_average"``),
    so ``r2_per_position(p, t)[k] == sklearn.metrics.r2_score(t[:, k], p[:, k])``. Where the targets do not vary
    over the batch (zero variance), ``R²`` is 1 for a perfect prediction and 0 otherwise (sklearn's convention,
    :func:`r2_from_sums`).

    This is the per-position reading of Wu et al. 2025's "mean R-squared value" vs number of in-context examples
    (§5; the paper does not define it: R² over a batch of prompts at each position, then averaged over batches
    by the caller). `pred`, `target`: ``(B, n)`` or ``(B, n, d_out)`` with B ≥ 2; `pred` may carry leading axes,
    ``(..., B, n[, d_out])`` → ``(..., n)`` (e.g. one set of predictions per training epoch). This is icgd's one
    R² per position (the direct-training baseline scores with it too).
    """
    a, b = _leading(pred, target)
    if b.shape[0] < 2:
        raise ShapeError(f"R² per position needs at least 2 prompts in the batch, got shape {tuple(b.shape)}")
    ss_res = ((a - b) ** 2).sum(-3)
    ss_tot = ((b - b.mean(0, keepdim=True)) ** 2).sum(0)
    return r2_from_sums(ss_res, ss_tot).mean(-1)


def _leading(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_pred_target` for a `pred` that may have extra leading axes: ``(..., B, n, d_out)`` and
    ``(B, n, d_out)``."""
    p = _tensor(pred, "pred")
    k = p.dim() - _tensor(target, "target").dim()
    if k <= 0:
        return _pred_target(p, target)
    _, b = _pred_target(p[(0,) * k], target)
    if tuple(p.shape[k:]) != tuple(_tensor(target, "target").shape):
        raise ShapeError(f"pred must end with the shape of target, got {tuple(p.shape)} and "
                         f"{tuple(_tensor(target, 'target').shape)}")
    return (p if p.dim() - k == 3 else p.unsqueeze(-1)), b


def r2_score(pred, target) -> float:
    """R² over every prompt and position pooled: for each output o,
    ``R²_o = 1 − Σ_{b,k} (ŷ_bko − y_bko)² / Σ_{b,k} (y_bko − ȳ_o)²``, averaged over outputs.

    Shapes as :func:`r2_per_position` (a 1-D ``(N,)`` pair is also accepted); equals sklearn's ``r2_score`` on the
    ``(B·n, d_out)`` flattening.
    """
    a = _tensor(pred, "pred")
    b = _tensor(target, "target", like=a)
    if a.dim() == 1 and b.dim() == 1:  # N samples of one output
        a, b = a[:, None], b[:, None]
    a, b = _pred_target(a, b)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    if a.shape[0] < 2:
        raise ShapeError("R² needs at least 2 samples")
    ss_res = ((a - b) ** 2).sum(0)
    ss_tot = ((b - b.mean(0, keepdim=True)) ** 2).sum(0)
    return float(r2_from_sums(ss_res, ss_tot).mean())


# ---------------------------------------------------------------------------------------------------------------
# bootstrap

_BOOT_CHUNK_ELEMENTS = 1 << 24  # resampled values materialised at once


def _stat_fn(stat) -> Callable[[torch.Tensor, int], torch.Tensor]:
    if isinstance(stat, str):
        if stat == "mean":
            return lambda t, dim: t.mean(dim)
        if stat == "median":
            return lambda t, dim: t.median(dim).values
        raise SpecError(f"stat must be 'mean', 'median' or a callable stat(t, dim), got {stat!r}")
    if not callable(stat):
        raise SpecError(f"stat must be 'mean', 'median' or a callable stat(t, dim), got {type(stat).__name__}")

    def call(t: torch.Tensor, dim: int) -> torch.Tensor:
        out = stat(t, dim)
        if hasattr(out, "values") and not isinstance(out, torch.Tensor):  # torch.median & co return (values, indices)
            out = out.values
        return out

    return call


def bootstrap_ci(values, stat="mean", n_boot: int = 1000, level: float = 0.95,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile bootstrap confidence interval of ``stat`` over the first axis of `values` (Efron 1979).

    `values` ``(N, ...)``: N independent samples (e.g. per-prompt errors ``(B, n)``, giving one interval per
    position). The resampling indices are drawn in one call, ``torch.randint(0, N, (n_boot, N),
    generator=generator)`` (on the generator's device), and the statistic is evaluated on all resamples at once
    (in chunks); `stat` is ``"mean"``, ``"median"`` or a callable ``stat(t, dim)`` that reduces `t` along `dim`
    (``torch.mean`` works). With ``α = 1 − level`` the interval is the ``α/2`` and ``1 − α/2`` quantiles of the
    ``n_boot`` statistics, linearly interpolated (numpy's default percentile method).

    Returns ``(low, high)``, each of shape ``values.shape[1:]`` (0-d tensors for 1-D values).
    """
    v = _tensor(values, "values")
    if v.dim() == 0 or v.shape[0] < 2:
        raise ShapeError(f"values must be (N, ...) with N ≥ 2 samples along the first axis, got shape {tuple(v.shape)}")
    n_boot = positive_int(n_boot, "n_boot", minimum=2)
    level = positive_float(level, "level")
    if level >= 1:
        raise SpecError(f"level must be in (0, 1), got {level!r}; e.g. 0.95 for a 95% interval")
    fn = _stat_fn(stat)
    N = v.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randint(0, N, (n_boot, N), generator=generator, device=device).to(v.device)
    per_boot = max(1, v[0].numel() * N)
    step = max(1, _BOOT_CHUNK_ELEMENTS // per_boot)
    stats = torch.cat([fn(v[idx[i:i + step]], 1) for i in range(0, n_boot, step)], dim=0)
    if tuple(stats.shape) != (n_boot, *v.shape[1:]):
        raise SpecError(
            f"stat must reduce the sample axis only: on resamples of shape {(n_boot, N, *v.shape[1:])} with dim=1 "
            f"it returned shape {tuple(stats.shape)}, expected {(n_boot, *v.shape[1:])}"
        )
    alpha = 1 - level
    srt = stats.sort(dim=0).values

    def quantile(q: float) -> torch.Tensor:
        pos = q * (n_boot - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n_boot - 1)
        return srt[lo] + (pos - lo) * (srt[hi] - srt[lo])

    return quantile(alpha / 2), quantile(1 - alpha / 2)


# ---------------------------------------------------------------------------------------------------------------
# SPD, implicit weights, ILWD (Akyürek et al. 2023)


def spd(pred_a, pred_b, d: int | None = None) -> float:
    """Squared prediction difference (Akyürek et al. 2023, Eq. 15): ``E_{D, x'} ‖A_1(D)(x') − A_2(D)(x')‖²``.

    The mean over prompts and positions/queries of ``Σ_o (ŷ^a_o − ŷ^b_o)²``; divided by `d` when given (the
    paper's dimension-normalised plots). `pred_a`, `pred_b`: ``(B, m)`` or ``(B, m, d_out)``. For the curve
    over the number of examples use :func:`squared_error_per_position` on the same pair.
    """
    a, b = _pred_target(pred_a, pred_b, ("pred_a", "pred_b"))
    d = _optional_d(d)
    out = float(((a - b) ** 2).sum(-1).mean())
    return out / d if d is not None else out


def _lstsq_min_norm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Batched minimum-norm least squares ``argmin ‖A W − B‖`` (rank-deficient systems allowed)."""
    if A.device.type == "cpu":
        return torch.linalg.lstsq(A, B, driver="gelsd").solution
    return torch.linalg.pinv(A) @ B


def _fit_linear(xp: torch.Tensor, yp: torch.Tensor, fit_intercept: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prompt least squares of ``yp (B, m, k)`` on ``xp (B, m, d)``: ``W (B, k, d)``, ``c (B, k)``, ``R² (B,)``."""
    if fit_intercept:
        x_mean, y_mean = xp.mean(1, keepdim=True), yp.mean(1, keepdim=True)
        W = _lstsq_min_norm(xp - x_mean, yp - y_mean)  # (B, d, k)
        c = (y_mean - x_mean @ W).squeeze(1)
    else:
        W = _lstsq_min_norm(xp, yp)
        c = yp.new_zeros(yp.shape[0], yp.shape[-1])
    fitted = xp @ W + c[:, None, :]
    ss_res = ((yp - fitted) ** 2).sum(1)
    ss_tot = ((yp - yp.mean(1, keepdim=True)) ** 2).sum(1)
    return W.mT, c, r2_from_sums(ss_res, ss_tot).mean(-1)


def implicit_weights(learner, X, Y, x_probe, *, fit_intercept: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The linear model implied by a learner's predictions (Akyürek et al. 2023, Eqs. 16–17 and App. F).

    For each prompt b, query the learner at the probe points ``x'_bi`` (`x_probe` ``(B, m, d)``, or ``(m, d)``
    shared by all prompts) and fit ``ŵ_b, c_b = argmin Σ_i ‖ŷ_bi − ŵ_b x'_bi − c_b‖²`` by least squares with an
    intercept (as the paper's code, sklearn ``LinearRegression(fit_intercept=True)``; minimum-norm ŵ when the probes
    do not determine it, so use m ≥ d + 1, Akyürek et al. suggest ≥ 2d). All prompts are solved in one batched
    ``lstsq``.

    Returns ``(w (B, d_out, d), intercept (B, d_out), r2 (B,))``: ``r2`` is the R² of the linear fit on the probes
    (averaged over outputs), the "implicit-weight R²" of Akyürek et al.'s App. F: 1 for a learner that is linear
    in the query, lower for one that is not (1 when the predictions are constant and fitted exactly).
    """
    X, Y, q = _context(X, Y, x_probe, "x_probe")
    if q.shape[1] < 2:
        raise ShapeError(f"implicit weights need at least 2 probe points per prompt, got x_probe {tuple(q.shape)}")
    pred = _run(learner, "learner", X, Y, q).detach()
    return _fit_linear(q, pred, fit_intercept)


def _weights(learner, name: str, X, Y, q, fit_intercept: bool) -> torch.Tensor:
    if isinstance(learner, (torch.Tensor, np.ndarray)):  # explicit weights of a linear learner
        W = _tensor(learner, name, like=X)
        B, _, d = X.shape
        if W.dim() == 2 and tuple(W.shape) == (B, d):
            W = W.unsqueeze(1)
        if W.dim() != 3 or W.shape[0] != B or W.shape[-1] != d:
            raise ShapeError(
                f"{name} given as weights must be (B, d_out, d) = ({B}, d_out, {d}) (one row per output; the "
                f"learners' (B, d, d_out) weights need .mT), got shape {tuple(W.shape)}"
            )
        return W
    if q.shape[1] < 2:
        raise ShapeError(f"implicit weights need at least 2 probe points per prompt, got x_probe {tuple(q.shape)}")
    return _fit_linear(q, _run(learner, name, X, Y, q).detach(), fit_intercept)[0]


def ilwd(learner_a, learner_b, X, Y, x_probe, *, normalize: bool = False, fit_intercept: bool = True) -> float:
    """Implicit linear weight difference (Akyürek et al. 2023, Eqs. 16–17): ``E_D ‖ŵ_{A_1} − ŵ_{A_2}‖²``.

    ``ŵ_A`` are the weights of :func:`implicit_weights` fitted to each learner's predictions on the same probes
    (the intercepts are not compared). Either learner may instead be a tensor of its actual weights,
    ``(B, d_out, d)`` or ``(B, d)`` ("for linear-hypothesis algorithms use the actual ŵ"). Returns the mean over
    prompts of the squared Frobenius distance, divided by d when ``normalize=True`` (the paper's plots; its code
    takes ``((w − ŵ)²).mean(−1)``).
    """
    X, Y, q = _context(X, Y, x_probe, "x_probe")
    Wa = _weights(learner_a, "learner_a", X, Y, q, fit_intercept)
    Wb = _weights(learner_b, "learner_b", X, Y, q, fit_intercept)
    if Wa.shape != Wb.shape:
        raise ShapeError(f"the two learners have weights of shapes {tuple(Wa.shape)} and {tuple(Wb.shape)}: "
                         "their numbers of outputs differ")
    out = float(((Wa - Wb) ** 2).sum((-2, -1)).mean())
    return out / X.shape[-1] if normalize else out


# ---------------------------------------------------------------------------------------------------------------
# von Oswald et al.'s alignment metrics


def query_sensitivity(learner, X, Y, x_query) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and their sensitivities to the query, by autograd: ``(ŷ (B, m, d_out), J (B, m, d_out, d))``
    with ``J_bjo = ∂ŷ_bjo / ∂x_query_bj``.

    For a linear learner ``ŷ = W x`` the sensitivity is ``W``: "the explicit models computed by the algorithm"
    (von Oswald et al. 2023, §3). All queries are differentiated at once (one backward pass per output), which
    relies on each prediction depending on its own query only. The learner must be differentiable in `x_query`
    (torch operations, no ``torch.no_grad`` and no numpy inside).
    """
    X, Y, q = _context(X, Y, x_query)
    with torch.enable_grad():
        q = q.detach().clone().requires_grad_(True)
        pred = _run(learner, "learner", X, Y, q)
        if not pred.requires_grad:
            raise SpecError(
                "the learner's predictions are not connected to x_query in the autograd graph; model cos/diff need a "
                "predictor written in differentiable torch operations (no torch.no_grad, .detach() or numpy inside)"
            )
        k = pred.shape[-1]
        rows = []
        for o in range(k):
            (g,) = torch.autograd.grad(pred[..., o].sum(), q, retain_graph=o < k - 1, allow_unused=True)
            rows.append(torch.zeros_like(q) if g is None else g)
    return pred.detach(), torch.stack(rows, dim=-2).detach()


def alignment_metrics(learner_a, learner_b, X, Y, x_query) -> dict[str, float]:
    """von Oswald et al. 2023's three alignment metrics in one pass (§3; their ``train.py::analyse``):

    * ``preds_diff = mean_j ‖ŷ^a_j − ŷ^b_j‖`` (``|ŷ^a − ŷ^b|`` for one output);
    * ``model_cos = mean_j ⟨g^a_j / (‖g^a_j‖ + 1e-8), g^b_j / (‖g^b_j‖ + 1e-8)⟩``;
    * ``model_diff = mean_j ‖g^a_j − g^b_j‖``,

    where ``g_j = ∂ŷ_j/∂x_query_j`` (:func:`query_sensitivity`; with several outputs the flattened Jacobian,
    Frobenius norms) and the means run over every prompt and query. Returns a dict with those three keys.
    """
    X, Y, q = _context(X, Y, x_query)
    pa, ga = query_sensitivity(learner_a, X, Y, q)
    pb, gb = query_sensitivity(learner_b, X, Y, q)
    if pa.shape != pb.shape:
        raise ShapeError(f"the two learners predict shapes {tuple(pa.shape)} and {tuple(pb.shape)}")
    ga, gb = ga.flatten(-2), gb.flatten(-2)
    na = ga.norm(dim=-1, keepdim=True) + MODEL_COS_EPS
    nb = gb.norm(dim=-1, keepdim=True) + MODEL_COS_EPS
    return {
        "preds_diff": float((pa - pb).norm(dim=-1).mean()),
        "model_cos": float(((ga / na) * (gb / nb)).sum(-1).mean()),
        "model_diff": float((ga - gb).norm(dim=-1).mean()),
    }


def model_cos(learner_a, learner_b, X, Y, x_query) -> float:
    """Cosine of the two learners' sensitivities ``∂ŷ/∂x_query`` (von Oswald et al. 2023, §3 "model cos"), with the
    paper's code's normalisation ``g/(‖g‖ + 1e-8)``, averaged over prompts and queries. 1 for the same learner,
    −1 against its negation. See :func:`alignment_metrics`."""
    return alignment_metrics(learner_a, learner_b, X, Y, x_query)["model_cos"]


def model_diff(learner_a, learner_b, X, Y, x_query) -> float:
    """``mean ‖∂ŷ^a/∂x_query − ∂ŷ^b/∂x_query‖₂`` (von Oswald et al. 2023, §3 "model diff");
    see :func:`alignment_metrics`."""
    return alignment_metrics(learner_a, learner_b, X, Y, x_query)["model_diff"]


def preds_diff(learner_a, learner_b, X, Y, x_query) -> float:
    """``mean ‖ŷ^a − ŷ^b‖`` over prompts and queries (von Oswald et al. 2023, §3 "preds diff"; the absolute difference
    for one output). Needs no gradients."""
    X, Y, q = _context(X, Y, x_query)
    with torch.no_grad():
        pa = _run(learner_a, "learner_a", X, Y, q)
        pb = _run(learner_b, "learner_b", X, Y, q)
    if pa.shape != pb.shape:
        raise ShapeError(f"the two learners predict shapes {tuple(pa.shape)} and {tuple(pb.shape)}")
    return float((pa - pb).norm(dim=-1).mean())


# ---------------------------------------------------------------------------------------------------------------
# probe targets and linear probes (Akyürek et al. 2023, §5)


def _xy(X, Y) -> tuple[torch.Tensor, torch.Tensor]:
    X, Y, _ = _context(X, Y)
    return X, Y


def ols_weights(X, Y) -> torch.Tensor:
    """Minimum-norm least squares per prompt, ``w_OLS = (X⁺ Y)ᵀ`` → ``(B, d_out, d)`` (one row per output).

    The probe target of Akyürek et al. 2023 §5 (for n < d the min-norm interpolant). ``.flatten(1)`` gives the
    ``(B, d·d_out)`` target that :func:`probe_layers` expects (it flattens by itself too).
    """
    X, Y = _xy(X, Y)
    return _lstsq_min_norm(X, Y).mT


def moment_vector(X, Y) -> torch.Tensor:
    """The moment ``XᵀY = Σ_i x_i y_iᵀ`` per prompt, arranged like the weights: ``(XᵀY)ᵀ`` → ``(B, d_out, d)``.

    Akyürek et al. 2023's first probe target (§5); one GD step from 0 gives ``W = (η/n)(XᵀY)ᵀ``. For one output
    ``.flatten(1)`` is the vector ``XᵀY``.
    """
    X, Y = _xy(X, Y)
    return Y.mT @ X


@dataclass(frozen=True)
class LinearProbe:
    """A fitted ridge probe: ``predict(F) = F @ weight + bias`` with ``weight (H, k)``, ``bias (k,)``."""

    weight: torch.Tensor
    bias: torch.Tensor
    lam: float

    def predict(self, features) -> torch.Tensor:
        F = _tensor(features, "features", like=self.weight)
        if F.dim() != 2 or F.shape[-1] != self.weight.shape[0]:
            raise ShapeError(f"features must be (N, {self.weight.shape[0]}) like the training features, "
                             f"got shape {tuple(F.shape)}")
        return F @ self.weight + self.bias


def _features_targets(features, targets) -> tuple[torch.Tensor, torch.Tensor]:
    F = _tensor(features, "features")
    if F.dim() != 2:
        raise ShapeError(f"features must be (N, H) (samples, feature dimension), got shape {tuple(F.shape)}")
    T = _tensor(targets, "targets", like=F)
    if T.dim() == 1:
        T = T.unsqueeze(-1)
    if T.dim() != 2 or T.shape[0] != F.shape[0]:
        raise ShapeError(f"targets must be (N,) or (N, k) with N = {F.shape[0]} rows like features, "
                         f"got shape {tuple(T.shape)}")
    return F, T


def fit_linear_probe(features, targets, lam: float = 1e-3, *, fit_intercept: bool = True) -> LinearProbe:
    """Ridge regression of `targets` ``(N, k)`` (or ``(N,)``) on `features` ``(N, H)``, in closed form:

        W = argmin ‖F_c W − T_c‖² + λ ‖W‖²_F = (F_cᵀ F_c + λ I)⁻¹ F_cᵀ T_c,   b = t̄ − f̄ W,

    with ``F_c, T_c`` the centred features and targets (the intercept is not penalised), i.e. sklearn
    ``Ridge(alpha=λ)``; the dual form ``F_cᵀ (F_c F_cᵀ + λ I)⁻¹ T_c`` when N < H, and the minimum-norm least-squares
    solution for λ = 0. A linear stand-in for Akyürek et al. 2023's probes (§5; their released probe is a linear
    read-out too).
    """
    F, T = _features_targets(features, targets)
    lam = positive_float(lam, "lam", allow_zero=True)
    if fit_intercept:
        f_mean, t_mean = F.mean(0, keepdim=True), T.mean(0, keepdim=True)
        Fc, Tc = F - f_mean, T - t_mean
    else:
        Fc, Tc = F, T
    N, H = F.shape
    if lam == 0:
        W = _lstsq_min_norm(Fc, Tc)
    elif N >= H:
        W = torch.linalg.solve(Fc.mT @ Fc + lam * torch.eye(H, dtype=F.dtype, device=F.device), Fc.mT @ Tc)
    else:
        W = Fc.mT @ torch.linalg.solve(Fc @ Fc.mT + lam * torch.eye(N, dtype=F.dtype, device=F.device), Tc)
    b = (t_mean - f_mean @ W).squeeze(0) if fit_intercept else T.new_zeros(T.shape[-1])
    return LinearProbe(W, b, lam)


def _layer_features(act: torch.Tensor, name: str, position) -> torch.Tensor:
    if act.dim() == 2:
        return act
    if act.dim() != 3:
        raise ShapeError(f"activation {name!r} must be (B, T, H) (or (B, H) features), got shape {tuple(act.shape)}")
    if position == "mean":
        return act.mean(1)
    if position == "concat":
        return act.flatten(1)
    if isinstance(position, bool) or not isinstance(position, int):
        raise SpecError(f"position must be a token index, 'mean' or 'concat', got {position!r}")
    T = act.shape[1]
    if not -T <= position < T:
        raise ShapeError(f"position {position} is out of range for activation {name!r} with {T} tokens")
    return act[:, position]


def probe_layers(cache: Mapping[str, torch.Tensor], target, *, names: Iterable[str] | None = None,
                 position: int | str = -1, train_frac: float = 0.8, lam: float = 1e-3,
                 generator: torch.Generator | None = None) -> dict[str, dict[str, float]]:
    """Fit one linear probe per layer and score it on held-out prompts (Akyürek et al. 2023, §5 / Fig. 4).

    `cache` maps names to activations ``(B, T, H)`` (e.g. a ``Transformer.run_with_cache`` cache; ``(B, H)``
    entries are used as they are); `names` picks entries (default: every 2-D or 3-D one, in order). `target`
    ``(B, ...)`` is flattened to ``(B, k)``: typically :func:`ols_weights` or :func:`moment_vector` of the prompts.
    The features of a layer are the activation at token `position` (default the last, as the paper's released
    probe), their mean over tokens (``"mean"``) or all tokens concatenated (``"concat"``).

    The first ``round(train_frac·B)`` prompts train :func:`fit_linear_probe` (a random split when a `generator` is
    given), the rest test it. Returns ``{name: {"mse", "r2", "train_mse"}}``: ``mse`` is the held-out mean squared
    error over prompts and target components, ``r2`` the held-out R² averaged over components.
    """
    if not isinstance(cache, Mapping):
        raise SpecError(f"cache must be a mapping name -> (B, T, H) activations, got {type(cache).__name__}")
    tgt = _tensor(target, "target")
    if tgt.dim() == 0:
        raise ShapeError("target must be (B, ...) with one row per prompt, got a scalar")
    tgt = tgt.reshape(tgt.shape[0], -1) if tgt.dim() > 1 else tgt[:, None]
    B = tgt.shape[0]
    train_frac = positive_float(train_frac, "train_frac")
    n_train = round(train_frac * B)
    if not (2 <= n_train <= B - 2):
        raise SpecError(f"train_frac={train_frac} of {B} prompts leaves {n_train} to train and {B - n_train} to test;"
                        " both need at least 2 prompts")
    if names is None:
        names = [k for k, v in cache.items() if isinstance(v, torch.Tensor) and v.dim() in (2, 3)]
        if not names:
            raise SpecError("the cache has no (B, T, H) activations to probe")
    else:
        names = list(names)
        missing = [k for k in names if k not in cache]
        if missing:
            raise SpecError(f"names not in the cache: {missing}; available: {list(cache)}")
    if generator is not None:
        perm = torch.randperm(B, generator=generator, device=generator.device).cpu()
    else:
        perm = torch.arange(B)
    train, test = perm[:n_train], perm[n_train:]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        act = _tensor(cache[name], f"cache[{name!r}]")
        if act.shape[0] != B:
            raise ShapeError(f"activation {name!r} has {act.shape[0]} prompts but target has {B}; "
                             f"shapes {tuple(act.shape)} and {tuple(tgt.shape)}")
        F = _layer_features(act, name, position)
        t = tgt.to(F.dtype).to(F.device)
        tr, te = train.to(F.device), test.to(F.device)
        probe = fit_linear_probe(F[tr], t[tr], lam)
        pred_te, pred_tr = probe.predict(F[te]), probe.predict(F[tr])
        ss_res = ((pred_te - t[te]) ** 2).sum(0)
        ss_tot = ((t[te] - t[te].mean(0, keepdim=True)) ** 2).sum(0)
        out[name] = {
            "mse": float(((pred_te - t[te]) ** 2).mean()),
            "r2": float(r2_from_sums(ss_res, ss_tot).mean()),
            "train_mse": float(((pred_tr - t[tr]) ** 2).mean()),
        }
    return out


def probe_mse(cache: Mapping[str, torch.Tensor], target, **kwargs) -> dict[str, float]:
    """Held-out MSE of a linear probe per layer: ``{name: mse}``; arguments as :func:`probe_layers`."""
    return {k: v["mse"] for k, v in probe_layers(cache, target, **kwargs).items()}


def probe_r2(cache: Mapping[str, torch.Tensor], target, **kwargs) -> dict[str, float]:
    """Held-out R² of a linear probe per layer: ``{name: r2}``; arguments as :func:`probe_layers`."""
    return {k: v["r2"] for k, v in probe_layers(cache, target, **kwargs).items()}


# ---------------------------------------------------------------------------------------------------------------
# attention maps


def attention_map(cache: Mapping[str, torch.Tensor], name: str, head: int | None = None) -> np.ndarray:
    """A cached attention pattern averaged over the batch (and over heads unless `head` is given) → numpy ``(T, S)``.

    `cache[name]` is ``(B, H, T, S)`` (heads) or ``(B, T, S)``; row t holds the weights token t puts on the keys.
    """
    if not isinstance(cache, Mapping):
        raise SpecError(f"cache must be a mapping name -> attention pattern, got {type(cache).__name__}")
    try:
        pattern = cache[name]
    except KeyError:
        raise SpecError(f"{name!r} is not in the cache; available: {list(cache)}") from None
    p = _tensor(pattern, f"cache[{name!r}]")
    if p.dim() == 4:
        if head is not None:
            if isinstance(head, bool) or not isinstance(head, int) or not -p.shape[1] <= head < p.shape[1]:
                raise SpecError(f"head must be an index below {p.shape[1]}, got {head!r}")
            p = p[:, head]
        else:
            p = p.mean(1)
    elif p.dim() == 3:
        if head is not None:
            raise SpecError(f"{name!r} has no head axis (shape {tuple(p.shape)}); leave head=None")
    else:
        raise ShapeError(f"attention pattern {name!r} must be (B, H, T, S) or (B, T, S), got {tuple(p.shape)}")
    return p.mean(0).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# trained vs constructed LSA weights (von Oswald et al. 2023, App. A.3)

def _lsa_products(weights, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_KQ = Σ_h W_K,hᵀ W_Q,h`` and ``W_PV = Σ_h P_h W_V,h``, each ``(D, D)``."""
    if not isinstance(weights, Mapping):
        raise SpecError(f"{which} must be a dict with W_K, W_Q, W_V, P (or W_KQ, W_PV), got {type(weights).__name__}")
    if "W_KQ" in weights and "W_PV" in weights:
        kq, pv = _tensor(weights["W_KQ"], f"{which}['W_KQ']"), _tensor(weights["W_PV"], f"{which}['W_PV']")
    else:
        got = {}
        for key in ("W_K", "W_Q", "W_V", "P"):  # the paper's names, as LSA.weights and von_oswald_weights give them
            if key not in weights:
                raise SpecError(f"{which} lacks {key} (keys {list(weights)}); pass W_K, W_Q, W_V and P "
                                "(or the products W_KQ and W_PV)")
            got[key] = _tensor(weights[key], f"{which}[{key!r}]")
        WK, WQ, WV, P = got["W_K"], got["W_Q"], got["W_V"], got["P"]
        dims = {t.dim() for t in got.values()}
        if dims not in ({2}, {3}):
            raise ShapeError(f"{which}: W_K, W_Q, W_V, P must all be (D_h, D) or all (H, D_h, D); got shapes "
                             f"{[tuple(t.shape) for t in got.values()]}")
        if WK.shape != WQ.shape or WV.shape[:-2] != WK.shape[:-2] or P.shape[:-2] != WK.shape[:-2] \
                or P.shape[-1] != WV.shape[-2] or not (WK.shape[-1] == WV.shape[-1] == P.shape[-2]):
            raise ShapeError(
                f"{which}: expected W_K, W_Q ([H,] a, D), W_V ([H,] c, D), P ([H,] D, c) so that W_Kᵀ W_Q and P W_V "
                f"are (D, D); got W_K {tuple(WK.shape)}, W_Q {tuple(WQ.shape)}, W_V {tuple(WV.shape)}, "
                f"P {tuple(P.shape)}"
            )
        kq, pv = WK.mT @ WQ, P @ WV
    if kq.dim() == 3:
        kq = kq.sum(0)
    if pv.dim() == 3:
        pv = pv.sum(0)
    if kq.dim() != 2 or kq.shape[0] != kq.shape[1] or kq.shape != pv.shape:
        raise ShapeError(f"{which}: W_KQ and W_PV must be (D, D) (or (H, D, D)), got {tuple(kq.shape)} and "
                         f"{tuple(pv.shape)}")
    return kq, pv


def _lsa_pair(trained: Mapping, constructed: Mapping, d_x: int | None, d_y: int):
    """The products ``W_KQ, W_PV`` of both layers (the constructed ones in the trained dtype and device) and the
    slices of the x and y coordinates: ``(kq_t, pv_t, kq_c, pv_c, x, y)``."""
    kq_t, pv_t = _lsa_products(trained, "trained")
    kq_c, pv_c = _lsa_products(constructed, "constructed")
    kq_c, pv_c = kq_c.to(kq_t.dtype).to(kq_t.device), pv_c.to(kq_t.dtype).to(kq_t.device)
    if kq_t.shape != kq_c.shape:
        raise ShapeError(f"trained and constructed layers act on tokens of different sizes: W_KQ {tuple(kq_t.shape)} "
                         f"vs {tuple(kq_c.shape)}")
    D = kq_t.shape[0]
    d_y = positive_int(d_y, "d_y")
    d_x = D - d_y if d_x is None else positive_int(d_x, "d_x")
    if d_x + d_y > D:
        raise SpecError(f"d_x + d_y = {d_x + d_y} exceeds the token dimension {D}")
    return kq_t, pv_t, kq_c, pv_c, slice(0, d_x), slice(d_x, d_x + d_y)


def _kq_scale(kq: torch.Tensor, x: slice, which: str) -> float:
    """β = mean of W_KQ's diagonal over the input coordinates `x`; a SpecError when it is (numerically) zero."""
    b = float(torch.diagonal(kq[x, x]).mean())
    if abs(b) <= 1e-12 * max(1.0, float(kq.abs().max())):
        raise SpecError(f"the {which} W_KQ has a zero mean diagonal on the x-block (β = {b}); it cannot be "
                        "rescaled (is d_x right, and does the layer attend through the inputs?)")
    return b


def _relative_distance(a: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    """``‖a − ref‖_F / ‖ref‖_F``; a SpecError when `ref` (the constructed `what`) is zero."""
    den = float(torch.linalg.matrix_norm(ref))
    if den == 0:
        raise SpecError(f"the constructed {what} is zero; a relative distance to it is undefined")
    return float(torch.linalg.matrix_norm(a - ref)) / den


def compare_lsa_weights(trained: Mapping, constructed: Mapping, *, d_x: int | None = None, d_y: int = 1) -> dict:
    """Compare a trained linear self-attention layer with a constructed one (von Oswald et al. 2023, App. A.3).

    The layer ``e_j ← e_j + P W_V Σ_i e_i e_iᵀ W_Kᵀ W_Q e_j`` depends only on ``W_KQ = W_Kᵀ W_Q`` and
    ``W_PV = P W_V``, and only up to ``(W_KQ/s, s W_PV)``. With ``β = mean(diag(W_KQ)[x])`` over the first `d_x`
    (input) coordinates, both layers are rescaled to ``W_KQ/β`` and ``β W_PV`` (for the construction ``β = 1``) and
    compared by relative Frobenius distance ``‖A_trained − A_constructed‖_F / ‖A_constructed‖_F``; the interpolated
    layer ``θ_I = (θ + θ_GD)/2`` averages the rescaled products. The fitted step size is
    ``η = −β · mean(diag(W_PV)[y, y])`` over the `d_y` output coordinates that follow the inputs (Prop. 1 has
    ``(P W_V)_yy = −η I`` in icgd's convention where the layer divides by n; with the paper's ``P = η/N`` this is
    ``η/N``).

    `trained`, `constructed`: dicts with ``W_K, W_Q, W_V, P`` (von Oswald et al.'s names, as
    :meth:`icgd.models.LSA.weights` and :func:`icgd.constructions.von_oswald_weights` return them), each ``(D, D)``
    or per head ``(H, ·, D)``/``(H, D, ·)``, or with the products ``W_KQ, W_PV``. With several heads the heads'
    products are summed (exact for the sum over heads only when all heads share one W_KQ up to scale; a summary
    otherwise). Token coordinates are ``[x (d_x) | y (d_y) | rest]``; ``d_x`` defaults to ``D − d_y``.

    Returns a dict: ``beta``, ``beta_constructed``, ``kq_distance``, ``pv_distance``, ``eta``, ``eta_constructed``
    (floats) and the ``(D, D)`` tensors ``W_KQ``, ``W_PV`` (trained, rescaled), ``W_KQ_constructed``,
    ``W_PV_constructed`` (rescaled), ``W_KQ_interp``, ``W_PV_interp``.
    """
    kq_t, pv_t, kq_c, pv_c, x, y = _lsa_pair(trained, constructed, d_x, d_y)
    beta, beta_c = _kq_scale(kq_t, x, "trained"), _kq_scale(kq_c, x, "constructed")
    KQ, PV = kq_t / beta, pv_t * beta
    KQc, PVc = kq_c / beta_c, pv_c * beta_c
    rel = _relative_distance
    return {
        "beta": beta,
        "beta_constructed": beta_c,
        "kq_distance": rel(KQ, KQc, "W_KQ"),
        "pv_distance": rel(PV, PVc, "W_PV"),
        "eta": -float(torch.diagonal(PV[y, y]).mean()),
        "eta_constructed": -float(torch.diagonal(PVc[y, y]).mean()),
        "W_KQ": KQ,
        "W_PV": PV,
        "W_KQ_constructed": KQc,
        "W_PV_constructed": PVc,
        "W_KQ_interp": (KQ + KQc) / 2,
        "W_PV_interp": (PV + PVc) / 2,
    }
