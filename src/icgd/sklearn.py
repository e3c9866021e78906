"""scikit-learn estimators whose predictions come from a transformer that learns from the training set in context.

``fit(X, y)`` validates, standardises and stores the data: the stored samples become the *context* of a prompt.
``predict(X)`` packs the context and the queries into tokens and runs a transformer on them:

* :class:`InContextRegressor`, ``engine="construct"``: the explicit transformer of
  :func:`icgd.constructions.deep_gd` (Wu et al.), whose layers run ``steps`` steps of gradient descent on an
  N-layer network from ``w0`` and then read the network's prediction off the query tokens. The same network trained
  by autograd (:func:`icgd.learners.gd_trajectory`) gives the same predictions up to the sum-of-ReLU fit error.
* :class:`InContextRegressor`, ``engine="checkpoint"``: a transformer meta-trained by ``icgd train``, loaded from
  its run folder.
* :class:`InContextClassifier`: logistic regression by in-context gradient descent
  (:func:`icgd.constructions.convex_gd`, Bai et al.), one-vs-rest for more than two classes.

scikit-learn is an optional dependency: ``pip install 'icgd[sklearn]'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("icgd.sklearn needs scikit-learn (>= 1.3); install it with: pip install 'icgd[sklearn]'") \
        from exc

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6  # pragma: no cover
    def validate_data(estimator, /, X="no_validation", y="no_validation", **kwargs):
        return estimator._validate_data(X, y, **kwargs)

from icgd.constructions import ConstructedICGD, convex_gd, deep_gd
from icgd.errors import (CheckpointError, ConfigError, DataError, DeviceError, DTypeError, FitRangeError, ShapeError,
                         SpecError)
from icgd.nets import ACTIVATIONS, NetSpec, get_activation, init_weights, unflatten

ENGINES = ("construct", "checkpoint")
RANGE_MARGIN = 1.25  # fit intervals are this much wider than the largest pre-activation they must hold
MIN_RANGE = 1e-3
MAX_RANGE_TRIES = 30  # predict doubles the intervals at most this often if the transformer's run leaves them
POWER_ITERATIONS = 100

# Checks of sklearn.utils.estimator_checks that these estimators are expected to fail, with the reason (used by the
# test suite through ``parametrize_with_checks(expected_failed_checks=...)``). Empty: every check passes.
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {"InContextRegressor": {}, "InContextClassifier": {}}


# ------------------------------------------------------------------------------------------------------- helpers


def _moments(A: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (ddof 0; a constant column gets scale 1), or (0, 1) when disabled."""
    if not enabled:
        return np.zeros(A.shape[1]), np.ones(A.shape[1])
    scale = A.std(axis=0)
    return A.mean(axis=0), np.where(scale > 0, scale, 1.0)


def _chunks(A: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, A.shape[0], size):
        yield A[start:start + size]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(value, name: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise SpecError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


def _check_eta(eta) -> float | None:
    """None for ``"auto"``, else the validated step size."""
    if isinstance(eta, str):
        if eta != "auto":
            raise SpecError(f"eta must be 'auto' or a number > 0, got {eta!r}")
        return None
    return _check_positive(eta, "eta")


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SpecError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from exc
    _check_device_available(dev)
    return dev


# ------------------------------------------------------------------------------------ input validation (hardening)


def _check_device_available(dev: torch.device) -> None:
    """A device this machine has: ``cuda`` needs CUDA, ``mps`` needs MPS, and ``meta`` holds no numbers."""
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={str(dev)!r} was asked for but torch sees no CUDA device; use device='cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device='mps' was asked for but is not available; use device='cpu'")
    if dev.type == "meta":
        raise DeviceError("device='meta' holds shapes but no numbers and cannot run a transformer; use device='cpu'")


def _check_not_meta(A, name: str) -> None:
    """Neither a meta tensor (no numbers) nor complex numbers (a cast would drop the imaginary part)."""
    if isinstance(A, torch.Tensor) and A.device.type == "meta":
        raise DeviceError(f"{name} is a tensor on the meta device, which holds a shape but no numbers; pass data "
                          f"(e.g. {name}.to('cpu') of a materialised tensor)")
    if (A.is_complex() if isinstance(A, torch.Tensor) else getattr(getattr(A, "dtype", None), "kind", "") == "c"):
        raise DTypeError(f"Complex data not supported: {name} holds complex numbers; pass the real part or split "
                         f"real and imaginary parts into separate features")


def _check_numeric_targets(y) -> None:
    """Regression targets must be numbers: strings are refused (a classifier takes labels), not cast or summed."""
    _check_not_meta(y, "y")
    if isinstance(y, torch.Tensor):
        return
    a = np.asarray(y) if not hasattr(y, "dtype") else y
    kind = getattr(getattr(a, "dtype", None), "kind", "")
    if kind in "USO" and kind:
        try:
            np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError):
            example = next(iter(np.asarray(a).ravel()), "")
            raise DTypeError(f"y holds non-numeric values (e.g. {str(example)!r}); InContextRegressor needs numeric "
                             f"targets: convert them, or use InContextClassifier for class labels") from None
        if kind in "US":
            raise DTypeError(f"y holds numbers written as strings (dtype {a.dtype}); convert them first, e.g. "
                             f"y.astype(float)")


def _check_standardizable(A: np.ndarray, name: str, enabled: bool) -> None:
    """Refuse data whose standardisation overflows float64 (the mean or the standard deviation is inf: every
    standardised value would be 0 or NaN and the predictions constant or NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, scale = _moments(A, enabled)
        bad = ~(np.isfinite(mean) & np.isfinite(scale))
        if not bad.any():
            bad = ~np.isfinite((A - mean) / scale).all(axis=0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise DataError(f"{name} column {j} (largest |value| {np.abs(A[:, j]).max():.3g}) overflows float64 when "
                        f"standardised; rescale the data (e.g. divide by a power of 10) before fitting")


def _check_queries(est, X) -> None:
    """Queries for ``predict``: at least one, of the width seen in ``fit``, not on the meta device (sklearn's
    message for a wrong width, as a :class:`~icgd.errors.ShapeError`)."""
    _check_not_meta(X, "X")
    shape = getattr(X, "shape", None)
    if shape is None:
        try:
            shape = np.shape(X)
        except (ValueError, TypeError):
            return  # left to sklearn's validation
    if len(shape) == 2 and shape[0] == 0:
        raise ShapeError(f"Found array with 0 sample(s) (shape={tuple(shape)}) while a minimum of 1 is required by "
                         f"{type(est).__name__}: X holds zero queries; pass at least one row to predict")
    if len(shape) == 2 and shape[1] != est.n_features_in_:
        raise ShapeError(f"X has {shape[1]} features, but {type(est).__name__} is expecting {est.n_features_in_} "
                         f"features as input.")


def _check_regressor_size(est, X: np.ndarray, n_outputs: int) -> None:
    """Refuse in ``fit``, before any work, a network whose construction could not be built or run in ``predict``
    (:func:`icgd.memory.estimator_memory`: the transformer for the context plus a chunk of queries, its layers and
    the power iteration of ``eta='auto'``)."""
    from icgd.memory import estimator_memory

    spec = NetSpec(X.shape[1] + 1, est.width, est.depth, n_outputs, est.activation, output_activation=False)
    estimator_memory(spec, n=X.shape[0], queries=min(est.batch_size, 1 << 16), knots=est.knots, box=est.box,
                     steps=est.steps, iterations=POWER_ITERATIONS if isinstance(est.eta, str) else 0,
                     what=f"InContextRegressor(width={est.width}, depth={est.depth}, knots={est.knots}, "
                          f"steps={est.steps}) on {X.shape[0]} samples").check(est.device)


def _check_classifier_size(est, X: np.ndarray, classes: int) -> None:
    from icgd.constructions.bai import convex_gd_memory
    from icgd.memory import layer_stack

    what = f"InContextClassifier(knots={est.knots}, steps={est.steps}) on {X.shape[0]} samples"
    (convex_gd_memory(X.shape[1] + 1, knots=est.knots, loss="logistic", batch=classes,
                      tokens=X.shape[0] + min(est.batch_size, 1 << 16), what=what)
     + layer_stack(what, est.steps, 6, 1)).check(est.device)


def network_jacobian(spec: NetSpec, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The Jacobian ``∂f(w, x_i)[k] / ∂w`` of the network's n·d_out outputs, ``(n·d_out, D_w)``, by backpropagating
    every output unit at once: ``∂f[k]/∂V_j[a, b] = δ_j[k, a] · p(j−1)[b]`` with ``δ_N[k] = r′(u_N)[k] e_k`` and
    ``δ_j[k] = r′(u_j) ⊙ V_{j+1}ᵀ δ_{j+1}[k]`` (u_j the pre-activations)."""
    Vs = unflatten(spec, w)
    ps, us = [X], []
    for j, V in enumerate(Vs, start=1):
        us.append(ps[-1] @ V.T)
        ps.append(spec.layer_act(j)(us[-1]))
    delta = torch.diag_embed(spec.layer_act(spec.depth).deriv(us[-1]))  # (n, d_out, d_out)
    blocks = []
    for j in range(spec.depth, 0, -1):
        blocks.append(torch.einsum("nka,nb->nkab", delta, ps[j - 1]).flatten(2))
        if j > 1:
            delta = (delta @ Vs[j - 1]) * spec.layer_act(j - 1).deriv(us[j - 2])[:, None]
    return torch.cat(blocks[::-1], dim=-1).reshape(-1, spec.num_params)


def network_step_size(spec: NetSpec, w0: torch.Tensor, X: torch.Tensor, iters: int = POWER_ITERATIONS) -> float:
    """``η = 1 / λ_max(G)`` with ``G = JᵀJ / n`` the Gauss–Newton matrix of ``L_n(w) = 1/(2n) Σ ‖f(w, x_i) − y_i‖²``
    at `w0` (J the Jacobian of the n·d_out outputs with respect to w, :func:`network_jacobian`), by power
    iteration. ``2/λ`` is the classical stability limit of GD on a quadratic with curvature λ; η is half of it."""
    X = X.to(w0.dtype)
    J = network_jacobian(spec, w0, X)
    G = J.T @ J
    v = torch.ones_like(w0) / w0.numel() ** 0.5
    lam = 0.0
    for _ in range(iters):
        GV = G @ v
        lam = float(GV.norm())
        if lam == 0.0:
            break
        v = GV / lam
    lam /= X.shape[0]
    return 1.0 / lam if lam > 0 else 1.0


def logistic_step_size(X: np.ndarray, lam: float = 0.0) -> float:
    """``η = 1/L`` with ``L = λ_max(XᵀX)/(4n) + lam``, the smoothness constant of the mean logistic loss plus
    ``(lam/2)‖w‖²`` (σ′ ≤ 1/4): gradient descent with this η decreases the loss at every step."""
    L = float(np.linalg.eigvalsh(X.T @ X / X.shape[0])[-1]) / 4.0 + lam
    return 1.0 / L if L > 0 else 1.0


def _act_sup(act, R: float) -> float:
    """``max |r(u)|`` over ``|u| ≤ R`` (on a fine grid; the ends are included)."""
    t = torch.linspace(-R, R, 4097, dtype=torch.float64)
    return float(act(t).abs().max())


def preactivation_bounds(spec: NetSpec, ws: torch.Tensor, x_bound: torch.Tensor, sups: list[float]) -> list[float]:
    """For each layer j, ``max_{t,k} Σ_q |V_j(t)[k, q]| b_{j−1, q}`` over the weight vectors ``ws (L, D_w)``, with
    ``b_0 = x_bound`` (per input feature) and ``b_j = sups[j−1]`` (a bound on |p(j)|): a bound on the
    pre-activation ``|v_jk · p(j−1)|`` of every input with ``|x_q| ≤ x_bound_q`` at every one of those weights."""
    bound, out = x_bound.to(ws.dtype), []
    for j, V in enumerate(unflatten(spec, ws), start=1):
        out.append(float((V.abs() * bound).sum(-1).max()))
        if j < spec.depth:
            bound = torch.full((V.shape[-2],), sups[j - 1], dtype=ws.dtype)
    return out


def covering_ranges(spec: NetSpec, ws: torch.Tensor, x_bound: torch.Tensor, margin: float) -> list[float]:
    """Fit intervals ``R_j = margin · bound_j`` with the bounds of :func:`preactivation_bounds`, layer by layer
    (``b_j`` is the activation's sup on ``[−R_j, R_j]``)."""
    ranges: list[float] = []
    for j in range(1, spec.depth + 1):
        sups = [_act_sup(spec.layer_act(i), ranges[i - 1]) for i in range(1, j)]
        need = preactivation_bounds(spec, ws, x_bound, sups + [0.0] * (spec.depth - j))[j - 1]
        ranges.append(max(margin * need, MIN_RANGE))
    return ranges


def gd_fit_ranges(spec: NetSpec, X: torch.Tensor, Y: torch.Tensor, w0: torch.Tensor, x_bound: torch.Tensor, *,
                  eta: float, steps: int, box: float | None) -> list[float]:
    """Fit intervals for the :func:`~icgd.constructions.deep_gd` transformer on the context ``(X, Y)``, from one pass
    of plain gradient descent on the same network (:func:`icgd.learners.gd_trajectory`): :func:`covering_ranges`
    of that trajectory with margin ``RANGE_MARGIN``, so that they hold the pre-activation of every input with
    ``|x_q| ≤ x_bound_q`` at every weight vector of the run. The transformer's own trajectory differs from it only
    by the sum-of-ReLU fit error, far inside the margin; the transformer still checks every pre-activation it meets
    (:class:`FitRangeError`), and :meth:`InContextRegressor.predict` widens the intervals if one ever leaves."""
    from icgd.learners import gd_trajectory

    ws = gd_trajectory(spec, X, Y, w0, eta, steps, box=box)
    if not bool(torch.isfinite(ws).all()):
        raise FitRangeError("gradient descent on the context diverged (non-finite weights); pass a smaller eta, "
                            "fewer steps or a box")
    return covering_ranges(spec, ws, x_bound, RANGE_MARGIN)


# ----------------------------------------------------------------------------------------------- regressor


class InContextRegressor(RegressorMixin, BaseEstimator):
    """Regression by a transformer that trains a network on the training set inside its forward pass.

    ``fit`` validates and standardises the data and stores them as the context; with the construct engine it also
    chooses the step size and the fit intervals and builds the transformer (``model_``). ``predict`` builds the
    prompts (context + queries) and runs the transformer on them: its predictions come from its forward pass.

    Parameters
    ----------
    engine : {"construct", "checkpoint"}, default="construct"
        ``"construct"``: the explicit transformer of :func:`icgd.constructions.deep_gd`, whose layers run `steps`
        steps of gradient descent on the network ``NetSpec(d_in, width, depth, n_outputs, activation,
        output_activation=False)`` from ``w0_`` on ``L_n(w) = 1/(2n) Σ_i ‖f(w, x̃_i) − ỹ_i‖²`` and then read
        ``f(w_steps, x̃_query)`` off the query tokens. ``"checkpoint"``: the transformer meta-trained by
        ``icgd train`` in the run folder `checkpoint`.
    depth, width, activation : int, int, str, default=2, 8, "sigmoid"
        The network trained in context (construct engine): `depth` weight matrices, hidden width `width`, the
        activation on every layer but the last (the output layer is linear).
    steps : int, default=100
        Gradient-descent steps, each ``2·depth + 4`` transformer layers.
    eta : "auto" or float, default="auto"
        Step size. ``"auto"`` sets ``eta_ = 1/λ_max(JᵀJ/n)``, the inverse Gauss–Newton curvature of ``L_n`` at
        ``w0_`` (J: Jacobian of the network's outputs on the context with respect to w, λ_max by power iteration),
        half the classical stability limit 2/λ (see :func:`network_step_size`). Computed in ``fit`` from the data
        and w0 only; no GD step is taken.
    knots : int, default=128
        ReLU units of each sum-of-ReLU fit of the activation and its derivative; the fit error falls as knots⁻².
    box : float or None, default=None
        Project the weights onto ``|w| ≤ box`` after every step (``w0`` is clipped too); None: no projection.
    standardize : bool, default=True
        Standardise each feature and each target with the training mean and standard deviation (ddof 0; a constant
        column keeps scale 1). The network sees ``x̃ = (x − x_mean_) / x_scale_`` and learns ``ỹ = (y − y_mean_) /
        y_scale_``; predictions are mapped back with ``ŷ = ỹ̂ · y_scale_ + y_mean_``.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights ``w0_`` (entries of V_j ~ N(0, 1/in_j), :func:`icgd.nets.init_weights`).
    checkpoint : str or path, default=None
        Run folder of ``icgd train`` (``config.json`` + checkpoint files), for ``engine="checkpoint"``.
    batch_size : int, default=256
        Queries per prompt; more queries are processed in chunks of this size, each a prompt with the whole
        context. Each query's prediction does not depend on the other queries, so chunking changes nothing.
    device : str, default="cpu"
        Torch device of the transformer.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has feature names that are all strings.
    n_outputs_ : int
    x_mean_, x_scale_ : ndarray of shape (n_features_in_,)
    y_mean_, y_scale_ : ndarray of shape (n_outputs_,)
    context_X_ : ndarray of shape (n_samples, d_in)
        The network's inputs for the training set. Construct engine: ``[x̃, 1]`` (d_in = n_features_in_ + 1; the
        constant feature gives the bias-free network's first layer a bias); checkpoint engine: ``x̃``.
    context_y_ : ndarray of shape (n_samples, n_outputs_)
        The standardised targets ``ỹ``.
    x_bound_ : ndarray of shape (d_in,)
        Construct engine: ``max_i |context_X_[i, q]|``; query features are clipped to ``[−x_bound_, x_bound_]``.
    net_spec_ : NetSpec
        Construct engine: the network trained in context.
    w0_ : ndarray of shape (net_spec_.num_params,)
        Construct engine: its initial weights (float64).
    eta_ : float
        Construct engine: the step size used.
    fit_ranges_ : list of float
        Construct engine: the fit intervals ``R_j`` of the transformer's sum-of-ReLU fits, one per layer
        (:func:`gd_fit_ranges`).
    model_ : torch.nn.Module
        Construct engine: the transformer (:class:`~icgd.constructions.ConstructedICGD`), built once in ``fit``.
        Checkpoint engine: the loaded transformer.

    Notes
    -----
    **Fit intervals.** The construction approximates r and r′ by sums of ReLUs on per-layer intervals
    ``[−R_j, R_j]`` and raises :class:`~icgd.errors.FitRangeError` rather than return a wrong value when a
    pre-activation leaves one. ``fit`` chooses the intervals from the context alone (:func:`gd_fit_ranges`: one
    pass of plain gradient descent on the context, whose trajectory the transformer's matches up to the fit
    error), so that they hold the pre-activation of every input with ``|x̃_q| ≤ x_bound_q`` at every weight vector
    of the run; each standardised query feature is therefore clipped to ``[−x_bound_q, x_bound_q]`` (the range of
    that feature's magnitude in the training set). Queries inside the training range are not changed; beyond it
    the prediction is the one at the clipped point (flat extrapolation per feature, as for a tree). The
    construction still checks every pre-activation, so nothing can go silently wrong.

    **Cost.** ``fit`` computes ``eta_`` (the network's Jacobian on the context, :func:`network_jacobian`), runs plain
    GD once for the fit intervals and builds the transformer once (``model_``). Each ``predict`` runs it once per
    chunk of `batch_size` queries (the context plus the chunk), in float64 on `device`; only if its run leaves a fit
    interval (which the margin makes unlikely) are the intervals doubled and the run repeated.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from icgd.sklearn import InContextRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> est = InContextRegressor(steps=20, knots=64, random_state=0).fit(X[:300], y[:300])
    >>> est.predict(X[300:303]).shape
    (3,)
    """

    def __init__(self, engine="construct", depth=2, width=8, activation="sigmoid", steps=100, eta="auto",
                 knots=128, box=None, standardize=True, random_state=None, checkpoint=None, batch_size=256,
                 device="cpu"):
        self.engine = engine
        self.depth = depth
        self.width = width
        self.activation = activation
        self.steps = steps
        self.eta = eta
        self.knots = knots
        self.box = box
        self.standardize = standardize
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.batch_size = batch_size
        self.device = device

    # -- tags

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}

    # -- parameters

    def _check_params(self) -> None:
        if self.engine not in ENGINES:
            raise SpecError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        _check_int(self.batch_size, "batch_size", 1)
        _check_device(self.device)
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise SpecError(f"standardize must be True or False, got {self.standardize!r}")
        if self.engine == "checkpoint":
            if self.checkpoint is None:
                raise ConfigError("engine='checkpoint' needs checkpoint=<run folder of `icgd train`>")
            return
        _check_int(self.depth, "depth", 1)
        _check_int(self.width, "width", 1)
        _check_int(self.steps, "steps", 0)
        _check_int(self.knots, "knots", 2)
        _check_eta(self.eta)
        if self.box is not None:
            _check_positive(self.box, "box")
        if self.activation not in ACTIVATIONS:
            get_activation(self.activation)  # raises UnknownActivationError with the choices

    # -- fit

    def fit(self, X, y):
        """Validate and standardise ``(X, y)`` and store them as the context; construct engine: also ``eta_``,
        ``fit_ranges_`` and the transformer ``model_`` (see the Notes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self : InContextRegressor
        """
        self._check_params()
        _check_not_meta(X, "X")
        _check_numeric_targets(y)
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        Y = y.reshape(len(y), -1)
        _check_standardizable(X, "X", self.standardize)
        _check_standardizable(Y, "y", self.standardize)
        if self.engine == "construct":
            _check_regressor_size(self, X, Y.shape[1])
        self._y_1d = y.ndim == 1
        self._engine = self.engine
        self.n_outputs_ = Y.shape[1]
        self.x_mean_, self.x_scale_ = _moments(X, self.standardize)
        self.y_mean_, self.y_scale_ = _moments(Y, self.standardize)
        self.context_y_ = (Y - self.y_mean_) / self.y_scale_
        if self.engine == "checkpoint":
            self.context_X_ = (X - self.x_mean_) / self.x_scale_
            self.model_ = self._load_checkpoint(X.shape[0])
            return self
        self.context_X_ = self._with_ones((X - self.x_mean_) / self.x_scale_)
        self.x_bound_ = np.abs(self.context_X_).max(axis=0)
        self.net_spec_ = NetSpec(self.context_X_.shape[1], self.width, self.depth, self.n_outputs_, self.activation,
                                 output_activation=False)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        w0 = init_weights(self.net_spec_, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        if self.box is not None:
            w0 = w0.clamp(-float(self.box), float(self.box))
        self.w0_ = w0.numpy()
        eta = _check_eta(self.eta)
        self.eta_ = eta if eta is not None else network_step_size(self.net_spec_, w0, torch.from_numpy(
            self.context_X_))
        self._build_construction()
        return self

    def _build_construction(self) -> None:
        """Fit intervals from one GD pass on the context (:func:`gd_fit_ranges`) and the transformer, built once."""
        X, Y, w0 = (torch.from_numpy(a) for a in (self.context_X_, self.context_y_, self.w0_))
        box = None if self.box is None else float(self.box)
        self.fit_ranges_ = gd_fit_ranges(self.net_spec_, X, Y, w0, torch.from_numpy(self.x_bound_), eta=self.eta_,
                                         steps=self.steps, box=box)
        self.model_ = self._construction(self.fit_ranges_)

    def _construction(self, ranges: list[float]) -> ConstructedICGD:
        box = None if self.box is None else float(self.box)
        return deep_gd(self.net_spec_, eta=self.eta_, steps=self.steps, box=box, knots=self.knots,
                       fit_range=ranges).to(_check_device(self.device))

    @staticmethod
    def _with_ones(A: np.ndarray) -> np.ndarray:
        return np.hstack([A, np.ones((A.shape[0], 1))])

    def _load_checkpoint(self, n_samples: int) -> torch.nn.Module:
        from icgd.models import ICLTransformer
        from icgd.train.checkpoint import check_tensors, load_checkpoint
        from icgd.train.config import TrainConfig
        from icgd.train.loop import build_model

        folder = Path(self.checkpoint)
        cfg = TrainConfig.load(folder / "config.json")
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "device": str(_check_device(self.device))})
        if cfg.d_in != self.n_features_in_ or cfg.d_out != self.n_outputs_:
            raise ShapeError(f"the checkpoint in {folder} was trained with d_in={cfg.d_in}, d_out={cfg.d_out}, but "
                             f"X has {self.n_features_in_} features and y {self.n_outputs_} outputs; select "
                             f"{cfg.d_in} features (and {cfg.d_out} targets) or train a model of that size")
        ck = load_checkpoint(folder, device=cfg.device)
        model = build_model(cfg)
        check_tensors(model.state_dict(), ck.model, f"the checkpoint in {folder}")
        try:
            model.load_state_dict(ck.model)
        except RuntimeError as exc:
            raise CheckpointError(f"the checkpoint in {folder} does not fit the model of its config.json: {exc}") \
                from exc
        if isinstance(model, ICLTransformer) and n_samples + 1 > model.config.max_points:
            raise ShapeError(f"the checkpoint's model has learned positions for {model.config.max_points} points, so "
                             f"its context holds at most {model.config.max_points - 1} samples; got {n_samples}. "
                             f"Fit on a subsample or train a model with a larger n_points")
        return model.eval()

    # -- predict

    def network_inputs(self, X) -> np.ndarray:
        """The transformer's query inputs for raw ``X``: standardised; with the construct engine also clipped to
        ``[−x_bound_, x_bound_]`` and given the constant feature, ``(n_queries, context_X_.shape[1])``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._inputs(X)

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        Z = (X - self.x_mean_) / self.x_scale_
        if self._engine == "checkpoint":
            return Z
        return np.clip(self._with_ones(Z), -self.x_bound_, self.x_bound_)

    def predict(self, X):
        """Predictions of the transformer for the queries X, given the stored context.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        y : ndarray of shape (n_queries,) or (n_queries, n_outputs_), like the y given to ``fit``
        """
        check_is_fitted(self)
        _check_queries(self, X)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        Q = torch.from_numpy(self._inputs(X))
        Z = self._predict_checkpoint(Q) if self._engine == "checkpoint" else self._predict_construct(Q)
        out = Z * self.y_scale_ + self.y_mean_
        return out[:, 0] if self._y_1d else out

    def _predict_construct(self, Q: torch.Tensor) -> np.ndarray:
        device = _check_device(self.device)
        X, Y, w0 = (torch.from_numpy(a).to(device) for a in (self.context_X_, self.context_y_, self.w0_))
        model, ranges = self.model_, list(self.fit_ranges_)
        for _ in range(MAX_RANGE_TRIES):
            try:
                with torch.inference_mode():
                    outs = [model.predict(X, Y, q.to(device), w0).cpu() for q in _chunks(Q, self.batch_size)]
                return torch.cat(outs).numpy()
            except FitRangeError:  # the transformer's run left an interval: widen them (the estimator is unchanged)
                ranges = [2.0 * r for r in ranges]
                model = self._construction(ranges)
        raise FitRangeError(f"the weights of in-context GD kept growing (fit intervals {[f'{r:.3g}' for r in ranges]}"
                            f" after {MAX_RANGE_TRIES} widenings); GD is probably diverging: pass a smaller eta, "
                            f"fewer steps or a box")

    def _predict_checkpoint(self, Q: torch.Tensor) -> np.ndarray:
        p = next(self.model_.parameters())
        X = torch.as_tensor(self.context_X_, dtype=p.dtype, device=p.device)[None]
        Y = torch.as_tensor(self.context_y_, dtype=p.dtype, device=p.device)[None]
        with torch.inference_mode():
            outs = [self.model_(X, Y, q.to(p)[None])[0].cpu() for q in _chunks(Q, self.batch_size)]
        return torch.cat(outs).double().numpy()


# ---------------------------------------------------------------------------------------------- classifier


class InContextClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression by in-context gradient descent: the transformer of
    :func:`icgd.constructions.convex_gd` (Bai et al.) runs `steps` steps of GD from w = 0 on the mean logistic loss
    ``(1/n) Σ_i [log(1 + e^{wᵀx̃_i}) − y_i wᵀx̃_i] + (lam/2)‖w‖²`` of the context and reads the logit ``wᵀx̃`` of
    every query.

    ``fit`` trains nothing: it validates and standardises the data and stores them as the context. Two classes: one
    problem, ``y = 1`` for ``classes_[1]``. More classes: one-vs-rest, one prompt per class (all run as one batch);
    ``predict_proba`` normalises the K sigmoids to sum 1. The loss derivative uses the construction's sum-of-ReLU
    sigmoid, fitted on [−8, 8] and clamped outside (error ≤ 3.4e-4 per sample); the forward pass and the read-out
    are exact, so queries need no clipping.

    Parameters
    ----------
    steps : int, default=100
        Gradient-descent steps (each 5–6 transformer layers).
    eta : "auto" or float, default="auto"
        Step size. ``"auto"``: ``eta_ = 1/L`` with ``L = λ_max(X̃ᵀX̃)/(4n) + lam``, the smoothness constant of the
        loss (σ′ ≤ 1/4), for which every GD step decreases it (see :func:`logistic_step_size`).
    lam : float, default=0.0
        Ridge penalty.
    knots : int, default=128
        ReLU units of the fitted sigmoid in the loss derivative (on [−8, 8], clamped outside).
    standardize : bool, default=True
        Standardise the features with the training mean and standard deviation (a constant column keeps scale 1).
        The model sees ``x̃ = [(x − x_mean_) / x_scale_, 1]``; the constant feature is the intercept.
    batch_size : int, default=256
        Queries per prompt; more queries are processed in chunks, with the same result.
    device : str, default="cpu"
        Torch device of the transformer (float64).
    random_state : int, RandomState instance or None, default=None
        Accepted, as in :class:`InContextRegressor`, so that both estimators take the same arguments; GD starts
        from w = 0 and nothing is drawn at random, so it does not change the result.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_, feature_names_in_, x_mean_, x_scale_ :
        As for :class:`InContextRegressor`.
    context_X_ : ndarray of shape (n_samples, n_features_in_ + 1)
    context_y_ : ndarray of shape (n_samples, n_problems)
        0/1 labels: one column when there are two classes, else one per class (one-vs-rest).
    eta_ : float

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from icgd.sklearn import InContextClassifier
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> clf = InContextClassifier(steps=50).fit(X[:400], y[:400])
    >>> clf.predict_proba(X[400:402]).shape
    (2, 2)
    """

    def __init__(self, steps=100, eta="auto", lam=0.0, knots=128, standardize=True, batch_size=256, device="cpu",
                 random_state=None):
        self.random_state = random_state
        self.steps = steps
        self.eta = eta
        self.lam = lam
        self.knots = knots
        self.standardize = standardize
        self.batch_size = batch_size
        self.device = device

    def _check_params(self) -> None:
        _check_int(self.steps, "steps", 1)
        _check_int(self.knots, "knots", 2)
        _check_int(self.batch_size, "batch_size", 1)
        _check_positive(self.lam, "lam", allow_zero=True)
        _check_eta(self.eta)
        _check_device(self.device)
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise SpecError(f"standardize must be True or False, got {self.standardize!r}")

    def fit(self, X, y):
        """Validate and standardise ``(X, y)`` and store them as the context (no training happens here).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (at least two classes).

        Returns
        -------
        self : InContextClassifier
        """
        self._check_params()
        _check_not_meta(X, "X")
        _check_not_meta(y, "y")
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        _check_standardizable(X, "X", self.standardize)
        _check_classifier_size(self, X, len(np.unique(y)))
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"InContextClassifier needs samples of at least 2 classes; the data contain only one "
                             f"class: {self.classes_[0]!r}")
        self.x_mean_, self.x_scale_ = _moments(X, self.standardize)
        self.context_X_ = np.hstack([(X - self.x_mean_) / self.x_scale_, np.ones((X.shape[0], 1))])
        onehot = (codes[:, None] == np.arange(len(self.classes_))).astype(np.float64)
        self.context_y_ = onehot[:, 1:] if len(self.classes_) == 2 else onehot
        eta = _check_eta(self.eta)
        self.eta_ = eta if eta is not None else logistic_step_size(self.context_X_, float(self.lam))
        return self

    def decision_function(self, X):
        """The logits ``w_stepsᵀ x̃`` read off the query tokens: ``(n_queries,)`` for two classes (positive means
        ``classes_[1]``), else ``(n_queries, n_classes)``, one per one-vs-rest problem."""
        check_is_fitted(self)
        _check_queries(self, X)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        Q = torch.from_numpy(np.hstack([(X - self.x_mean_) / self.x_scale_, np.ones((X.shape[0], 1))]))
        device = _check_device(self.device)
        K, (n, d) = self.context_y_.shape[1], self.context_X_.shape
        model = convex_gd(d, loss="logistic", eta=self.eta_, steps=self.steps, lam=float(self.lam),
                          knots=self.knots).to(device)
        Xc = torch.from_numpy(self.context_X_).to(device).expand(K, n, d)
        Yc = torch.from_numpy(self.context_y_.T.copy()).to(device)[..., None]
        outs = [model.predict(Xc, Yc, q.to(device).expand(K, -1, d))[..., 0].T.cpu()
                for q in _chunks(Q, self.batch_size)]
        Z = torch.cat(outs).numpy()
        return Z[:, 0] if K == 1 else Z

    def predict_proba(self, X):
        """Class probabilities, ``(n_queries, n_classes)``, rows summing to 1: ``[1 − σ(z), σ(z)]`` for two
        classes, else the one-vs-rest sigmoids normalised."""
        Z = self.decision_function(X)
        P = 1.0 / (1.0 + np.exp(-Z))
        if Z.ndim == 1:
            return np.stack([1.0 - P, P], axis=1)
        return P / P.sum(axis=1, keepdims=True)

    def predict(self, X):
        """The most probable class of each query, ``(n_queries,)``."""
        Z = self.decision_function(X)
        idx = (Z > 0).astype(int) if Z.ndim == 1 else Z.argmax(axis=1)
        return self.classes_[idx]
