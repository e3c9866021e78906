"""icgd.analysis against independent computations: numpy loops, scikit-learn, finite differences, known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score as sk_r2

from icgd import analysis as an
from icgd.errors import NonFiniteError, ShapeError, SpecError

DT = torch.float64


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=DT)


def ridge_weights(X, Y, lam):
    """Closed-form ridge weights (B, d_out, d), one row per output."""
    d = X.shape[-1]
    return torch.linalg.solve(X.mT @ X + lam * torch.eye(d, dtype=X.dtype), X.mT @ Y).mT


def ridge_predictor(lam):
    def f(X, Y, q):
        return q @ ridge_weights(X, Y, lam).mT
    return f


def kernel_predictor(X, Y, q):
    """A non-linear (softmax-attention) learner: ŷ = Σ_i softmax_i(x_q·x_i) y_i."""
    a = torch.softmax(q @ X.mT, dim=-1)
    return a @ Y


class PredictObject:
    """A learner exposing predict(), like icgd.learners; __call__ must not be used."""

    def __init__(self, f):
        self.f = f

    def predict(self, X, Y, q):
        return self.f(X, Y, q)

    def __call__(self, *args):
        raise AssertionError("predict() must win over __call__")


@pytest.fixture
def task(gen):
    B, n, d, m = 6, 5, 3, 4
    X, Y = randn(gen, B, n, d), randn(gen, B, n, 2)
    return X, Y, randn(gen, B, m, d)


# ------------------------------------------------------------------------------------------------ error curves, R²


def test_squared_error_per_position_matches_loop(gen):
    p, t = randn(gen, 7, 5, 2), randn(gen, 7, 5, 2)
    pn, tn = p.numpy(), t.numpy()
    ref = np.array([np.mean([np.sum((pn[b, k] - tn[b, k]) ** 2) for b in range(7)]) for k in range(5)])
    np.testing.assert_allclose(an.squared_error_per_position(p, t).numpy(), ref, rtol=1e-13)
    np.testing.assert_allclose(an.squared_error_per_position(p, t, d=4).numpy(), ref / 4, rtol=1e-13)
    # (B, n) is one output
    np.testing.assert_allclose(an.squared_error_per_position(p[..., 0], t[..., 0]).numpy(),
                               ((pn[..., 0] - tn[..., 0]) ** 2).mean(0), rtol=1e-13)


@pytest.mark.parametrize("d_out", [1, 3])
def test_r2_per_position_matches_sklearn(gen, d_out):
    t = randn(gen, 20, 6, d_out)
    p = t + 0.5 * randn(gen, 20, 6, d_out)
    got = an.r2_per_position(p, t).numpy()
    ref = [sk_r2(t[:, k].numpy(), p[:, k].numpy()) for k in range(6)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert an.r2_score(p, t) == pytest.approx(sk_r2(t.reshape(-1, d_out).numpy(), p.reshape(-1, d_out).numpy()),
                                              rel=1e-12)


def test_r2_scalar_shapes_and_constant_targets(gen):
    t = randn(gen, 10, 4)
    p = t + 0.1 * randn(gen, 10, 4)
    np.testing.assert_allclose(an.r2_per_position(p, t).numpy(),
                               [sk_r2(t[:, k].numpy(), p[:, k].numpy()) for k in range(4)], rtol=1e-12)
    flat_p, flat_t = p.flatten(), t.flatten()
    assert an.r2_score(flat_p, flat_t) == pytest.approx(sk_r2(flat_t.numpy(), flat_p.numpy()), rel=1e-12)
    # constant target at a position: 1 when predicted exactly, 0 otherwise (sklearn's force_finite)
    t2 = t.clone()
    t2[:, 0] = t2[:, 2] = 3.0
    p2 = t2.clone()
    p2[:, 1] += 1.0
    p2[:, 2] += torch.linspace(0, 1, 10, dtype=DT)
    got = an.r2_per_position(p2, t2).numpy()
    assert got[0] == 1.0 and got[2] == 0.0
    assert got[1] == pytest.approx(sk_r2(t2[:, 1].numpy(), p2[:, 1].numpy()))


@pytest.mark.parametrize("constant", ["none", "perfect", "imperfect"])
def test_every_r2_of_icgd_follows_the_one_rule_and_sklearn(gen, constant):
    """analysis.r2_from_sums is the one R²: r2_per_position, wu2025's bootstrap statistic and the mechanism
    study's weighted R² all agree with sklearn's r2_score, also where the target does not vary (1 or 0)."""
    from icgd.experiments.wu2025 import r2_per_position_cols
    from icgd.mechanism import _per_prompt_stats, _r2_from_counts

    t = randn(gen, 12, 3, 1)
    p = t + 0.3 * randn(gen, 12, 3, 1)
    if constant != "none":
        t[:, 1] = 2.0
        p[:, 1] = 2.0 if constant == "perfect" else 2.0 + torch.linspace(0, 1, 12, dtype=DT)[:, None]
    ref = np.array([sk_r2(t[:, k].numpy(), p[:, k].numpy()) for k in range(3)])
    if constant != "none":
        assert ref[1] == (1.0 if constant == "perfect" else 0.0)
    np.testing.assert_allclose(an.r2_per_position(p, t).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(r2_per_position_cols(torch.cat([p, t], -1))[:, 0].numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(an.r2_from_sums(((p - t) ** 2).sum(0), ((t - t.mean(0)) ** 2).sum(0))[:, 0], ref,
                               rtol=1e-12)
    for k in range(3):  # mechanism: read-out R (L=1) against candidate C (K=1), pooled over prompts and queries
        R, C = p[None, :, k:k + 1], t[None, :, k:k + 1]  # (1, B, m=1, 1)
        res, s1, s2 = _per_prompt_stats(R, C)
        got = float(_r2_from_counts(torch.ones(12, dtype=DT), res, s1, s2, 1)[0, 0])
        assert got == pytest.approx(ref[k], rel=1e-9, abs=1e-12)


def test_r2_rejects_bad_shapes():
    with pytest.raises(ShapeError, match="same shape"):
        an.r2_per_position(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ShapeError, match="at least 2 prompts"):
        an.r2_per_position(torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ShapeError, match=r"\(B, n\) or \(B, n, d_out\)"):
        an.squared_error_per_position(torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 2, 2))
    with pytest.raises(NonFiniteError):
        an.squared_error_per_position(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(SpecError):
        an.squared_error_per_position(torch.zeros(2, 2), torch.zeros(2, 2), d=0)


# ------------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_vectorised_equals_loop(monkeypatch):
    v = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    for stat, np_stat in (("mean", np.mean), (torch.mean, np.mean), ("median", None)):
        low, high = an.bootstrap_ci(v, stat=stat, n_boot=200, level=0.9, generator=torch.Generator().manual_seed(7))
        idx = torch.randint(0, 50, (200, 50), generator=torch.Generator().manual_seed(7)).numpy()
        vn = v.numpy()
        if np_stat is None:  # torch's median is the lower middle value, not numpy's average of the two
            stats = np.stack([np.sort(vn[i], axis=0)[(50 - 1) // 2] for i in idx])
        else:
            stats = np.stack([np_stat(vn[i], axis=0) for i in idx])
        np.testing.assert_allclose(low.numpy(), np.percentile(stats, 5, axis=0), rtol=1e-12)
        np.testing.assert_allclose(high.numpy(), np.percentile(stats, 95, axis=0), rtol=1e-12)
    # chunked evaluation gives the same answer
    low, high = an.bootstrap_ci(v, n_boot=200, level=0.9, generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(an, "_BOOT_CHUNK_ELEMENTS", 200)
    low2, high2 = an.bootstrap_ci(v, n_boot=200, level=0.9, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(low2, low, rtol=1e-14, atol=0)
    torch.testing.assert_close(high2, high, rtol=1e-14, atol=0)


def test_bootstrap_covers_the_true_mean(gen):
    # 400 independent experiments as columns: one interval per column
    v = 2.0 + randn(gen, 100, 400)
    low, high = an.bootstrap_ci(v, n_boot=1000, level=0.9, generator=gen)
    assert low.shape == high.shape == (400,) and bool((low < high).all())
    coverage = float(((low <= 2.0) & (2.0 <= high)).double().mean())
    assert 0.84 <= coverage <= 0.96
    low, high = an.bootstrap_ci(v[:, 0], generator=gen)
    assert low.shape == () and float(low) < float(v[:, 0].mean()) < float(high)


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(SpecError, match="level"):
        an.bootstrap_ci(torch.ones(5), level=1.0)
    with pytest.raises(ShapeError):
        an.bootstrap_ci(torch.ones(1))
    with pytest.raises(SpecError, match="reduce the sample axis"):
        an.bootstrap_ci(torch.ones(5, 2), stat=lambda t, dim: t)
    with pytest.raises(SpecError):
        an.bootstrap_ci(torch.ones(5), stat="mode")


# ------------------------------------------------------------------------------------------------ SPD, ILWD


def test_spd_matches_loop(gen):
    a, b = randn(gen, 4, 6, 2), randn(gen, 4, 6, 2)
    an_, bn = a.numpy(), b.numpy()
    tot = sum(np.sum((an_[i, j] - bn[i, j]) ** 2) for i in range(4) for j in range(6))
    assert an.spd(a, b) == pytest.approx(tot / 24, rel=1e-13)
    assert an.spd(a, b, d=8) == pytest.approx(tot / 24 / 8, rel=1e-13)
    assert an.spd(a[..., 0], b[..., 0]) == pytest.approx(np.mean((an_[..., 0] - bn[..., 0]) ** 2), rel=1e-13)


def test_implicit_weights_match_sklearn(gen, task):
    X, Y, _ = task
    probes = randn(gen, 6, 12, 3)
    w, c, r2 = an.implicit_weights(PredictObject(kernel_predictor), X, Y, probes)
    assert w.shape == (6, 2, 3) and c.shape == (6, 2) and r2.shape == (6,)
    preds = kernel_predictor(X, Y, probes)
    for b in range(6):
        lr = LinearRegression(fit_intercept=True).fit(probes[b].numpy(), preds[b].numpy())
        np.testing.assert_allclose(w[b].numpy(), lr.coef_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(c[b].numpy(), lr.intercept_, rtol=1e-9, atol=1e-12)
        assert float(r2[b]) == pytest.approx(lr.score(probes[b].numpy(), preds[b].numpy()), rel=1e-9)
    assert float(r2.max()) < 1 - 1e-6  # a non-linear learner is not fitted exactly
    # a linear learner: its own weights, zero intercept, R² = 1; probes shared by all prompts
    w, c, r2 = an.implicit_weights(ridge_predictor(0.3), X, Y, probes[0])
    torch.testing.assert_close(w, ridge_weights(X, Y, 0.3), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c, torch.zeros_like(c), rtol=0, atol=1e-12)
    torch.testing.assert_close(r2, torch.ones_like(r2), rtol=0, atol=1e-12)


def test_ilwd_of_two_ridges_is_the_weight_distance(gen, task):
    X, Y, _ = task
    probes = randn(gen, 6, 64, 3)
    ref = ((ridge_weights(X, Y, 0.1) - ridge_weights(X, Y, 2.0)) ** 2).sum((-2, -1)).mean()
    got = an.ilwd(ridge_predictor(0.1), ridge_predictor(2.0), X, Y, probes)
    assert got == pytest.approx(float(ref), rel=1e-9)
    assert an.ilwd(ridge_predictor(0.1), ridge_predictor(2.0), X, Y, probes, normalize=True) == pytest.approx(got / 3)
    # the actual weights of a linear learner may be passed instead of the learner
    assert an.ilwd(ridge_weights(X, Y, 0.1), ridge_predictor(2.0), X, Y, probes) == pytest.approx(got, rel=1e-9)
    assert an.ilwd(ridge_predictor(0.1), ridge_predictor(0.1), X, Y, probes) == pytest.approx(0, abs=1e-20)


def test_ilwd_matches_hand_loop_for_nonlinear_learners(gen, task):
    X, Y, _ = task
    probes = randn(gen, 6, 10, 3)
    pa, pb = kernel_predictor(X, Y, probes), ridge_predictor(0.5)(X, Y, probes)
    tot = 0.0
    for b in range(6):
        wa = LinearRegression().fit(probes[b].numpy(), pa[b].numpy()).coef_
        wb = LinearRegression().fit(probes[b].numpy(), pb[b].numpy()).coef_
        tot += np.sum((wa - wb) ** 2)
    assert an.ilwd(kernel_predictor, ridge_predictor(0.5), X, Y, probes) == pytest.approx(tot / 6, rel=1e-9)


def test_predictor_output_is_checked(task):
    X, Y, q = task
    with pytest.raises(ShapeError, match="one row per query"):
        an.implicit_weights(lambda X, Y, q: q.sum(1), X, Y, q)
    with pytest.raises(SpecError, match="predictor"):
        an.ilwd(3, ridge_predictor(1.0), X, Y, q)
    with pytest.raises(ShapeError, match=r"x_probe has shape \(\d+, \d+, 2\), expected .*shared by all prompts"):
        an.implicit_weights(kernel_predictor, X, Y, q[:, :, :2])
    with pytest.raises(ShapeError, match=r"X\[None\]"):
        an.implicit_weights(kernel_predictor, X[0], Y[0], q[0])
    with pytest.raises(ShapeError, match=r"\(B, d_out, d\)"):
        an.ilwd(torch.zeros(6, 2, 4), kernel_predictor, X, Y, q)


# ------------------------------------------------------------------------------------------------ model cos


def test_model_cos_known_answers(task):
    X, Y, q = task
    f = kernel_predictor
    assert an.model_cos(f, f, X, Y, q) == pytest.approx(1.0, abs=1e-7)
    assert an.model_cos(f, lambda X, Y, q: -f(X, Y, q), X, Y, q) == pytest.approx(-1.0, abs=1e-7)
    assert an.model_diff(f, f, X, Y, q) == 0.0
    assert an.preds_diff(f, f, X, Y, q) == 0.0
    # linear learners: the sensitivity is the weight matrix
    _, J = an.query_sensitivity(ridge_predictor(0.2), X, Y, q)
    torch.testing.assert_close(J, ridge_weights(X, Y, 0.2)[:, None].expand_as(J), rtol=1e-12, atol=1e-14)


def finite_difference_jacobian(f, X, Y, q, h=1e-6):
    """(B, m, d_out, d) by central differences, one coordinate of one query at a time."""
    B, m, d = q.shape
    k = f(X, Y, q).shape[-1]
    J = np.zeros((B, m, k, d))
    for j in range(m):
        for i in range(d):
            e = torch.zeros_like(q)
            e[:, j, i] = h
            J[:, j, :, i] = ((f(X, Y, q + e) - f(X, Y, q - e))[:, j] / (2 * h)).numpy()
    return J


def test_model_cos_and_diff_match_finite_differences(gen, task):
    X, Y, q = task
    f, g = kernel_predictor, ridge_predictor(0.7)
    Jf, Jg = finite_difference_jacobian(f, X, Y, q), finite_difference_jacobian(g, X, Y, q)
    _, J = an.query_sensitivity(f, X, Y, q)
    np.testing.assert_allclose(J.numpy(), Jf, rtol=1e-6, atol=1e-8)
    a, b = Jf.reshape(6, 4, -1), Jg.reshape(6, 4, -1)
    na = np.linalg.norm(a, axis=-1, keepdims=True) + 1e-8
    nb = np.linalg.norm(b, axis=-1, keepdims=True) + 1e-8
    cos_ref = np.mean(np.sum(a / na * b / nb, axis=-1))
    diff_ref = np.mean(np.linalg.norm(a - b, axis=-1))
    pd_ref = np.mean(np.linalg.norm((f(X, Y, q) - g(X, Y, q)).numpy(), axis=-1))
    got = an.alignment_metrics(f, PredictObject(g), X, Y, q)
    assert got["model_cos"] == pytest.approx(cos_ref, rel=1e-6)
    assert got["model_diff"] == pytest.approx(diff_ref, rel=1e-6)
    assert got["preds_diff"] == pytest.approx(pd_ref, rel=1e-12)
    assert an.model_cos(f, g, X, Y, q) == got["model_cos"]
    assert an.model_diff(f, g, X, Y, q) == got["model_diff"]
    assert an.preds_diff(f, g, X, Y, q) == pytest.approx(pd_ref, rel=1e-12)


def test_model_cos_scalar_output_and_eps(gen):
    """One output, von Oswald's exact normalisation: a zero-sensitivity learner scores 0, not NaN."""
    X, Y, q = randn(gen, 3, 4, 2), randn(gen, 3, 4, 1), randn(gen, 3, 1, 2)
    zero = lambda X, Y, q: 0.0 * q.sum(-1, keepdim=True)  # noqa: E731
    assert an.model_cos(ridge_predictor(0.1), zero, X, Y, q) == 0.0
    w = ridge_weights(X, Y, 0.1)[:, 0]
    assert an.model_diff(ridge_predictor(0.1), zero, X, Y, q) == pytest.approx(float(w.norm(dim=-1).mean()))
    with torch.no_grad():  # works inside no_grad too
        assert an.model_cos(ridge_predictor(0.1), ridge_predictor(0.1), X, Y, q) == pytest.approx(1.0)


def test_model_cos_needs_a_differentiable_learner(task):
    X, Y, q = task
    detached = lambda X, Y, q: kernel_predictor(X, Y, q.detach())  # noqa: E731
    with pytest.raises(SpecError, match="differentiable"):
        an.model_cos(kernel_predictor, detached, X, Y, q)


# ------------------------------------------------------------------------------------------------ probes


def test_probe_targets(gen):
    X, Y = randn(gen, 4, 3, 5), randn(gen, 4, 3, 2)  # under-determined: min-norm
    W = an.ols_weights(X, Y)
    for b in range(4):
        ref = np.linalg.lstsq(X[b].numpy(), Y[b].numpy(), rcond=None)[0].T
        np.testing.assert_allclose(W[b].numpy(), ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(an.moment_vector(X, Y)[b].numpy(), (X[b].numpy().T @ Y[b].numpy()).T, rtol=1e-13)
    assert an.moment_vector(X, Y[..., 0]).shape == (4, 1, 5)


@pytest.mark.parametrize("N,H,lam", [(40, 5, 0.3), (6, 10, 0.3), (40, 5, 0.0)])
def test_fit_linear_probe_matches_sklearn(gen, N, H, lam):
    F, T = randn(gen, N, H), randn(gen, N, 2)
    probe = an.fit_linear_probe(F, T, lam=lam)
    ref = LinearRegression() if lam == 0 else Ridge(alpha=lam)
    ref.fit(F.numpy(), T.numpy())
    np.testing.assert_allclose(probe.weight.numpy(), ref.coef_.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(probe.bias.numpy(), ref.intercept_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(probe.predict(F).numpy(), ref.predict(F.numpy()), rtol=1e-8, atol=1e-10)


def test_probes_find_a_linearly_encoded_target_and_not_noise(gen):
    B, T, H, k = 300, 4, 12, 3
    target = randn(gen, B, k)
    A = randn(gen, k, H)
    encoded = randn(gen, B, T, H)
    encoded[:, -1] = target @ A + 1e-3 * randn(gen, B, H)
    cache = {"blocks.0.hook_resid_post": randn(gen, B, T, H), "blocks.1.hook_resid_post": encoded,
             "layers.1.hook_pattern": torch.rand(B, 2, T, T, generator=gen, dtype=DT)}  # 4-D: not probed
    res = an.probe_layers(cache, target, lam=1e-6, generator=gen)
    assert set(res) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    assert res["blocks.1.hook_resid_post"]["r2"] > 0.999 and res["blocks.1.hook_resid_post"]["mse"] < 1e-4
    assert res["blocks.0.hook_resid_post"]["r2"] < 0.1 and res["blocks.0.hook_resid_post"]["mse"] > 0.8
    # the last token is read by default; another position holds only noise
    assert an.probe_r2(cache, target, names=["blocks.1.hook_resid_post"], position=0)["blocks.1.hook_resid_post"] < 0.1
    mse = an.probe_mse(cache, target.reshape(B, 1, k), names=["blocks.1.hook_resid_post"], position="concat")
    assert mse["blocks.1.hook_resid_post"] < 1e-3
    # held-out MSE against a hand computation on the deterministic split
    F = encoded[:, -1]
    p = an.fit_linear_probe(F[:240], target[:240], lam=0.5)
    ref = float(((p.predict(F[240:]) - target[240:]) ** 2).mean())
    assert an.probe_mse(cache, target, names=["blocks.1.hook_resid_post"], lam=0.5)["blocks.1.hook_resid_post"] == \
        pytest.approx(ref, rel=1e-12)


def test_probe_layers_rejects_bad_inputs(gen):
    cache = {"a": randn(gen, 10, 3, 4)}
    with pytest.raises(SpecError, match="not in the cache"):
        an.probe_layers(cache, randn(gen, 10, 2), names=["b"])
    with pytest.raises(ShapeError, match="prompts"):
        an.probe_layers(cache, randn(gen, 9, 2))
    with pytest.raises(SpecError, match="train"):
        an.probe_layers(cache, randn(gen, 10, 2), train_frac=0.95)
    with pytest.raises(SpecError, match="position"):
        an.probe_layers(cache, randn(gen, 10, 2), position="first")


# ------------------------------------------------------------------------------------------------ attention maps


def test_attention_map(gen):
    pat = torch.rand(5, 3, 4, 6, generator=gen, dtype=DT)
    cache = {"p": pat, "q": pat[:, 1]}
    np.testing.assert_allclose(an.attention_map(cache, "p"), pat.numpy().mean(axis=(0, 1)), rtol=1e-13)
    np.testing.assert_allclose(an.attention_map(cache, "p", head=1), pat.numpy()[:, 1].mean(0), rtol=1e-13)
    np.testing.assert_allclose(an.attention_map(cache, "q"), pat.numpy()[:, 1].mean(0), rtol=1e-13)
    assert isinstance(an.attention_map(cache, "q"), np.ndarray)
    with pytest.raises(SpecError, match="available"):
        an.attention_map(cache, "r")
    with pytest.raises(SpecError, match="head"):
        an.attention_map(cache, "p", head=3)


# ------------------------------------------------------------------------------------------------ LSA weights


def gd_weights(d_x, d_y, eta):
    """von Oswald et al.'s Prop. 1 matrices on (x, y) tokens, P = η (icgd's convention, 1/n in the layer)."""
    D = d_x + d_y
    WK = torch.zeros(D, D, dtype=DT)
    WK[:d_x, :d_x] = torch.eye(d_x, dtype=DT)
    WV = torch.zeros(D, D, dtype=DT)
    WV[d_x:, d_x:] = -torch.eye(d_y, dtype=DT)
    P = torch.zeros(D, D, dtype=DT)
    P[d_x:, d_x:] = eta * torch.eye(d_y, dtype=DT)
    return {"W_K": WK, "W_Q": WK.clone(), "W_V": WV, "P": P}


def test_compare_lsa_weights_on_rescaled_construction():
    c = gd_weights(4, 1, eta=0.8)
    a, b = 0.3, -2.5  # β = a·b; the layer is unchanged
    trained = {"W_K": a * c["W_K"], "W_Q": b * c["W_Q"], "W_V": c["W_V"], "P": c["P"] / (a * b)}
    res = an.compare_lsa_weights(trained, c)
    assert res["beta"] == pytest.approx(a * b) and res["beta_constructed"] == 1.0
    assert res["kq_distance"] == pytest.approx(0, abs=1e-14)
    assert res["pv_distance"] == pytest.approx(0, abs=1e-14)
    assert res["eta"] == pytest.approx(0.8) and res["eta_constructed"] == pytest.approx(0.8)
    torch.testing.assert_close(res["W_KQ_interp"], c["W_K"].mT @ c["W_Q"])
    torch.testing.assert_close(res["W_PV_interp"], c["P"] @ c["W_V"])


def test_compare_lsa_weights_distances_heads_and_products(gen):
    c = gd_weights(3, 2, eta=0.5)
    kq_c, pv_c = c["W_K"].mT @ c["W_Q"], c["P"] @ c["W_V"]
    kq_t = 2.0 * kq_c + 0.1 * randn(gen, 5, 5)
    pv_t = 0.25 * pv_c + 0.05 * randn(gen, 5, 5)
    res = an.compare_lsa_weights({"W_KQ": kq_t, "W_PV": pv_t}, c, d_y=2)
    beta = float(torch.diagonal(kq_t[:3, :3]).mean())
    assert res["beta"] == pytest.approx(beta, rel=1e-14)
    kq_rel = np.linalg.norm((kq_t / beta - kq_c).numpy()) / np.linalg.norm(kq_c.numpy())
    pv_rel = np.linalg.norm((pv_t * beta - pv_c).numpy()) / np.linalg.norm(pv_c.numpy())
    assert res["kq_distance"] == pytest.approx(kq_rel, rel=1e-12)
    assert res["pv_distance"] == pytest.approx(pv_rel, rel=1e-12)
    assert res["eta"] == pytest.approx(-float(torch.diagonal(pv_t[3:, 3:] * beta).mean()), rel=1e-12)
    torch.testing.assert_close(res["W_PV_interp"], (pv_t * beta + pv_c) / 2)
    # two heads whose products add up to the construction's
    heads = {"W_K": torch.stack([c["W_K"], c["W_K"]]), "W_Q": torch.stack([0.25 * c["W_Q"], 0.75 * c["W_Q"]]),
             "W_V": torch.stack([c["W_V"], c["W_V"]]), "P": torch.stack([0.4 * c["P"], 0.6 * c["P"]])}
    res = an.compare_lsa_weights(heads, c, d_y=2)
    assert res["kq_distance"] < 1e-14 and res["pv_distance"] < 1e-14 and res["eta"] == pytest.approx(0.5)


def test_compare_lsa_weights_rejects_bad_inputs():
    c = gd_weights(3, 1, eta=1.0)
    with pytest.raises(SpecError, match="lacks W_V"):
        an.compare_lsa_weights({"W_K": c["W_K"], "W_Q": c["W_Q"], "P": c["P"]}, c)
    with pytest.raises(ShapeError, match="different sizes"):
        an.compare_lsa_weights(gd_weights(4, 1, eta=1.0), c)
    with pytest.raises(SpecError, match="zero mean diagonal"):
        an.compare_lsa_weights({**c, "W_K": torch.zeros(4, 4, dtype=DT)}, c)
    with pytest.raises(ShapeError, match="W_Kᵀ W_Q"):
        an.compare_lsa_weights({**c, "W_V": torch.zeros(3, 4, dtype=DT)}, c)


def test_predictor_protocol():
    assert isinstance(kernel_predictor, an.Predictor)
    assert math.isfinite(an.MODEL_COS_EPS)


def test_comparisons_refuse_prompts_without_queries():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 1, generator=g)
    from icgd.learners import LeastSquares, Ridge as RidgeLearner

    with pytest.raises(ShapeError, match="x_query has no points"):
        an.preds_diff(LeastSquares(), RidgeLearner(0.1), X, Y, torch.zeros(2, 0, 3))
