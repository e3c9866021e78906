"""Property-based tests (hypothesis) over random small specs: token layouts, constructions against their reference
algorithms, learners against numpy / scikit-learn. Derandomized and few examples, so CI runs are stable and short."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icgd.constructions import (convex_gd, deep_gd, fit_ranges_from_data, functional_gd, gd_plus_plus, linear_gd,
                                wu_layout)
from icgd.learners import GD, KNN, Averaging, GDPlusPlus, LeastSquares, Ridge, gd_trajectory
from icgd.nets import NetSpec, init_weights
from icgd.tokens import Layout, from_columns, pack_prompt, to_columns

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=12)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ token layouts

@st.composite
def layouts(draw):
    sizes = draw(st.lists(st.integers(0, 4), min_size=1, max_size=7))
    names = [f"s{i}" for i in range(len(sizes))]
    slots = [("x", draw(st.integers(1, 3))), ("y", draw(st.integers(1, 2)))] + list(zip(names, sizes))
    slots += [("one", 1), ("t", 1)]
    groups = {}
    if len(names) >= 2:
        a = draw(st.integers(0, len(names) - 2))
        b = draw(st.integers(a + 1, len(names)))
        groups["grp"] = names[a:b]
    return Layout(slots, groups)


@SETTINGS
@given(layout=layouts(), B=st.integers(1, 3), n=st.integers(1, 5), m=st.integers(0, 3), seed=st.integers(0, 99))
def test_layout_slices_partition_the_token_and_pack_round_trips(layout, B, n, m, seed):
    # the slots are disjoint, in order, and cover [0, D) exactly; a group is the union of its members
    covered = []
    for name, size in layout.slots:
        s = layout.slice(name)
        assert s.stop - s.start == size == layout.size(name)
        covered += list(range(s.start, s.stop))
    assert covered == list(range(layout.dim))
    if "grp" in layout.groups:
        members = layout.groups["grp"]
        assert layout.slice("grp") == slice(layout.slice(members[0]).start, layout.slice(members[-1]).stop)
    g = _gen(seed)
    d, d_out = layout.size("x"), layout.size("y")
    X, Y, Xq = _randn(g, B, n, d), _randn(g, B, n, d_out), _randn(g, B, m, d)
    extra = {name: _randn(g, B, size) for name, size in layout.slots if name.startswith("s") and size}
    tokens = pack_prompt(layout, X, Y, Xq, **extra)
    assert tokens.shape == (B, n + m, layout.dim)
    assert torch.equal(layout.read(tokens, "x"), torch.cat([X, Xq], 1))
    assert torch.equal(layout.read(tokens, "y")[:, :n], Y) and not layout.read(tokens, "y")[:, n:].any()
    assert torch.equal(layout.read(tokens, "t")[..., 0], torch.cat([torch.ones(B, n), torch.zeros(B, m)], 1).double())
    assert bool((layout.read(tokens, "one") == 1).all())
    for name, value in extra.items():  # replicated into every token
        assert torch.equal(layout.read(tokens, name), value[:, None].expand(B, n + m, -1))
    written = layout.empty(B, n + m)
    for name, size in layout.slots:
        layout.write(written, name, layout.read(tokens, name))
    assert torch.equal(written, tokens)
    assert torch.equal(from_columns(to_columns(tokens)), tokens) and to_columns(tokens).shape == (B, layout.dim, n + m)


# ------------------------------------------------------------------------------------------------ linear constructions

prompts = dict(B=st.integers(1, 3), n=st.integers(1, 8), m=st.integers(1, 3), d=st.integers(1, 4),
               seed=st.integers(0, 10**6))


@SETTINGS
@given(**prompts, d_out=st.integers(1, 2), steps=st.integers(1, 3), eta=st.floats(0.01, 1.0))
def test_linear_gd_equals_the_gd_learner(B, n, m, d, seed, d_out, steps, eta):
    g = _gen(seed)
    X, Y, Xq = _randn(g, B, n, d), _randn(g, B, n, d_out), _randn(g, B, m, d)
    got = linear_gd(d, d_out, eta=eta, steps=steps).predict(X, Y, Xq)
    ref = GD(eta, steps).predict(X, Y, Xq)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


@SETTINGS
@given(**prompts, steps=st.integers(1, 3), eta=st.floats(0.01, 0.8), gamma=st.floats(0.0, 0.5))
def test_gd_plus_plus_equals_the_gdpp_learner(B, n, m, d, seed, steps, eta, gamma):
    g = _gen(seed)
    X, Y, Xq = _randn(g, B, n, d) / 2, _randn(g, B, n, 1), _randn(g, B, m, d) / 2
    got = gd_plus_plus(d, eta=eta, gamma=gamma, steps=steps).predict(X, Y, Xq)
    ref = GDPlusPlus(eta, gamma, steps).predict(X, Y, Xq)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


def _kernel(name: str, A: torch.Tensor, Bm: torch.Tensor, bw: float) -> torch.Tensor:
    G = A @ Bm.transpose(-1, -2)
    return {"linear": G, "relu": torch.relu(G), "exp": torch.exp(G),
            "rbf": torch.exp(-torch.cdist(A, Bm) ** 2 / (2 * bw * bw))}[name]


@SETTINGS
@given(**prompts, kernel=st.sampled_from(["linear", "relu", "exp", "rbf"]), steps=st.integers(1, 4),
       eta=st.floats(0.05, 1.0), bw=st.floats(0.5, 2.0))
def test_functional_gd_equals_functional_gradient_descent(B, n, m, d, seed, kernel, steps, eta, bw):
    """f_{t+1} = f_t + (η/n) Σ_i (y_i − f_t(x_i)) k(x_i, ·), f_0 = 0 (Cheng et al.), written with the kernel matrix."""
    g = _gen(seed)
    X, Y, Xq = _randn(g, B, n, d) / 2, _randn(g, B, n, 1), _randn(g, B, m, d) / 2
    K, Kq = _kernel(kernel, X, X, bw), _kernel(kernel, Xq, X, bw)
    alpha = torch.zeros(B, n, 1, dtype=torch.float64)  # f_t(z) = Σ_i α_i k(x_i, z)
    for _ in range(steps):
        alpha = alpha + eta / n * (Y - K @ alpha)
    got = functional_gd(d, kernel=kernel, eta=eta, steps=steps, bandwidth=bw).predict(X, Y, Xq)
    torch.testing.assert_close(got, Kq @ alpha, rtol=1e-9, atol=1e-10)


@SETTINGS
@given(**prompts, steps=st.integers(1, 4), eta=st.floats(0.01, 0.5), lam=st.floats(0.0, 0.5))
def test_convex_gd_squared_loss_equals_autograd(B, n, m, d, seed, steps, eta, lam):
    """GD on (1/n) Σ ½(wᵀx_i − y_i)² + (λ/2)‖w‖² from w = 0, by autograd."""
    g = _gen(seed)
    X, Y, Xq = _randn(g, B, n, d), _randn(g, B, n, 1), _randn(g, B, m, d)
    model = convex_gd(d, eta=eta, steps=steps, lam=lam)
    w = torch.zeros(B, d, dtype=torch.float64)
    trace = [w]
    for _ in range(steps):
        w = w.detach().requires_grad_(True)
        loss = (0.5 * ((X @ w[..., None] - Y) ** 2).sum((1, 2)) / n + 0.5 * lam * (w * w).sum(-1)).sum()
        (grad,) = torch.autograd.grad(loss, w)
        w = w.detach() - eta * grad
        trace.append(w)
    torch.testing.assert_close(model.trace(X, Y), torch.stack(trace, 1), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(model.predict(X, Y, Xq), Xq @ w[..., None], rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------------------------------------ deep GD

specs = st.builds(NetSpec, d_in=st.integers(1, 3), width=st.integers(1, 4), depth=st.integers(1, 3),
                  d_out=st.integers(1, 2), activation=st.just("relu"))


@FEW
@given(spec=specs, B=st.integers(1, 2), n=st.integers(1, 6), steps=st.integers(1, 3), eta=st.floats(0.05, 0.5),
       seed=st.integers(0, 10**6))
def test_deep_gd_relu_is_autograd_gd_and_clears_its_scratch(spec, B, n, steps, eta, seed):
    """ReLU networks: the construction's fits are exact (r′ a ramp of width 1e-6), so the trace is autograd GD's
    to round-off; after every GD block the scratch slots p, r, g, s are exactly zero."""
    g = _gen(seed)
    X, Y = _randn(g, B, n, spec.d_in), _randn(g, B, n, spec.d_out)
    w0 = init_weights(spec, B, generator=g)
    ref = gd_trajectory(spec, X, Y, w0, eta, steps)
    model = deep_gd(spec, eta=eta, steps=steps, fit_range=fit_ranges_from_data(spec, X, ref))
    trace = model.trace(X, Y, w0)
    scale = ref.abs().max().clamp(min=1.0)
    assert float((trace - ref).abs().max()) <= 1e-9 * float(scale)
    tokens, _ = model.tokens_for(X, Y, w0)
    h = model(tokens, 0, model.block_size)
    layout = wu_layout(spec)
    for name in ("p", "r", "g", "s"):
        assert not layout.read(h, name).any(), name
    assert torch.equal(layout.read(h, "x"), X) and torch.equal(layout.read(h, "y")[:, :n], Y)


# ------------------------------------------------------------------------------------------------ learners

@SETTINGS
@given(**prompts, d_out=st.integers(1, 2))
def test_least_squares_is_numpy_lstsq(B, n, m, d, seed, d_out):
    g = _gen(seed)
    X, Y, Xq = _randn(g, B, n, d), _randn(g, B, n, d_out), _randn(g, B, m, d)
    got = LeastSquares().predict(X, Y, Xq).numpy()
    for b in range(B):  # the minimum-norm solution when n < d, the OLS one otherwise
        W = np.linalg.lstsq(X[b].numpy(), Y[b].numpy(), rcond=None)[0]
        np.testing.assert_allclose(got[b], Xq[b].numpy() @ W, rtol=1e-7, atol=1e-8)


@SETTINGS
@given(**prompts, lam=st.floats(1e-3, 10.0))
def test_ridge_is_the_closed_form_and_sklearn(B, n, m, d, seed, lam):
    from sklearn.linear_model import Ridge as SkRidge

    g = _gen(seed)
    X, Y, Xq = _randn(g, B, n, d), _randn(g, B, n, 1), _randn(g, B, m, d)
    got = Ridge(lam).predict(X, Y, Xq).numpy()
    for b in range(B):
        x, y = X[b].numpy(), Y[b].numpy()
        W = np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)
        np.testing.assert_allclose(got[b], Xq[b].numpy() @ W, rtol=1e-9, atol=1e-10)
        sk = SkRidge(alpha=lam, fit_intercept=False, solver="cholesky").fit(x, y[:, 0])
        np.testing.assert_allclose(got[b, :, 0], sk.predict(Xq[b].numpy()), rtol=1e-7, atol=1e-8)


LEARNERS = [LeastSquares(), Ridge(0.3), GD(0.2, 3), GDPlusPlus(0.2, 0.1, 2), KNN(2), Averaging()]


@SETTINGS
@given(**prompts, which=st.integers(0, len(LEARNERS) - 1))
def test_batched_equals_per_prompt_and_prefixes_equal_short_contexts(B, n, m, d, seed, which):
    learner = LEARNERS[which]
    g = _gen(seed)
    X, Y, Xq = _randn(g, B, n, d), _randn(g, B, n, 1), _randn(g, B, m, d)
    batched = learner.predict(X, Y, Xq)
    for b in range(B):
        torch.testing.assert_close(learner.predict(X[b], Y[b], Xq[b]), batched[b], rtol=1e-9, atol=1e-10)
    prefix = learner.prefix_predictions(X, Y)
    assert prefix.shape == (B, n, 1) and not prefix[:, 0].any()
    for i in range(1, n):  # row i: the prediction at x_i from the pairs 0 … i−1 alone
        torch.testing.assert_close(prefix[:, i:i + 1], learner.predict(X[:, :i], Y[:, :i], X[:, i:i + 1]),
                                   rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------------------------------------ bad inputs

PREDICTORS = {
    "ridge": lambda d: Ridge(0.3).predict,
    "knn": lambda d: KNN(2).predict,
    "linear_gd": lambda d: linear_gd(d, eta=0.1).predict,
    "functional_gd": lambda d: functional_gd(d, kernel="rbf", eta=0.1, steps=1).predict,
    "convex_gd": lambda d: convex_gd(d, eta=0.1, steps=1).predict,
}


@SETTINGS
@given(**prompts, which=st.sampled_from(sorted(PREDICTORS)), where=st.sampled_from(["X", "Y", "x_query"]),
       bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]), data=st.data())
def test_non_finite_inputs_and_wrong_shapes_raise_named_errors(B, n, m, d, seed, which, where, bad, data):
    from icgd.errors import NonFiniteError, ShapeError

    g = _gen(seed)
    args = {"X": _randn(g, B, n, d), "Y": _randn(g, B, n, 1), "x_query": _randn(g, B, m, d)}
    predict = PREDICTORS[which](d)
    t = args[where]
    idx = tuple(data.draw(st.integers(0, s - 1)) for s in t.shape)
    t[idx] = bad
    with pytest.raises(NonFiniteError, match=where):
        predict(args["X"], args["Y"], args["x_query"])
    t[idx] = 0.0
    # x and x_query disagree on d (one column too many), or Y lacks the last pair
    args[where] = t[:, :-1] if where == "Y" else torch.cat([t, t[..., :1]], dim=-1)
    with pytest.raises(ShapeError):
        predict(args["X"], args["Y"], args["x_query"])
