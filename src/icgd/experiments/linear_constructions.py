"""Run one of the regression constructions of :mod:`icgd.constructions` on random prompts and compare its
predictions with the algorithm it encodes, computed independently (closed forms and the learners of
:mod:`icgd.learners`). Backs ``icgd construct linear|gdpp|ridge|sgd|functional|convex``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from icgd.errors import SpecError
from icgd.memory import linear_check_memory

KINDS = ("linear", "gdpp", "ridge", "sgd", "functional", "convex")


@dataclass
class LinearCheckConfig:
    kind: str = "linear"
    d_in: int = 5
    n: int = 20
    m: int = 8
    batch: int = 16
    steps: int = 3
    eta: float = 0.3
    gamma: float = 0.5
    lam: float = 0.1
    kernel: str = "rbf"
    bandwidth: float = 1.0
    loss: str = "squared"
    knots: int = 64
    variant: str = "exact"
    seed: int = 0


@dataclass
class LinearCheckResult:
    cfg: LinearCheckConfig
    reference: str  # what the construction was compared with
    max_abs_error: float
    rel_error: float  # max |ŷ_TF − ŷ_ref| / max |ŷ_ref|
    summary: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _data(cfg: LinearCheckConfig):
    g = torch.Generator().manual_seed(cfg.seed)
    X = torch.randn(cfg.batch, cfg.n + cfg.m, cfg.d_in, generator=g, dtype=torch.float64)
    if cfg.kind == "functional":
        X = X / X.norm(dim=-1, keepdim=True)  # unit sphere (Cheng et al.), keeps exp⟨x, x'⟩ moderate
    w = torch.randn(cfg.batch, cfg.d_in, 1, generator=g, dtype=torch.float64)
    Y = X @ w + 0.1 * torch.randn(cfg.batch, cfg.n + cfg.m, 1, generator=g, dtype=torch.float64)
    if cfg.kind == "convex" and cfg.loss == "logistic":
        Y = (Y > 0).double()
    return X[:, :cfg.n], Y[:, :cfg.n], X[:, cfg.n:]


def _functional_reference(cfg: LinearCheckConfig, X, Y, Xq) -> torch.Tensor:
    from icgd.layers.attention import KERNELS

    k = KERNELS[cfg.kernel]
    K, Kq = k(X, X, cfg.bandwidth), k(Xq, X, cfg.bandwidth)
    alpha = torch.zeros_like(Y)
    for _ in range(cfg.steps):  # f_{t+1} = f_t + (η/n) Σ_i (y_i − f_t(x_i)) k(x_i, ·), f_t = Σ_i α_i k(x_i, ·)
        alpha = alpha + cfg.eta / cfg.n * (Y - K @ alpha)
    return Kq @ alpha


def _convex_reference(cfg: LinearCheckConfig, X, Y, Xq) -> torch.Tensor:
    w = torch.zeros(X.shape[0], cfg.d_in, 1, dtype=X.dtype)
    for _ in range(cfg.steps):
        p = X @ w
        d = torch.sigmoid(p) - Y if cfg.loss == "logistic" else p - Y
        w = w - cfg.eta * (X.transpose(1, 2) @ d / cfg.n + cfg.lam * w)
    return Xq @ w


def build_and_reference(cfg: LinearCheckConfig, X, Y, Xq):
    """The construction for `cfg`, the reference predictions and their description."""
    from icgd import constructions as C
    from icgd import learners as Lr

    if cfg.kind == "linear":
        ref = Lr.GD(cfg.eta, cfg.steps).predict(X, Y, Xq)
        return C.linear_gd(cfg.d_in, eta=cfg.eta, steps=cfg.steps), ref, f"GD, {cfg.steps} steps (closed form)"
    if cfg.kind == "gdpp":
        ref = Lr.GDPlusPlus(cfg.eta, cfg.gamma, cfg.steps).predict(X, Y, Xq)
        return (C.gd_plus_plus(cfg.d_in, eta=cfg.eta, gamma=cfg.gamma, steps=cfg.steps), ref,
                f"GD++, {cfg.steps} steps (icgd.learners.GDPlusPlus)")
    if cfg.kind == "ridge":
        ref = Lr.Ridge(cfg.lam).predict(X, Y, Xq)
        return (C.ridge(cfg.d_in, lam=cfg.lam, n_max=cfg.n, variant=cfg.variant), ref,
                "ridge closed form x_qᵀ(XᵀX + λI)⁻¹Xᵀy")
    if cfg.kind == "sgd":
        ref = Lr.SGD(cfg.eta, window=1, lam=cfg.lam).predict(X, Y, Xq)
        return (C.akyurek_gd(cfg.d_in, eta=cfg.eta, lam=cfg.lam, n_max=cfg.n, variant=cfg.variant), ref,
                "one-pass SGD (icgd.learners.SGD)")
    if cfg.kind == "functional":
        return (C.functional_gd(cfg.d_in, kernel=cfg.kernel, eta=cfg.eta, steps=cfg.steps,
                                bandwidth=cfg.bandwidth), _functional_reference(cfg, X, Y, Xq),
                f"functional GD in the RKHS of the {cfg.kernel} kernel, {cfg.steps} steps")
    if cfg.kind == "convex":
        return (C.convex_gd(cfg.d_in, loss=cfg.loss, eta=cfg.eta, steps=cfg.steps, lam=cfg.lam, knots=cfg.knots),
                _convex_reference(cfg, X, Y, Xq), f"GD on the {cfg.loss} loss + (λ/2)‖w‖², {cfg.steps} steps")
    raise SpecError(f"unknown construction {cfg.kind!r}; choose one of deep, {', '.join(KINDS)}")


def run_linear_check(cfg: LinearCheckConfig) -> LinearCheckResult:
    if cfg.kind not in KINDS:
        raise SpecError(f"unknown construction {cfg.kind!r}; choose one of deep, {', '.join(KINDS)}")
    linear_check_memory(cfg.kind, d_in=cfg.d_in, n=cfg.n, m=cfg.m, batch=cfg.batch, steps=cfg.steps,
                        knots=cfg.knots, loss=cfg.loss).check()  # before the prompts are drawn
    X, Y, Xq = _data(cfg)
    model, ref, what = build_and_reference(cfg, X, Y, Xq)
    t0 = time.perf_counter()
    pred = model.predict(X, Y, Xq)
    seconds = time.perf_counter() - t0
    err = float((pred - ref).abs().max())
    return LinearCheckResult(cfg, what, err, err / max(float(ref.abs().max()), 1e-300), model.summary(), seconds)
