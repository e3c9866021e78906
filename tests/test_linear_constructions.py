"""von Oswald's LSA constructions, Cheng's functional GD and Bai's convex ICGD against closed forms (numpy)."""

import numpy as np
import pytest
import torch

from icgd.constructions import convex_gd, functional_gd, gd_plus_plus, linear_gd
from icgd.constructions.von_oswald import von_oswald_weights
from icgd.errors import NonFiniteError, ShapeError, SpecError
from icgd.layers import KernelAttention, LinearAttention, Transformer


def _prompt(gen, B=3, n=12, m=4, d=5, d_out=1):
    X = torch.randn(B, n, d, generator=gen, dtype=torch.float64)
    Y = torch.randn(B, n, d_out, generator=gen, dtype=torch.float64)
    Xq = torch.randn(B, m, d, generator=gen, dtype=torch.float64)
    return X, Y, Xq


def _gd_numpy(X, Y, Xq, etas, gammas=None):
    """GD (γ = 0) or GD++ on W x ≈ y, per prompt, in numpy: the paper's recursion on explicit x and W."""
    out = []
    for b in range(X.shape[0]):
        x, y, xq = X[b].numpy(), Y[b].numpy(), Xq[b].numpy()
        n = x.shape[0]
        r, rq = y.copy(), np.zeros((xq.shape[0], y.shape[1]))  # residuals y − W x, and −W x_q
        for k, eta in enumerate(etas):
            g = 0.0 if gammas is None else gammas[k]
            S = x.T @ x / n
            r, rq, x, xq = (r - eta / n * (x @ x.T) @ r, rq - eta / n * (xq @ x.T) @ r,
                            x - g * x @ S, xq - g * xq @ S)
        out.append(-rq)
    return np.stack(out)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("d_out", [1, 3])
def test_linear_gd_equals_closed_form_gd(gen, steps, d_out):
    X, Y, Xq = _prompt(gen, d_out=d_out)
    eta = 0.4
    W = np.zeros((X.shape[0], d_out, X.shape[-1]))
    for _ in range(steps):  # W ← W − η ∇L(W), L = 1/(2n) Σ ‖W x − y‖²
        W = W - eta * np.einsum("bno,bnd->bod", np.einsum("bod,bnd->bno", W, X.numpy()) - Y.numpy(), X.numpy()) / X.shape[1]
    expected = np.einsum("bod,bmd->bmo", W, Xq.numpy())
    got = linear_gd(X.shape[-1], d_out, eta=eta, steps=steps).predict(X, Y, Xq)
    assert got.shape == (X.shape[0], Xq.shape[1], d_out)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10 * max(1.0, np.abs(expected).max()))


def test_linear_gd_per_layer_eta_and_unbatched(gen):
    X, Y, Xq = _prompt(gen, B=1)
    etas = [0.3, 0.1, 0.5]
    model = linear_gd(5, eta=etas, steps=3)
    np.testing.assert_allclose(model.predict(X[0], Y[0], Xq[0]).numpy(), _gd_numpy(X, Y, Xq, etas)[0], atol=1e-12)
    assert [r["role"] for r in model.summary()] == ["GD step 1", "GD step 2", "GD step 3"]
    assert all(isinstance(layer, LinearAttention) for layer in model.layers)


def test_von_oswald_matrices_are_the_papers_and_drive_the_layer(gen):
    W = von_oswald_weights(3, 1, eta=0.6)
    eye_x = torch.zeros(4, 4, dtype=torch.float64)
    eye_x[:3, :3] = torch.eye(3)
    assert torch.equal(W["W_K"], eye_x) and torch.equal(W["W_Q"], eye_x)
    assert W["W_V"][3, 3] == -1 and W["W_V"].abs().sum() == 1
    assert W["P"][3, 3] == 0.6 and W["P"].abs().sum() == 0.6
    # the layer's P/Q form recovers P W_V and W_Kᵀ W_Q on the (x, y) block
    model = linear_gd(3, eta=0.6)
    P, Q = model.layers[0].pq()
    assert torch.allclose(P[0, :4, :4], W["P"] @ W["W_V"]) and torch.allclose(Q[0, :4, :4], W["W_K"].T @ W["W_Q"])
    assert torch.equal(model.weights(0)["P"], W["P"])


def test_context_tokens_hold_residuals(gen):
    """Eq. 8: after a layer the context y-slots hold y_i − W_1 x_i."""
    X, Y, Xq = _prompt(gen, d_out=2)
    eta, n = 0.5, X.shape[1]
    model = linear_gd(5, 2, eta=eta, steps=1)
    tokens, _ = model.tokens_for(X, Y, Xq)
    out = model(tokens)
    W1 = eta * torch.einsum("bno,bnd->bod", Y, X) / n
    np.testing.assert_allclose(model.layout.read(out, "y")[:, :n].numpy(),
                               (Y - torch.einsum("bod,bnd->bno", W1, X)).numpy(), atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.4, [0.2, 0.5, 0.1]])
def test_gd_plus_plus_equals_recursion(gen, gamma):
    X, Y, Xq = _prompt(gen, d_out=2)
    etas = [0.5, 0.3, 0.4]
    gammas = gamma if isinstance(gamma, list) else [gamma] * 3
    got = gd_plus_plus(5, eta=etas, gamma=gamma, steps=3, d_out=2).predict(X, Y, Xq)
    np.testing.assert_allclose(got.numpy(), _gd_numpy(X, Y, Xq, etas, gammas), atol=1e-10)


def test_gd_plus_plus_with_zero_gamma_is_gd(gen):
    X, Y, Xq = _prompt(gen)
    a = gd_plus_plus(5, eta=0.3, gamma=0.0, steps=4).predict(X, Y, Xq)
    b = linear_gd(5, eta=0.3, steps=4).predict(X, Y, Xq)
    assert torch.allclose(a, b, atol=1e-14)


def test_gd_plus_plus_transforms_x_by_curvature(gen):
    """App. A.10: one layer maps every x to (I − (γ/n) X Xᵀ) x (γ normalised by n)."""
    X, Y, Xq = _prompt(gen)
    model = gd_plus_plus(5, eta=0.1, gamma=0.3, steps=1)
    tokens, _ = model.tokens_for(X, Y, Xq)
    x_out = model.layout.read(model(tokens), "x")
    S = X.transpose(1, 2) @ X / X.shape[1]
    x_in = torch.cat([X, Xq], 1)
    assert torch.allclose(x_out, x_in - 0.3 * x_in @ S, atol=1e-12)


def _kernel(name, A, B, bw):
    G = A @ B.T
    if name == "linear":
        return G
    if name == "relu":
        return np.maximum(G, 0)
    if name == "exp":
        return np.exp(G)
    sq = (A ** 2).sum(1)[:, None] + (B ** 2).sum(1)[None] - 2 * G
    return np.exp(-sq / (2 * bw * bw))


@pytest.mark.parametrize("kernel", ["linear", "relu", "exp", "rbf"])
def test_functional_gd_equals_recursion(gen, kernel):
    X, Y, Xq = _prompt(gen, n=10, d=3)
    X, Xq = X / 2, Xq / 2  # keeps exp(⟨x, x'⟩) moderate
    eta, steps, bw = 0.7, 5, 1.3
    expected = []
    for b in range(X.shape[0]):
        x, y, xq = X[b].numpy(), Y[b, :, 0].numpy(), Xq[b].numpy()
        n = len(y)

        def f(points, alphas):  # f_t(z) = Σ_s Σ_i alpha_{s,i} k(x_i, z)
            return sum(_kernel(kernel, x, points, bw).T @ a for a in alphas) if alphas else np.zeros(len(points))

        alphas = []
        for _ in range(steps):  # f_{t+1} = f_t + (η/n) Σ_i (y_i − f_t(x_i)) k(x_i, ·)
            alphas.append(eta / n * (y - f(x, alphas)))
        expected.append(f(xq, alphas)[:, None])
    model = functional_gd(3, kernel=kernel, eta=eta, steps=steps, bandwidth=bw)
    got = model.predict(X, Y, Xq)
    assert all(isinstance(layer, KernelAttention) for layer in model.layers)
    np.testing.assert_allclose(got.numpy(), np.stack(expected), rtol=1e-10, atol=1e-10)


def test_convex_gd_squared_equals_autograd_gd(gen):
    X, Y, Xq = _prompt(gen, n=20)
    eta, steps, lam = 0.2, 6, 0.25
    w = torch.zeros(X.shape[0], 5, dtype=torch.float64, requires_grad=True)
    ws = [w.detach()]
    for _ in range(steps):
        loss = 0.5 * ((torch.einsum("bnd,bd->bn", X, w) - Y[..., 0]) ** 2).mean(1).sum() + 0.5 * lam * (w ** 2).sum()
        (g,) = torch.autograd.grad(loss, w)
        w = (w - eta * g).detach().requires_grad_(True)
        ws.append(w.detach())
    model = convex_gd(5, eta=eta, steps=steps, lam=lam)
    assert torch.allclose(model.trace(X, Y), torch.stack(ws, 1), rtol=0, atol=1e-10)
    assert torch.allclose(model.predict(X, Y, Xq)[..., 0], torch.einsum("bmd,bd->bm", Xq, ws[-1]), atol=1e-10)


@pytest.mark.parametrize("knots,tol", [(64, 2e-3), (512, 4e-5)])
def test_convex_gd_logistic_close_to_logistic_gd(gen, knots, tol):
    X, _, Xq = _prompt(gen, n=30)
    Y = (torch.rand(X.shape[0], 30, 1, generator=gen, dtype=torch.float64) < 0.5).double()
    eta, steps = 0.5, 8
    w = torch.zeros(X.shape[0], 5, dtype=torch.float64)
    for _ in range(steps):
        w = w - eta * torch.einsum("bn,bnd->bd", torch.sigmoid(torch.einsum("bnd,bd->bn", X, w)) - Y[..., 0], X) / 30
    got = convex_gd(5, loss="logistic", eta=eta, steps=steps, knots=knots).trace(X, Y)[:, -1]
    rel = float((got - w).norm() / w.norm())
    assert rel < tol


def test_convex_gd_box_projection(gen):
    X, Y, Xq = _prompt(gen)
    Y = 10 * Y
    got = convex_gd(5, eta=0.5, steps=3, box=0.2).trace(X, Y)
    w = torch.zeros(X.shape[0], 5, dtype=torch.float64)
    for _ in range(3):
        w = (w - 0.5 * torch.einsum("bn,bnd->bd", torch.einsum("bnd,bd->bn", X, w) - Y[..., 0], X) / X.shape[1]).clamp(-0.2, 0.2)
    assert torch.allclose(got[:, -1], w, atol=1e-12) and float(got.abs().max()) <= 0.2 + 1e-12


def test_constructions_are_transformers_with_hooks(gen):
    X, Y, Xq = _prompt(gen)
    model = linear_gd(5, eta=0.3, steps=2)
    assert isinstance(model, Transformer)
    tokens, _ = model.tokens_for(X, Y, Xq)
    _, cache = model.run_with_cache(tokens)
    resid = {f"blocks.{i}.hook_resid_{k}" for i in range(2) for k in ("pre", "post")}
    assert set(cache) == resid | {f"layers.{i}.hook_{k}" for i in range(2) for k in ("pattern", "z")}
    assert torch.allclose(cache["blocks.1.hook_resid_post"] - cache["blocks.1.hook_resid_pre"],
                          cache["layers.1.hook_z"].sum(2), atol=1e-12)


@pytest.mark.parametrize("call,err", [
    (lambda: linear_gd(0, eta=0.1), SpecError),
    (lambda: linear_gd(3, eta=-1.0), SpecError),
    (lambda: linear_gd(3, eta=[0.1, 0.2], steps=3), SpecError),
    (lambda: gd_plus_plus(3, eta=0.1, gamma=-0.2, steps=1), SpecError),
    (lambda: functional_gd(3, kernel="cosine", eta=0.1, steps=1), SpecError),
    (lambda: convex_gd(3, loss="hinge", eta=0.1, steps=1), SpecError),
    (lambda: linear_gd(3, eta=0.1, dtype=torch.int64), SpecError),
])
def test_bad_hyper_parameters(call, err):
    with pytest.raises(err):
        call()


def test_bad_prompts(gen):
    X, Y, Xq = _prompt(gen, d=3)
    model = linear_gd(3, eta=0.1)
    with pytest.raises(ShapeError, match="d_in"):
        model.predict(X[..., :2], Y, Xq)
    with pytest.raises(ShapeError, match="output axis"):
        model.predict(X, Y[..., 0], Xq)
    with pytest.raises(ShapeError, match="d_out"):
        model.predict(X, torch.cat([Y, Y], -1), Xq)
    with pytest.raises(NonFiniteError):
        model.predict(X, Y * float("nan"), Xq)
    with pytest.raises(ShapeError, match="labels"):
        convex_gd(3, loss="logistic", eta=0.1, steps=1).predict(X, Y, Xq)
