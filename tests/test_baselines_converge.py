"""The lasso and k-NN baselines of the reproductions against independent references: a tightly converged
scikit-learn lasso (weights and predictions, small α and n < d included), the lasso's optimality (KKT) conditions
checked in numpy, the named warning at the iteration cap, and k-NN's tie rule against numpy's stable argsort."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.linear_model import Lasso as SkLasso

from icgd.errors import ConvergenceWarning, ICGDError
from icgd.learners import KNN, Lasso

F64 = torch.float64


def sparse_prompts(seed: int, B: int, n: int, d: int, nonzero: int = 3, m: int = 4):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    w = torch.zeros(B, d, 1, dtype=F64)
    w[:, :nonzero] = torch.randn(B, nonzero, 1, generator=g, dtype=F64)
    q = torch.randn(B, m, d, generator=g, dtype=F64)
    return X, X @ w, q


def lasso_weights(learner: Lasso, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """The learner's weights ``(B, d, 1)``, read off its predictions at the unit vectors."""
    eye = torch.eye(X.shape[-1], dtype=F64).expand(X.shape[0], -1, -1)
    return learner.predict(X, Y, eye)


def objective(X: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> float:
    return 0.5 / len(y) * float(np.sum((y - X @ w) ** 2)) + alpha * float(np.abs(w).sum())


def kkt(X: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """Largest violation of the lasso's optimality conditions, computed in numpy."""
    g = X.T @ (X @ w - y) / len(y)
    v = np.where(w != 0, np.abs(g + alpha * np.sign(w)), np.maximum(np.abs(g) - alpha, 0.0))
    return float(v.max())


@pytest.mark.parametrize("alpha,n,d", [(1e-3, 8, 20), (1e-4, 5, 10), (1e-4, 12, 20), (1e-2, 8, 20),
                                       (1e-3, 30, 10)])
def test_lasso_default_matches_tight_sklearn(alpha, n, d):
    X, Y, q = sparse_prompts(int(alpha * 1e4) + n + d, 6, n, d)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # the default must converge without hitting its cap
        learner = Lasso(alpha)
        W, pred = lasso_weights(learner, X, Y), learner.predict(X, Y, q)
    compared = 0
    for b in range(X.shape[0]):
        Xb, yb, wb = X[b].numpy(), Y[b, :, 0].numpy(), W[b, :, 0].numpy()
        assert kkt(Xb, yb, wb, alpha) <= 1e-9 * max(1.0, np.abs(Xb.T @ yb / n).max())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkConvergenceWarning)
            sk = SkLasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=300_000).fit(Xb, yb)
        if any(issubclass(c.category, SkConvergenceWarning) for c in caught):
            # sklearn itself did not converge: ours must be at least as good an optimum
            assert objective(Xb, yb, wb, alpha) <= objective(Xb, yb, sk.coef_, alpha) + 1e-15
            continue
        compared += 1
        np.testing.assert_allclose(wb, sk.coef_, atol=1e-7)
        np.testing.assert_allclose(pred[b, :, 0].numpy(), sk.predict(q[b].numpy()), atol=1e-7)
    assert compared >= 3


def test_lasso_prefixes_converge():
    X, Y, _ = sparse_prompts(3, 4, 12, 10, nonzero=2)
    alpha = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        pre = Lasso(alpha).prefix_predictions(X, Y)
    for b in range(X.shape[0]):
        for i in (2, 5, 9, 11):  # n < d and n > d prefixes
            sk = SkLasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=300_000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SkConvergenceWarning)
                sk.fit(X[b, :i].numpy(), Y[b, :i, 0].numpy())
            w_ref = sk.coef_
            ours = Lasso(alpha).predict(X[b:b + 1, :i], Y[b:b + 1, :i], torch.eye(10, dtype=F64)[None])[0, :, 0]
            assert kkt(X[b, :i].numpy(), Y[b, :i, 0].numpy(), ours.numpy(), alpha) <= 1e-9
            assert objective(X[b, :i].numpy(), Y[b, :i, 0].numpy(), ours.numpy(), alpha) <= \
                objective(X[b, :i].numpy(), Y[b, :i, 0].numpy(), w_ref, alpha) + 1e-15
            np.testing.assert_allclose(pre[b, i, 0].numpy(), X[b, i].numpy() @ ours.numpy(), atol=1e-9)


def test_lasso_warns_at_its_cap():
    X, Y, q = sparse_prompts(5, 4, 5, 10)
    with pytest.warns(ConvergenceWarning, match="iters=20"):
        Lasso(1e-4, iters=20).predict(X, Y, q)
    assert issubclass(ConvergenceWarning, ICGDError) and issubclass(ConvergenceWarning, UserWarning)
    with warnings.catch_warnings():  # an easy problem (n ≫ d, large α) converges well before a small cap
        warnings.simplefilter("error", ConvergenceWarning)
        X, Y, q = sparse_prompts(6, 4, 40, 4)
        Lasso(0.5, iters=200).predict(X, Y, q)


def knn_reference(X: np.ndarray, Y: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Uniform k-NN with ties broken by numpy's stable argsort of the distances (earlier pair first)."""
    out = []
    for x in q:
        dist = np.sqrt(((X - x) ** 2).sum(-1))
        out.append(Y[np.argsort(dist, kind="stable")[:k]].mean(0))
    return np.stack(out)


def test_knn_ties_go_to_the_earlier_pair():
    # context points on the integer lattice: many exactly equal distances to integer queries
    g = torch.Generator().manual_seed(11)
    X = torch.randint(-2, 3, (6, 12, 2), generator=g).to(F64)
    Y = torch.randn(6, 12, 1, generator=g, dtype=F64)
    q = torch.randint(-2, 3, (6, 5, 2), generator=g).to(F64)
    ties = 0
    for k in (1, 3, 4):
        pred, pre = KNN(k).predict(X, Y, q), KNN(k).prefix_predictions(X, Y)
        for b in range(6):
            Xb, Yb = X[b].numpy(), Y[b].numpy()
            np.testing.assert_allclose(pred[b].numpy(), knn_reference(Xb, Yb, q[b].numpy(), k), atol=1e-14)
            for i in range(1, 12):
                ref = knn_reference(Xb[:i], Yb[:i], Xb[i:i + 1], min(k, i))[0]
                np.testing.assert_allclose(pre[b, i].numpy(), ref, atol=1e-14)
            dist = np.sqrt(((Xb[None] - q[b].numpy()[:, None]) ** 2).sum(-1))
            kth = np.sort(dist, axis=1)[:, k - 1:k]
            ties += int(((dist == kth).sum(1) > 1).sum())
    assert ties > 10  # the case is tie-heavy, so the rule is what is being checked
