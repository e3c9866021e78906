"""The batched reference learners of icgd.learners against numpy, scikit-learn and torch.nn written per prompt.

Every learner is checked prompt by prompt against an independent implementation (np.linalg.lstsq, sklearn's
Ridge / Lasso / KNeighborsRegressor / KernelRidge, or a plain numpy loop of the defining recursion), then its
prefix_predictions against predict on each prefix, unbatched against batched, and its input errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import Lasso as SkLasso
from sklearn.linear_model import Ridge as SkRidge
from sklearn.neighbors import KNeighborsRegressor

from icgd.errors import NonFiniteError, ShapeError, SpecError
from icgd.layers.attention import KERNELS
from icgd.learners import (GD, KNN, LEARNERS, SGD, Averaging, DirectTraining, GDPlusPlus, KernelRegression, Lasso,
                           Learner, LeastSquares, Newton, Ridge, make_learner, r2_per_position)

F64 = torch.float64


def prompts(gen, B=4, n=12, d=4, k=1, m=3, noise=0.1):
    """Linear-teacher prompts ``X (B, n, d)``, ``Y (B, n, k)`` and queries ``(B, m, d)`` in float64."""
    X = torch.randn(B, n, d, generator=gen, dtype=F64)
    w = torch.randn(B, d, k, generator=gen, dtype=F64)
    Y = X @ w + noise * torch.randn(B, n, k, generator=gen, dtype=F64)
    q = torch.randn(B, m, d, generator=gen, dtype=F64)
    return X, Y, q


def small_direct(**kw) -> DirectTraining:
    return DirectTraining(**{"depth": 3, "width": 8, "epochs": 15, "lr": 1e-2, **kw})


# one instance of every learner, cheap enough for the generic checks
ALL = [
    LeastSquares(), Ridge(0.3), Lasso(0.05, iters=3000, tol=1e-13), GD(0.2, steps=3), GDPlusPlus(0.2, 0.05, 3),
    Newton(30), SGD(0.02, window=3, lam=0.01), KNN(3, "distance"), Averaging(),
    KernelRegression("rbf", 1.5, lam=0.1), KernelRegression("linear", lam=0.0), small_direct(),
]


def ids(learners):
    return [repr(le) for le in learners]


# ---- each learner against an independent implementation ------------------------------------------------------


@pytest.mark.parametrize("n,d,k", [(12, 4, 1), (3, 6, 2)])
def test_ols_matches_lstsq(gen, n, d, k):
    X, Y, q = prompts(gen, n=n, d=d, k=k)
    pred = LeastSquares().predict(X, Y, q)
    for b in range(X.shape[0]):
        w = np.linalg.lstsq(X[b].numpy(), Y[b].numpy(), rcond=None)[0]
        np.testing.assert_allclose(pred[b].numpy(), q[b].numpy() @ w, rtol=0, atol=1e-11)


@pytest.mark.parametrize("n,d,k", [(12, 4, 1), (3, 6, 2)])
def test_ridge_matches_sklearn(gen, n, d, k):
    X, Y, q = prompts(gen, n=n, d=d, k=k)
    pred = Ridge(0.7).predict(X, Y, q)
    for b in range(X.shape[0]):
        sk = SkRidge(alpha=0.7, fit_intercept=False).fit(X[b].numpy(), Y[b].numpy())
        np.testing.assert_allclose(pred[b].numpy(), sk.predict(q[b].numpy()).reshape(-1, k), atol=1e-11)


def test_ridge_bayes_lambda():
    assert Ridge.bayes(sigma=0.5, tau=2.0).lam == pytest.approx(0.0625)
    with pytest.raises(SpecError):
        Ridge.bayes(sigma=0.0, tau=1.0)


@pytest.mark.parametrize("n,d,k", [(20, 5, 1), (6, 8, 2)])
def test_lasso_matches_sklearn(gen, n, d, k):
    X, Y, q = prompts(gen, n=n, d=d, k=k)
    alpha = 0.6
    learner = Lasso(alpha, iters=20000, tol=1e-14)
    pred = learner.predict(X, Y, q)
    zeros = 0
    for b in range(X.shape[0]):
        sk = SkLasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=200000).fit(X[b].numpy(), Y[b].numpy())
        np.testing.assert_allclose(pred[b].numpy(), sk.predict(q[b].numpy()).reshape(-1, k), atol=1e-7)
        zeros += int((np.abs(sk.coef_) == 0).sum())
    assert zeros > 0  # the penalty is large enough to zero some coefficients: the proximal step is exercised


def gd_numpy(X, Y, xq, eta, steps):
    """W_{t+1} = W_t − η (1/n) Σ_i (W_t x_i − y_i) x_iᵀ, sample by sample."""
    n, d = X.shape
    W = np.zeros((Y.shape[1], d))
    for _ in range(steps):
        grad = np.zeros_like(W)
        for x, y in zip(X, Y):
            grad += np.outer(W @ x - y, x)
        W = W - eta * grad / n
    return xq @ W.T


def test_gd_matches_numpy_loop(gen):
    X, Y, q = prompts(gen, n=9, d=4, k=2)
    pred = GD(0.3, steps=7).predict(X, Y, q)
    for b in range(X.shape[0]):
        ref = gd_numpy(X[b].numpy(), Y[b].numpy(), q[b].numpy(), 0.3, 7)
        np.testing.assert_allclose(pred[b].numpy(), ref, rtol=0, atol=1e-12)


def test_gd_zero_steps_predicts_zero(gen):
    X, Y, q = prompts(gen)
    assert torch.equal(GD(0.5, steps=0).predict(X, Y, q), torch.zeros(4, 3, 1, dtype=F64))


def test_gd_tune_line_search(gen):
    X, Y, _ = prompts(gen, B=64, n=10, d=3, noise=0.0)
    Xc, Yc, xq, yq = X[:, :8], Y[:, :8], X[:, 8:], Y[:, 8:]
    grid = [0.05, 0.2, 0.4, 0.8, 1.2]
    tuned = GD.tune(Xc, Yc, xq, yq, steps=2, grid=grid)
    mse = [float(((GD(e, 2).predict(Xc, Yc, xq) - yq) ** 2).mean()) for e in grid]
    assert tuned.eta == grid[int(np.argmin(mse))]
    assert tuned.steps == 2
    np.testing.assert_allclose(tuned.tuning.loss.numpy(), mse, rtol=1e-12)
    # the default grid is von Oswald's np.arange(0.001, 25, 0.1) when E[x²] = 1/12 (their U(−½, ½) inputs)
    U = torch.rand(8, 10, 3, generator=gen, dtype=F64) - 0.5
    U = U / (12 * (U * U).mean()).sqrt()
    default = GD.tune(U, U[..., :1], U[:, :2], U[:, :2, :1], steps=1)
    np.testing.assert_allclose(default.tuning.grid.numpy(), np.arange(0.001, 25, 0.1), rtol=1e-12)


def gdpp_numpy(X, Y, xq, eta, gamma, steps):
    """GD++ on tokens: r_j ← r_j − (η/n) Σ_i r_i x_iᵀx_j, x_j ← x_j − (γ/n) Σ_i x_i x_iᵀx_j, pre-step values."""
    n = X.shape[0]
    xs = np.vstack([X, xq])
    r = np.vstack([Y, np.zeros((xq.shape[0], Y.shape[1]))])
    for _ in range(steps):
        x_old, r_old = xs.copy(), r.copy()
        for j in range(xs.shape[0]):
            r[j] = r_old[j] - eta / n * sum(r_old[i] * (x_old[i] @ x_old[j]) for i in range(n))
            xs[j] = x_old[j] - gamma / n * sum(x_old[i] * (x_old[i] @ x_old[j]) for i in range(n))
    return -r[n:]


def test_gdpp_matches_token_recursion(gen):
    X, Y, q = prompts(gen, n=8, d=3, k=2)
    pred = GDPlusPlus(0.4, 0.15, steps=4).predict(X, Y, q)
    for b in range(X.shape[0]):
        ref = gdpp_numpy(X[b].numpy(), Y[b].numpy(), q[b].numpy(), 0.4, 0.15, 4)
        np.testing.assert_allclose(pred[b].numpy(), ref, rtol=0, atol=1e-12)
    assert not torch.allclose(pred, GD(0.4, steps=4).predict(X, Y, q), atol=1e-3)


def test_gdpp_gamma_zero_is_gd(gen):
    X, Y, q = prompts(gen, k=2)
    a = GDPlusPlus(0.3, 0.0, steps=5)
    b = GD(0.3, steps=5)
    torch.testing.assert_close(a.predict(X, Y, q), b.predict(X, Y, q), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.prefix_predictions(X, Y), b.prefix_predictions(X, Y), rtol=0, atol=1e-12)


def test_newton_recursion_and_limit(gen):
    X, Y, q = prompts(gen, n=10, d=4, k=2)
    S = X[0].numpy().T @ X[0].numpy()
    M = S / np.linalg.norm(S @ S.T)  # Frobenius norm
    for _ in range(3):
        M = 2 * M - M @ S @ M
    ref = q[0].numpy() @ (M @ X[0].numpy().T @ Y[0].numpy())
    np.testing.assert_allclose(Newton(3).predict(X, Y, q)[0].numpy(), ref, atol=1e-12)
    for n, d in [(10, 4), (3, 6)]:  # over- and under-determined: the limit is the min-norm OLS
        X, Y, q = prompts(gen, n=n, d=d, k=2)
        torch.testing.assert_close(Newton(40).predict(X, Y, q), LeastSquares().predict(X, Y, q), rtol=0, atol=1e-9)
    assert (Newton(2).predict(X, Y, q) - LeastSquares().predict(X, Y, q)).abs().max() > 1e-3


def sgd_numpy(X, Y, lr, window, lam):
    """Akyürek's online SGD, w ← w − 2α(Σ_{j∈window} (x_j x_jᵀ w − x_j y_j) + λ w); returns the prediction at each
    x_t before its step, and the final w."""
    n, d = X.shape
    w = np.zeros((d, Y.shape[1]))
    preds = []
    for t in range(n):
        preds.append(X[t] @ w)
        start = 0 if window is None else max(0, t + 1 - window)
        grad = lam * w
        for j in range(start, t + 1):
            grad = grad + np.outer(X[j], X[j] @ w - Y[j])
        w = w - 2 * lr * grad
    return np.array(preds), w


@pytest.mark.parametrize("window,lam", [(1, 0.0), (1, 0.05), (3, 0.0), (None, 0.01)])
def test_sgd_matches_numpy_loop(gen, window, lam):
    X, Y, q = prompts(gen, n=10, d=3, k=2)
    learner = SGD(0.03, window=window, lam=lam)
    pre, pred = learner.prefix_predictions(X, Y), learner.predict(X, Y, q)
    for b in range(X.shape[0]):
        ref_pre, w = sgd_numpy(X[b].numpy(), Y[b].numpy(), 0.03, window, lam)
        np.testing.assert_allclose(pre[b].numpy(), ref_pre, rtol=0, atol=1e-12)
        np.testing.assert_allclose(pred[b].numpy(), q[b].numpy() @ w, rtol=0, atol=1e-12)


def test_sgd_window_semantics(gen):
    X, Y, q = prompts(gen, n=6)
    full = SGD(0.02).predict(X, Y, q)
    torch.testing.assert_close(SGD(0.02, window=6).predict(X, Y, q), full, rtol=0, atol=0)
    assert (SGD(0.02, window=5).predict(X, Y, q) - full).abs().max() > 1e-6  # a window that does cut
    # window=1 is the paper's one-pass SGD: after two pairs, w = w1 − 2α x1(x1ᵀw1 − y1) with w1 = 2α x0 y0
    lr, x0, y0, x1, y1 = 0.1, X[0, 0], Y[0, 0], X[0, 1], Y[0, 1]
    w1 = 2 * lr * x0[:, None] * y0
    w2 = w1 - 2 * lr * x1[:, None] * (x1 @ w1 - y1)
    torch.testing.assert_close(SGD(lr, window=1).prefix_predictions(X, Y)[0, 2], X[0, 2] @ w2, rtol=0, atol=1e-14)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_matches_sklearn(gen, weights):
    X, Y, q = prompts(gen, n=10, d=3, k=2, m=4)
    pred = KNN(3, weights).predict(X, Y, q)
    pre = KNN(3, weights).prefix_predictions(X, Y)
    for b in range(X.shape[0]):
        sk = KNeighborsRegressor(3, weights=weights).fit(X[b].numpy(), Y[b].numpy())
        np.testing.assert_allclose(pred[b].numpy(), sk.predict(q[b].numpy()), atol=1e-12)
        for i in range(1, 10):  # fewer than k pairs: all of them
            sk = KNeighborsRegressor(min(3, i), weights=weights).fit(X[b, :i].numpy(), Y[b, :i].numpy())
            np.testing.assert_allclose(pre[b, i].numpy(), sk.predict(X[b, i:i + 1].numpy())[0], atol=1e-12)
    assert torch.equal(pre[:, 0], torch.zeros(4, 2, dtype=F64))


def test_knn_duplicates_like_sklearn(gen):
    X, Y, _ = prompts(gen, B=1, n=8, d=2, k=1)
    X[0, 5] = X[0, 2]  # two context points at the same place, different targets
    q = torch.stack([X[0, 2], X[0, 4], X[0, 0] + 0.1])[None]  # on the duplicate, on a single point, elsewhere
    for weights in ("uniform", "distance"):
        sk = KNeighborsRegressor(3, weights=weights, algorithm="kd_tree").fit(X[0].numpy(), Y[0].numpy())
        pred = KNN(3, weights).predict(X, Y, q)[0]
        np.testing.assert_allclose(pred.numpy(), sk.predict(q[0].numpy()), atol=1e-12)
    # on a duplicate, distance weighting is the mean of the coinciding targets
    torch.testing.assert_close(KNN(3, "distance").predict(X, Y, q)[0, 0], (Y[0, 2] + Y[0, 5]) / 2)


def test_averaging(gen):
    X, Y, q = prompts(gen, k=2)
    pred = Averaging().predict(X, Y, q)
    for b in range(X.shape[0]):
        w = (Y[b].numpy()[:, None, :] * X[b].numpy()[:, :, None]).mean(0)  # (d, k)
        np.testing.assert_allclose(pred[b].numpy(), q[b].numpy() @ w, atol=1e-13)


@pytest.mark.parametrize("kernel", ["rbf", "linear", "relu", "exp"])
def test_kernel_matches_sklearn(gen, kernel):
    X, Y, q = prompts(gen, n=9, d=3, k=2)
    X, q = 0.5 * X, 0.5 * q
    bw, lam = 1.3, 0.2
    learner = KernelRegression(kernel, bandwidth=bw, lam=lam)
    pred = learner.predict(X, Y, q)
    for b in range(X.shape[0]):
        Xb, qb = X[b].numpy(), q[b].numpy()
        if kernel in ("rbf", "linear"):
            kw = {"gamma": 1 / (2 * bw * bw)} if kernel == "rbf" else {}
            sk = KernelRidge(alpha=lam, kernel=kernel, **kw).fit(Xb, Y[b].numpy())
            ref = sk.predict(qb)
        else:
            f = (lambda a: np.maximum(a, 0)) if kernel == "relu" else np.exp
            sk = KernelRidge(alpha=lam, kernel="precomputed").fit(f(Xb @ Xb.T), Y[b].numpy())
            ref = sk.predict(f(qb @ Xb.T))
        np.testing.assert_allclose(pred[b].numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("kernel", ["rbf", "linear", "relu", "exp"])
def test_kernel_gram_is_the_attention_kernel(gen, kernel):
    A = torch.randn(3, 30, 4, generator=gen, dtype=F64)
    B = torch.randn(3, 27, 4, generator=gen, dtype=F64)
    got = KernelRegression(kernel, bandwidth=0.8).gram(A, B)
    torch.testing.assert_close(got, KERNELS[kernel](A, B, 0.8), rtol=0, atol=1e-12)


def test_kernel_noiseless_gp_mean(gen):
    X, Y, q = prompts(gen, n=6, d=3, k=1)
    pred = KernelRegression("exp", lam=0.0).predict(0.4 * X, Y, 0.4 * q)
    for b in range(X.shape[0]):
        Xb, qb = 0.4 * X[b].numpy(), 0.4 * q[b].numpy()
        ref = np.exp(qb @ Xb.T) @ np.linalg.pinv(np.exp(Xb @ Xb.T)) @ Y[b].numpy()
        np.testing.assert_allclose(pred[b].numpy(), ref, atol=1e-8)
    # linear kernel, λ = 0: the GP posterior mean is min-norm OLS
    torch.testing.assert_close(KernelRegression("linear").predict(X[:, :2], Y[:, :2], q),
                               LeastSquares().predict(X[:, :2], Y[:, :2], q), rtol=0, atol=1e-10)


# ---- direct training (Wu et al.) -------------------------------------------------------------------------------


def torch_reference(learner: DirectTraining, X, Y, q, optimizer="adam"):
    """The same network per prompt with torch.nn and torch.optim, predictions after every epoch."""
    d, k = X.shape[-1], Y.shape[-1]
    out = []
    for b in range(X.shape[0]):
        layers = []
        for j, (W, bias) in enumerate(learner.init_params(d, k)):
            lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=F64)
            with torch.no_grad():
                lin.weight.copy_(W)
                lin.bias.copy_(bias)
            layers += [lin, torch.nn.ReLU()] if j < learner.depth - 1 else [lin]
        net = torch.nn.Sequential(*layers)
        opt = (torch.optim.Adam(net.parameters(), lr=learner.lr) if optimizer == "adam"
               else torch.optim.SGD(net.parameters(), lr=learner.lr))
        preds = []
        for _ in range(learner.epochs):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(X[b]), Y[b]).backward()
            opt.step()
            with torch.no_grad():
                preds.append(net(q[b]))
        out.append(torch.stack(preds))
    return torch.stack(out, dim=1)  # (epochs, B, m, k)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_direct_matches_torch_nn(gen, optimizer):
    X, Y, q = prompts(gen, B=3, n=7, d=3, k=2)
    learner = small_direct(optimizer=optimizer, lr=3e-2 if optimizer == "adam" else 0.1)
    got = learner.epoch_predictions(X, Y, q)
    assert got.shape == (15, 3, 3, 2)
    torch.testing.assert_close(got, torch_reference(learner, X, Y, q, optimizer), rtol=0, atol=1e-10)
    torch.testing.assert_close(learner.predict(X, Y, q), got[-1], rtol=0, atol=0)


def test_direct_fits_a_simple_function(gen):
    x = torch.rand(4, 40, 1, generator=gen, dtype=F64) * 4 - 2
    y = x ** 2 - 1
    learner = DirectTraining(depth=2, width=16, epochs=100, lr=5e-2)
    pred = learner.predict(x[:, :30], y[:, :30], x[:, 30:])
    r2 = 1 - ((pred - y[:, 30:]) ** 2).sum() / ((y[:, 30:] - y[:, 30:].mean()) ** 2).sum()
    assert r2 > 0.95


def test_direct_best_over_epochs(gen):
    X, Y, q = prompts(gen, B=5, n=8, d=3)
    yq = torch.randn(5, 3, 1, generator=gen, dtype=F64)
    learner = small_direct()
    res = learner.best_over_epochs(X, Y, q, yq)
    preds = learner.epoch_predictions(X, Y, q)
    manual = torch.stack([1 - ((p - yq) ** 2).sum(dim=(0, 2)) / ((yq - yq.mean(0)) ** 2).sum(dim=(0, 2))
                          for p in preds])
    torch.testing.assert_close(res.scores, manual, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.best, manual.max(0).values, rtol=0, atol=0)
    assert torch.equal(res.epoch, manual.argmax(0))
    torch.testing.assert_close(r2_per_position(preds, yq), manual, rtol=0, atol=1e-12)
    mse = learner.best_over_epochs(X, Y, q, yq, score="mse")
    torch.testing.assert_close(mse.best, ((preds - yq) ** 2).mean(dim=(1, 3)).min(0).values, rtol=0, atol=1e-12)
    curve = learner.best_over_epochs(X, Y)  # prefix mode: Wu's R² vs context length
    assert curve.scores.shape == (15, 8)
    with pytest.raises(ShapeError):
        learner.best_over_epochs(X[0], Y[0], q[0], yq[0])


def test_direct_minibatches(gen):
    X, Y, q = prompts(gen, B=3, n=7, d=2)
    whole = small_direct(batch_size=7).predict(X, Y, q)
    torch.testing.assert_close(whole, small_direct().predict(X, Y, q), rtol=0, atol=0)
    mini = small_direct(batch_size=3)
    pred = mini.predict(X, Y, q)
    assert (pred - whole).abs().max() > 1e-4  # three steps per epoch, not one
    for b in range(3):  # the shared order makes each prompt independent of its batch
        torch.testing.assert_close(mini.predict(X[b], Y[b], q[b]), pred[b], rtol=0, atol=1e-12)


def test_direct_seed_and_generator(gen):
    X, Y, q = prompts(gen, B=2, n=6, d=2)
    a = small_direct(seed=3)
    torch.testing.assert_close(a.predict(X, Y, q), small_direct(seed=3).predict(X, Y, q), rtol=0, atol=0)
    assert (a.predict(X, Y, q) - small_direct(seed=4).predict(X, Y, q)).abs().max() > 1e-6
    g = torch.Generator().manual_seed(7)
    b = small_direct(generator=g)
    first, second = b.predict(X, Y, q), b.predict(X, Y, q)  # the generator's state moves on between calls
    assert (first - second).abs().max() > 1e-6
    g.manual_seed(7)
    torch.testing.assert_close(b.predict(X, Y, q), first, rtol=0, atol=0)


# ---- generic contract: prefixes, batching, dtype, errors, registry ---------------------------------------------


@pytest.mark.parametrize("learner", ALL, ids=ids(ALL))
def test_prefix_predictions_match_predict_per_prefix(gen, learner: Learner):
    X, Y, _ = prompts(gen, B=3, n=9, d=3, k=2)
    pre = learner.prefix_predictions(X, Y)
    assert pre.shape == (3, 9, 2)
    assert torch.equal(pre[:, 0], torch.zeros(3, 2, dtype=F64))
    ref = torch.stack([learner.predict(X[:, :i], Y[:, :i], X[:, i:i + 1])[:, 0] for i in range(1, 9)], dim=1)
    torch.testing.assert_close(pre[:, 1:], ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("learner", ALL, ids=ids(ALL))
def test_unbatched_equals_batched(gen, learner: Learner):
    X, Y, q = prompts(gen, B=2, n=8, d=3, k=1)
    pred, pre = learner.predict(X, Y, q), learner.prefix_predictions(X, Y)
    one = learner.predict(X[1], Y[1], q[1])
    assert one.shape == (3, 1)
    torch.testing.assert_close(one, pred[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(learner.prefix_predictions(X[1], Y[1]), pre[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("learner", [LeastSquares(), Lasso(0.1), KNN(), KernelRegression(), GD(0.1)],
                         ids=["ols", "lasso", "knn", "kernel", "gd"])
def test_dtype_follows_input(gen, learner: Learner):
    X, Y, q = (t.float() for t in prompts(gen))
    assert learner.predict(X, Y, q).dtype == torch.float32
    assert learner.prefix_predictions(X, Y.double()).dtype == torch.float32


def test_input_errors(gen):
    X, Y, q = prompts(gen)
    learner = Ridge(0.1)
    bad = X.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        learner.predict(bad, Y, q)
    with pytest.raises(NonFiniteError):
        learner.prefix_predictions(X, Y.masked_fill(Y > 1, float("inf")))
    with pytest.raises(ShapeError, match=r"\[\.\.\., None\]"):
        learner.predict(X, Y[..., 0], q)
    with pytest.raises(ShapeError, match=r"\[\.\.\., None\]"):
        learner.prefix_predictions(X[0], Y[0, :, 0])
    with pytest.raises(ShapeError, match="x_query"):
        learner.predict(X, Y, q[..., :2])
    with pytest.raises(ShapeError, match="x_query"):
        learner.predict(X[0], Y[0], q[0, 0])
    with pytest.raises(ShapeError, match="Y"):
        learner.predict(X, Y[:, :5], q)
    with pytest.raises(ShapeError, match="Y"):
        learner.predict(X, Y[:2], q)
    with pytest.raises(ShapeError):
        learner.predict(X[None], Y[None], q[None])
    with pytest.raises(ShapeError, match="at least"):
        learner.predict(X[:, :0], Y[:, :0], q)
    with pytest.raises(ShapeError, match="y_query"):
        GD.tune(X, Y, q, q[..., :1].squeeze(-1))


@pytest.mark.parametrize("build", [
    lambda: Ridge(-1.0), lambda: Ridge(0), lambda: Lasso(alpha=-0.1), lambda: Lasso(iters=0), lambda: GD(0.0),
    lambda: GD(0.1, steps=-1), lambda: GD(0.1, steps=1.5), lambda: GDPlusPlus(0.1, -0.1), lambda: Newton(-1),
    lambda: SGD(0.0), lambda: SGD(0.1, window=0), lambda: SGD(0.1, lam=float("nan")), lambda: KNN(0),
    lambda: KNN(3, "gaussian"), lambda: KernelRegression("poly"), lambda: KernelRegression(bandwidth=0),
    lambda: DirectTraining(0), lambda: DirectTraining(2, width=0), lambda: DirectTraining(2, optimizer="lbfgs"),
    lambda: DirectTraining(2, activation="swish"), lambda: DirectTraining(2, betas=(0.9, 1.0)),
    lambda: DirectTraining(2, generator=7),
    lambda: GD.tune(torch.ones(2, 3, 1), torch.ones(2, 3, 1), torch.ones(2, 1, 1), torch.ones(2, 1, 1), grid=[-1.0]),
])
def test_bad_hyperparameters_raise_spec_error(build):
    with pytest.raises(SpecError):
        build()


def test_registry(gen):
    assert set(LEARNERS) == {"ols", "ridge", "lasso", "gd", "gdpp", "newton", "sgd", "knn", "averaging", "kernel",
                             "direct"}
    for name, cls in LEARNERS.items():
        assert cls.name == name
    learner = make_learner("ridge", lam=0.5)
    assert isinstance(learner, Ridge) and learner.lam == 0.5
    assert repr(learner) == "Ridge(lam=0.5)"
    assert repr(make_learner("knn", k=5)) == "KNN(k=5, weights='uniform')"
    X, Y, q = prompts(gen)
    torch.testing.assert_close(make_learner("gd", eta=0.2, steps=2).predict(X, Y, q), GD(0.2, 2).predict(X, Y, q))
    with pytest.raises(SpecError, match="ols, ridge"):
        make_learner("xgboost")
    with pytest.raises(SpecError, match="GD"):
        make_learner("gd", lr=0.1)
