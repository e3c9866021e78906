"""Linear reference learners, batched over prompts and over prefixes.

Conventions: a context is ``X (B, n, d)``, ``Y (B, n, d_out)``; a linear learner returns weights ``W (B, d, d_out)``
and predicts ``ŷ = x_qᵀ W``. ``S = XᵀX = Σ_i x_i x_iᵀ`` and ``b = XᵀY = Σ_i x_i y_iᵀ`` are un-normalised sums; the
learners that normalise by the number of pairs say so. Prefixes reuse the cumulative ``S_i``, ``b_i`` and counts
``i`` (:func:`~icgd.learners.base.prefix_grams`), so every 1/n is the prefix's own.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

from icgd._checks import positive_float, positive_int
from icgd.errors import ConvergenceWarning, NonFiniteError, SpecError
from icgd.learners.base import (GramLearner, Learner, check_context, check_targets, per_count, prefix_masks,
                                prompt_blocks)

_CHUNK_ELEMENTS = 1 << 24  # elements materialised at once by the chunked (masked) prefix paths


def _eye_like(S: torch.Tensor) -> torch.Tensor:
    return torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)


def pd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A⁻¹ b`` for a batch of symmetric positive-definite ``A``: Cholesky, or LU if any factorisation fails."""
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        return torch.linalg.solve(A, b)
    return torch.cholesky_solve(b, L)


def min_norm_solve(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``X⁺ Y`` for a batch of ``X (..., n, d)``: LAPACK ``gelsy`` (complete orthogonal factorisation, min-norm) on
    the CPU, the SVD pseudo-inverse elsewhere; both cut off at the relative level ``max(n, d)·eps``."""
    if X.device.type == "cpu":
        return torch.linalg.lstsq(X, Y, driver="gelsy").solution
    return torch.linalg.pinv(X) @ Y


class LeastSquares(Learner):
    """Minimum-norm least squares, ``ŵ = X⁺ y`` (= ``np.linalg.lstsq``; for n < d the min-norm interpolant).

    Solved on ``X`` itself (:func:`min_norm_solve`: pivoted QR on the CPU, SVD on GPUs, relative cut-off
    ``max(n, d)·eps`` like ``lstsq``'s default ``rcond``) rather than on the normal equations, which would square the
    condition number. This is the OLS baseline of Garg et al. 2022 and Akyürek et al. 2023 (§4.3; sklearn
    ``LinearRegression(fit_intercept=False)``).
    """

    name = "ols"

    def _predict(self, X, Y, x_query):
        return x_query @ min_norm_solve(X, Y)

    def _prefix(self, X, Y):
        # Rows j ≥ i set to zero change neither the min-norm solution nor X⁺'s other columns.
        B, n, d = X.shape
        out = X.new_zeros(B, n, Y.shape[-1])
        mask = prefix_masks(n, range(1, n), X.device).to(X.dtype)[None, :, :, None]  # (1, n−1, n, 1)
        for blk in prompt_blocks(B, n * n * (d + Y.shape[-1]), X.device):
            W = min_norm_solve(X[blk, None] * mask, Y[blk, None] * mask)  # (b, n−1, d, d_out)
            out[blk, 1:] = (X[blk, 1:, None, :] @ W).squeeze(-2)
        return out


class Ridge(GramLearner):
    """Ridge regression, ``ŵ = argmin Σ_i (wᵀx_i − y_i)² + λ‖w‖² = (XᵀX + λI)⁻¹ Xᵀy``.

    Same as sklearn ``Ridge(alpha=λ, fit_intercept=False)``. :meth:`bayes` gives the Bayes-optimal λ = σ²/τ² for
    ``w ~ N(0, τ² I)`` and noise ``N(0, σ²)`` (Akyürek et al. 2023, Eqs. 18–19). For λ = 0 use :class:`LeastSquares`.
    """

    name = "ridge"

    def __init__(self, lam: float = 0.1):
        self.lam = positive_float(lam, "lam (for λ = 0 use LeastSquares)")

    @classmethod
    def bayes(cls, sigma: float, tau: float) -> Ridge:
        """The posterior mean under ``w ~ N(0, τ² I)``, ``y = wᵀx + N(0, σ²)``: ridge with λ = σ²/τ²."""
        sigma, tau = positive_float(sigma, "sigma"), positive_float(tau, "tau")
        return cls(sigma * sigma / (tau * tau))

    def _weights(self, S, b, count):
        S.diagonal(dim1=-2, dim2=-1).add_(self.lam)  # S + λI in place: S is this call's own copy
        return pd_solve(S, b)

    def _hparams(self):
        return {"lam": self.lam}


def soft_threshold(z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``sign(z)·max(|z| − t, 0)``, the proximal map of ``t‖·‖₁``."""
    return torch.sign(z) * torch.relu(z.abs() - t)


class Lasso(GramLearner):
    """Lasso, ``ŵ = argmin 1/(2n) ‖y − Xw‖² + α‖w‖₁`` (= sklearn ``Lasso(alpha=α, fit_intercept=False)``).

    Solved by FISTA (Beck & Teboulle 2009) with step ``1/L``, ``L = λ_max(XᵀX)/n`` per problem, and the gradient
    restart of O'Donoghue & Candès 2015 (momentum reset when ``⟨z − w⁺, w⁺ − w⟩ > 0``), all problems of the batch
    iterated together; several outputs are independent lassos (as in sklearn). Every 10 iterations each problem's
    KKT violation is measured (with ``g = Gw − c``, ``G = XᵀX/n``, ``c = Xᵀy/n``: ``|g_j + α sign w_j|`` where
    ``w_j ≠ 0``, ``max(|g_j| − α, 0)`` where ``w_j = 0``), and every 100 iterations the iterate is also *polished*:
    the stationarity equations ``G_SS w_S = c_S − α sign(w_S)`` are solved exactly on the current support S and
    the result is kept if it satisfies the KKT conditions. A problem stops once its violation is at most
    ``tol'·max |c|``, ``tol' = max(tol, 100·eps(dtype))``, so the answer for a prompt does not depend on the rest of
    the batch. A problem still above that after `iters` iterations is returned as it is, with a
    :class:`~icgd.errors.ConvergenceWarning` saying how many and how far.
    """

    name = "lasso"

    def __init__(self, alpha: float = 0.1, iters: int = 100_000, tol: float = 1e-10):
        self.alpha = positive_float(alpha, "alpha", allow_zero=True)
        self.iters = positive_int(iters, "iters")
        self.tol = positive_float(tol, "tol", allow_zero=True)

    def _weights(self, S, b, count):
        n = per_count(count, S)
        d, k = b.shape[-2:]
        G, c = (S / n).reshape(-1, 1, d, d), (b / n).reshape(-1, d, k)
        # one single-output problem per (prompt, output): outputs are independent lassos with their own supports
        G = G.expand(-1, k, d, d).reshape(-1, d, d)
        c = c.transpose(-1, -2).reshape(-1, d, 1)
        L = torch.linalg.eigvalsh(G)[:, -1:, None]  # (P, 1, 1)
        step = torch.where(L > 0, 1.0 / L.clamp(min=torch.finfo(S.dtype).tiny), torch.zeros_like(L))
        out = torch.zeros_like(c).index_copy_(0, *self._fista(G, c, step))
        return out.reshape(-1, k, d).transpose(-1, -2).reshape(b.shape)

    def kkt_violation(self, G: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Largest violation of the lasso's optimality conditions per problem, ``(P,)`` (0 exactly at the optimum)."""
        g = G @ w - c
        v = torch.where(w != 0, (g + self.alpha * torch.sign(w)).abs(), torch.relu(g.abs() - self.alpha))
        return v.amax(dim=(-1, -2))

    def _polish(self, G: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Solve ``G_SS w_S = c_S − α sign(w_S)`` on each problem's support S (0 off it), pruning S between rounds
        (at most d): coordinates whose solution disagrees in sign with the iterate leave S, and where the system is
        singular the smallest coordinate of the iterate leaves. The caller keeps the result only if its KKT
        violation is smaller than the iterate's."""
        on, sign = w != 0, torch.sign(w)  # (P, d, 1)
        eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device).expand_as(G)
        sol = w
        for _ in range(G.shape[-1]):
            A = torch.where(on & on.transpose(-1, -2), G, eye)
            sol, info = torch.linalg.solve_ex(A, torch.where(on, c - self.alpha * sign, torch.zeros_like(w)))
            singular = ((info != 0)[:, None, None] | ~torch.isfinite(sol).all(-2, keepdim=True))
            smallest = torch.where(on, w.abs(), torch.full_like(w, math.inf)).argmin(-2, keepdim=True)
            drop = torch.zeros_like(on).scatter_(-2, smallest, True) & singular
            drop = drop | (on & ~singular & (torch.sign(sol) != sign))
            if not bool(drop.any()):
                break
            on = on & ~drop
        return torch.where(on, sol, torch.zeros_like(sol))

    def _fista(self, G: torch.Tensor, c: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FISTA with restart and polishing on problems ``(P, d, d)``, ``(P, d, 1)``; returns (problem indices,
        solutions). Every 10 iterations the converged problems leave the batch, so easy problems cost little."""
        idx = torch.arange(G.shape[0], device=G.device)
        if idx.numel() == 0:
            return idx, c
        thresh = step * self.alpha
        scale = c.abs().amax(dim=(-1, -2)) * max(self.tol, 100 * torch.finfo(G.dtype).eps)
        w = torch.zeros_like(c)
        z, t = w, torch.ones_like(step)
        done_idx, done_w = [], []
        for it in range(self.iters):
            w_new = soft_threshold(z - step * (G @ z - c), thresh)
            restart = ((z - w_new) * (w_new - w)).sum(dim=(-1, -2), keepdim=True) > 0
            t_new = torch.where(restart, torch.ones_like(t), 0.5 * (1 + torch.sqrt(1 + 4 * t * t)))
            z = torch.where(restart, w_new, w_new + ((t - 1) / t_new) * (w_new - w))
            w, t = w_new, t_new
            if (it + 1) % 10 and it != self.iters - 1:
                continue
            cand, viol = w, self.kkt_violation(G, c, w)
            if (it + 1) % 100 == 0:  # a candidate answer; the iteration itself is left as it is
                polished = self._polish(G, c, w)
                v_pol = self.kkt_violation(G, c, polished)
                cand, viol = torch.where((v_pol <= viol)[:, None, None], polished, w), torch.minimum(viol, v_pol)
            done = viol <= scale
            if it == self.iters - 1 and not bool(done.all()):
                self._warn_cap(viol[~done], scale[~done])
                done = torch.ones_like(done)
            if bool(done.any()):
                done_idx.append(idx[done]), done_w.append(cand[done])
                keep = ~done
                idx, G, c, step, thresh, scale = idx[keep], G[keep], c[keep], step[keep], thresh[keep], scale[keep]
                w, z, t = w[keep], z[keep], t[keep]
                if idx.numel() == 0:
                    break
        return torch.cat(done_idx), torch.cat(done_w)

    def _warn_cap(self, viol: torch.Tensor, scale: torch.Tensor) -> None:
        rel = float((viol / scale.clamp(min=torch.finfo(viol.dtype).tiny)).max())
        warnings.warn(ConvergenceWarning(
            f"Lasso(alpha={self.alpha:g}) stopped at its cap of iters={self.iters} with {viol.numel()} problem(s) "
            f"above the KKT tolerance (worst {rel:.3g}× the tolerance); raise iters, or loosen tol={self.tol:g}"),
            stacklevel=4)

    def _hparams(self):
        return {"alpha": self.alpha, "iters": self.iters, "tol": self.tol}


class LineSearch(NamedTuple):
    """The result of :meth:`GD.tune`: the grid of step sizes and the held-out mean squared error of each."""

    grid: torch.Tensor
    loss: torch.Tensor


class GD(GramLearner):
    """k steps of gradient descent from ``W_0 = 0`` on ``L(W) = 1/(2n) Σ_i ‖Wᵀx_i − y_i‖²``:

        ``W_{t+1} = W_t − η ∇L(W_t) = W_t − (η/n) (S W_t − b)``

    exactly this recursion (the reference of von Oswald et al. 2023, Prop. 1: one LSA layer with ``P = η/N``
    is one step with this η). :meth:`tune` picks η by line search on held-out tasks (von Oswald's ``scan_lrs``).
    """

    name = "gd"

    def __init__(self, eta: float, steps: int = 1):
        self.eta = positive_float(eta, "eta")
        self.steps = positive_int(steps, "steps", minimum=0)
        self.tuning: LineSearch | None = None

    def _weights(self, S, b, count):
        return gd_weights(S, b, count, torch.tensor(self.eta, dtype=S.dtype, device=S.device), self.steps)

    @classmethod
    def tune(cls, X, Y, x_query, y_query, steps: int = 1, grid=None) -> GD:
        """``GD(η*, steps)`` with η* minimising the mean squared error at ``x_query`` over the given tasks.

        `grid` defaults to von Oswald et al.'s ``np.arange(0.001, 25, 0.1)`` (250 values) divided by ``12·s``, where
        ``s`` is the mean of ``x²`` over all context entries: for their inputs ``U(−½, ½)`` (``s = 1/12``) this is
        exactly their grid, and for other scales it covers the same range of ``η·λ(S/n)``. Non-finite losses
        (divergent η) never win. The grid and losses are kept in ``.tuning`` (a :class:`LineSearch`); check that η*
        is not at the end of the grid.
        """
        X, Y, q, _ = check_context(X, Y, x_query)
        assert q is not None
        yq = check_targets(y_query, "y_query", q, Y.shape[-1])
        steps = positive_int(steps, "steps", minimum=0)
        if grid is None:
            s = float((X * X).mean())
            grid = np.arange(0.001, 25, 0.1) / (12.0 * s if s > 0 else 1.0)
        grid = torch.as_tensor(np.asarray(grid, dtype=np.float64), dtype=X.dtype, device=X.device).reshape(-1)
        if grid.numel() == 0 or not bool(torch.isfinite(grid).all() and (grid > 0).all()):
            raise SpecError(f"grid must hold finite step sizes > 0, got {grid.tolist()[:5]}...")
        XT = X.transpose(-1, -2)
        S, b = XT @ X, XT @ Y
        count = torch.full(X.shape[:1], X.shape[1], dtype=X.dtype, device=X.device)
        per_eta = max(1, _CHUNK_ELEMENTS // max(1, X.shape[0] * max(S.shape[-1], q.shape[1]) * Y.shape[-1]))
        losses = []
        for g0 in range(0, grid.numel(), per_eta):
            W = gd_weights(S, b, count, grid[g0:g0 + per_eta], steps)  # (G, B, d, d_out)
            losses.append(((q @ W - yq) ** 2).mean(dim=(1, 2, 3)))
        loss = torch.cat(losses)
        finite = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.inf))
        if not bool(torch.isfinite(finite).any()):
            raise NonFiniteError("every step size in the grid diverged; pass a grid of smaller step sizes")
        best = cls(float(grid[int(torch.argmin(finite))]), steps)
        best.tuning = LineSearch(grid, loss)
        return best

    def _hparams(self):
        return {"eta": self.eta, "steps": self.steps}


def gd_weights(S: torch.Tensor, b: torch.Tensor, count: torch.Tensor, eta: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` GD steps from 0 for every problem; ``eta`` is a scalar tensor or a grid ``(G,)`` (leading output
    axis). An empty context (count 0) has zero gradient and keeps ``W = 0``."""
    n = per_count(count, S)
    scale = (eta.reshape(-1, *([1] * b.dim())) if eta.dim() else eta) / n
    W = torch.zeros_like(scale * b)
    for _ in range(steps):
        W = W - scale * (S @ W - b)
    return W


class GDPlusPlus(GramLearner):
    """GD++ (von Oswald et al. 2023, §3 and App. A.10), in icgd's normalised convention.

    Every token j (context and query) holds ``x_j`` and a residual ``r_j`` (context ``r_i = y_i``, query
    ``r_q = 0``). Each step, with the pre-step values on both right-hand sides,

        ``r_j ← r_j − (η/n) Σ_{i≤n} r_i (x_iᵀ x_j)``,    ``x_j ← x_j − (γ/n) Σ_{i≤n} x_i (x_iᵀ x_j)``,

    and the prediction is ``−r_q``. The paper writes ``H(X) = I − γ_paper XXᵀ`` with an un-normalised sum, so
    ``γ_paper = γ/n``; its η (``P = η/N``) is ours. With γ = 0 this is :class:`GD` exactly.

    Computed on d×d matrices: with ``x_j⁽ᵗ⁾ = A_t x_j`` and ``r_j⁽ᵗ⁾ = y_j − W_tᵀx_j`` (``−W_tᵀx_q`` for the query),
    ``W_{t+1} = W_t + (η/n) A_tᵀA_t (b − S W_t)`` and ``A_{t+1} = (I − (γ/n) A_t S A_tᵀ) A_t`` with ``A_0 = I``.
    """

    name = "gdpp"

    def __init__(self, eta: float, gamma: float, steps: int = 1):
        self.eta = positive_float(eta, "eta")
        self.gamma = positive_float(gamma, "gamma", allow_zero=True)
        self.steps = positive_int(steps, "steps", minimum=0)

    def _weights(self, S, b, count):
        n = per_count(count, S)
        I = _eye_like(S)
        A = I.expand_as(S)
        W = torch.zeros_like(b)
        for _ in range(self.steps):
            AT = A.transpose(-1, -2)
            W_next = W + (self.eta / n) * (AT @ A @ (b - S @ W))
            A = (I - (self.gamma / n) * (A @ S @ AT)) @ A
            W = W_next
        return W

    def _hparams(self):
        return {"eta": self.eta, "gamma": self.gamma, "steps": self.steps}


class Newton(GramLearner):
    """Iterative Newton (Newton–Schulz) for ``S⁺``, Fu et al. 2024: ``S = XᵀX``, ``M_0 = α S``,
    ``M_{k+1} = 2M_k − M_k S M_k``, ``ŵ_k = M_k Xᵀy``.

    ``α = 1/‖S Sᵀ‖_F`` (the official evaluation code), not the paper's ``2/‖S Sᵀ‖₂``: the error
    ``E_k = I − M_k S = E_0^{2^k}`` has eigenvalues ``(1 − αλ²)^{2^k}``, and with ``α = 2/λ_max²`` the top
    eigendirection sits at ``(−1)^{2^k} = 1`` for ever. ``‖SSᵀ‖_F ≥ λ_max²`` keeps every ``αλ² ∈ (0, 1]``, so the
    iterates converge (quadratically, once ``αλ_min²`` is no longer tiny) to ``S⁺`` and ``ŵ`` to the min-norm OLS.
    """

    name = "newton"

    def __init__(self, steps: int = 20):
        self.steps = positive_int(steps, "steps", minimum=0)

    def _weights(self, S, b, count):
        norm = torch.linalg.matrix_norm(S @ S.transpose(-1, -2))[..., None, None]
        alpha = torch.where(norm > 0, 1.0 / norm.clamp(min=torch.finfo(S.dtype).tiny), torch.zeros_like(norm))
        M = alpha * S
        for _ in range(self.steps):
            M = 2 * M - M @ S @ M
        return M @ b

    def _hparams(self):
        return {"steps": self.steps}


class Averaging(GramLearner):
    """Garg et al. 2022's averaging estimator: ``ŵ = (1/n) Σ_i y_i x_i``, prediction ``ŵᵀx_q``."""

    name = "averaging"

    def _weights(self, S, b, count):
        return b / per_count(count, b)

    def _predict(self, X, Y, x_query):  # only b is needed: skip the d×d statistics
        return x_query @ (X.transpose(-1, -2) @ Y / X.shape[1])

    def _prefix(self, X, Y):
        b = (X[:, :-1, :, None] * Y[:, :-1, None, :]).cumsum_(dim=1)
        count = torch.arange(1, X.shape[1], device=X.device, dtype=X.dtype)
        out = X.new_zeros(*X.shape[:2], Y.shape[-1])
        out[:, 1:] = (X[:, 1:, None, :] @ (b / count[:, None, None])).squeeze(-2)
        return out


class SGD(Learner):
    """Online (one-pass) gradient descent of Akyürek et al. 2023 (§4.3), with an optional window.

    With ``w⁽⁰⁾ = 0`` and the pairs arriving in order, after pair t (0-based) arrives

        ``w⁽ᵗ⁺¹⁾ = w⁽ᵗ⁾ − 2α ( Σ_{j∈W_t} (x_j x_jᵀ w⁽ᵗ⁾ − x_j y_j) + λ w⁽ᵗ⁾ )``,
        ``W_t = {j : max(0, t + 1 − window) ≤ j ≤ t}``,

    i.e. the `window` most recent pairs, the new one included (un-normalised sum, λ once per step). The prediction
    at ``x_i`` uses ``w⁽ⁱ⁾``, which has seen pairs ``0 … i−1`` only; :meth:`predict` uses ``w⁽ⁿ⁾``.

    * ``window=1`` (default ``None`` is different!) is the paper's one-pass SGD,
      ``w_i = w_{i−1} − 2α(x_{i−1}x_{i−1}ᵀw_{i−1} − x_{i−1}y_{i−1} + λw_{i−1})``.
    * ``window=None`` uses every pair seen so far (one growing-batch GD step per arrival), ``window=-1`` in Akyürek et al.'s
      published code.

    Correct windowing, compared with Akyürek et al.'s published code (``algos.SGD.iterate``): that code starts each window at
    ``min(0, i − window)``, which is ≤ 0, so its windows are never windows: for ``i ≥ window`` the step uses the
    whole prefix ``x[0 : i+1]``, and for ``i < window`` the negative start wraps round to the end of the array and
    the slice is empty (no step). Even ``max(0, i − window)`` would take ``window + 1`` pairs. Here ``W_t`` holds
    exactly ``min(window, t + 1)`` pairs. That code's gradient clamp to ±20 is not applied.
    """

    name = "sgd"

    def __init__(self, lr: float, window: int | None = None, lam: float = 0.0):
        self.lr = positive_float(lr, "lr")
        self.window = None if window is None else positive_int(window, "window")
        self.lam = positive_float(lam, "lam", allow_zero=True)

    def _run(self, X: torch.Tensor, Y: torch.Tensor, record: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final weights ``(B, d, d_out)`` and, if `record`, the prediction at each x_t before its step."""
        B, n, d = X.shape
        W = X.new_zeros(B, d, Y.shape[-1])
        preds = X.new_zeros(B, n, Y.shape[-1]) if record else None
        for t in range(n):
            if preds is not None:
                preds[:, t] = (X[:, t, None, :] @ W)[:, 0]
            start = 0 if self.window is None else max(0, t + 1 - self.window)
            Xw, Yw = X[:, start:t + 1], Y[:, start:t + 1]
            grad = Xw.transpose(-1, -2) @ (Xw @ W - Yw)
            if self.lam:
                grad = grad + self.lam * W
            W = W - (2 * self.lr) * grad
        return W, preds

    def _predict(self, X, Y, x_query):
        return x_query @ self._run(X, Y, record=False)[0]

    def _prefix(self, X, Y):
        preds = self._run(X, Y, record=True)[1]
        assert preds is not None
        return preds

    def _hparams(self):
        return {"lr": self.lr, "window": self.window, "lam": self.lam}
