"""prefix_predictions on the learner protocol beyond the reference learners: the trained LSA and the constructions,
each against predict called on every prefix by hand, and the LSA with von Oswald's GD weights against icgd's GD
learner (an independent reference)."""

from __future__ import annotations

import pytest
import torch

from icgd.constructions import (akyurek_gd, convex_gd, deep_gd, deep_gd_softmax, functional_gd, linear_gd,
                                von_oswald_weights)
from icgd.learners import GD, LeastSquares
from icgd.learners.base import prefix_by_queries
from icgd.models import LSA
from icgd.nets import NetSpec, forward, init_weights


def _prompt(B=3, n=6, d=2, d_out=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(B, n, d, generator=g, dtype=torch.float64) - 0.5
    Y = torch.randn(B, n, d_out, generator=g, dtype=torch.float64)
    return X, Y


def _by_hand(predict, X, Y, first):
    """Row 0 = `first`; row i = predict on the prefix 0 … i−1 at x_i, one call per row."""
    rows = [first] + [predict(X[:, :i], Y[:, :i], X[:, i:i + 1])[:, 0] for i in range(1, X.shape[1])]
    return torch.stack(rows, dim=1)


def test_prefix_by_queries_batches_over_prompts_and_takes_row_0_from_empty():
    X, Y = _prompt()
    calls = []

    def predict(x, y, q):
        calls.append(x.shape)
        return LeastSquares().predict(x, y, q)

    out = prefix_by_queries(predict, X, Y)
    assert [c[:2] for c in calls] == [(3, i) for i in range(1, 6)]  # one batched call per prefix length
    assert torch.equal(out[:, 0], torch.zeros(3, 1, dtype=X.dtype))
    torch.testing.assert_close(out, LeastSquares().prefix_predictions(X, Y))
    ones = prefix_by_queries(predict, X, Y, lambda q: q.new_ones(q.shape[0], 1, 1))
    assert torch.equal(ones[:, 0], torch.ones(3, 1, dtype=X.dtype))
    # LAPACK's pivoted QR (min_norm_solve on the CPU) is not bitwise reproducible between calls (~1e-16)
    torch.testing.assert_close(ones[:, 1:], out[:, 1:], rtol=0, atol=1e-12)
    assert prefix_by_queries(predict, X[:, :1], Y[:, :1]).shape == (3, 1, 1)


@pytest.mark.parametrize("shared, layers", [(False, 1), (True, 3), (False, 2)])
def test_lsa_prefix_predictions_match_predict_by_hand_and_the_gd_learner(shared, layers):
    X, Y = _prompt(d=3, n=7)
    model = LSA(3, 1, n_layer=layers, shared=shared, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        out = model.prefix_predictions(X, Y)
        torch.testing.assert_close(out, _by_hand(model.predict, X, Y, X.new_zeros(3, 1)))
        for i in range(layers):
            model.set_weights(i, von_oswald_weights(3, 1, eta=0.7))
        gd = model.prefix_predictions(X, Y)
    torch.testing.assert_close(gd, GD(0.7, steps=layers).prefix_predictions(X, Y), rtol=1e-10, atol=1e-12)
    assert torch.equal(gd[:, 0], torch.zeros(3, 1, dtype=X.dtype))
    torch.testing.assert_close(model.prefix_predictions(X[0], Y[0]), gd[0])  # unbatched in, unbatched out


@pytest.mark.parametrize("build", [
    lambda: linear_gd(2, eta=0.4, steps=2),
    lambda: akyurek_gd(2, eta=0.3, n_max=8),
    lambda: functional_gd(2, kernel="exp", eta=0.5, steps=2),
], ids=["linear_gd", "akyurek_gd", "functional_gd"])
def test_constructions_prefix_predictions_match_predict_by_hand(build):
    X, Y = _prompt()
    model = build()
    out = model.prefix_predictions(X, Y)
    torch.testing.assert_close(out, _by_hand(model.predict, X, Y, X.new_zeros(3, 1)), rtol=0, atol=0)


def test_linear_gd_prefix_predictions_equal_the_gd_learner():
    X, Y = _prompt(d=3, n=8)
    torch.testing.assert_close(linear_gd(3, eta=0.6, steps=3).prefix_predictions(X, Y),
                               GD(0.6, steps=3).prefix_predictions(X, Y), rtol=1e-10, atol=1e-12)


def test_convex_gd_prefix_predictions_start_from_w0():
    X, Y = _prompt()
    model = convex_gd(2, eta=0.5, steps=2)
    w0 = torch.tensor([0.3, -0.2], dtype=torch.float64)
    for start in (None, w0):
        out = model.prefix_predictions(X, Y, w0=start)
        first = X[:, 0] @ w0[:, None] if start is not None else X.new_zeros(3, 1)
        hand = _by_hand(lambda x, y, q: model.predict(x, y, q, w0=start), X, Y, first)
        torch.testing.assert_close(out, hand, rtol=0, atol=0)
    assert torch.equal(model.prefix_predictions(X, Y)[:, 0], X.new_zeros(3, 1))


@pytest.mark.parametrize("builder", [deep_gd, deep_gd_softmax])
def test_wu_constructions_prefix_predictions_row_0_is_the_network_at_w0(builder):
    spec = NetSpec(2, 3, 2, 1)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, 5, 2, generator=g, dtype=torch.float64)
    Y = forward(spec, init_weights(spec, 2, generator=g, scale=2.0), X)
    w0 = init_weights(spec, 2, generator=g).clamp(-1.0, 1.0)
    kw = {"knots": 64, "x_bound": float(X.abs().max())} if builder is deep_gd else {"x_bound": float(X.abs().max())}
    model = builder(spec, eta=0.5, steps=2, box=1.0, **kw)
    with torch.inference_mode():
        out = model.prefix_predictions(X, Y, w0)
        hand = [model.predict(X[:, :i], Y[:, :i], X[:, i:i + 1], w0)[:, 0] for i in range(1, 5)]
    torch.testing.assert_close(out[:, 1:], torch.stack(hand, 1), rtol=0, atol=0)
    # row 0: the model's read-out of w0 itself (no GD step), f(w0, x_0) up to the activation fits
    torch.testing.assert_close(out[:, 0], forward(spec, w0, X[:, :1])[:, 0], rtol=0, atol=5e-3)
    model.w0 = w0
    with torch.inference_mode():
        torch.testing.assert_close(model.prefix_predictions(X, Y), out, rtol=0, atol=0)
