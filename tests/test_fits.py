"""Sum-of-ReLU fits against the functions they fit."""

from __future__ import annotations

import pytest
import torch

from icgd.constructions.fits import activation_fits, interpolant
from icgd.errors import SpecError
from icgd.nets import ACTIVATIONS


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus", "gelu"])
def test_interpolant_hits_the_knots_and_has_the_second_order_error(name):
    act, R = ACTIVATIONS[name], 6.0
    for knots in (16, 64, 256):
        fit = interpolant(act.fn, R, knots)
        assert fit.units == knots
        b = torch.linspace(-R, R, knots, dtype=torch.float64)
        assert float((fit(b) - act.fn(b)).abs().max()) < 1e-12
        assert torch.allclose(fit.a1.abs() + fit.a2.abs(), torch.ones(knots, dtype=torch.float64))
        t = torch.linspace(-R, R, 10_001, dtype=torch.float64)
        h = 2 * R / (knots - 1)
        # linear interpolation: |f − f̂| ≤ h²/8 · max|f″|, with max|f″| computed by finite differences
        d2 = (act.fn(t[2:]) - 2 * act.fn(t[1:-1]) + act.fn(t[:-2])) / (t[1] - t[0]) ** 2
        bound = h * h / 8 * float(d2.abs().max())
        assert float((fit(t) - act.fn(t)).abs().max()) <= 1.01 * bound


def test_sup_abs_is_the_maximum_on_the_interval():
    fit = interpolant(ACTIVATIONS["tanh"].fn, 3.0, 33)
    t = torch.linspace(-3.0, 3.0, 20_001, dtype=torch.float64)
    assert abs(fit.sup_abs() - float(fit(t).abs().max())) < 1e-12


def test_exact_fits_for_relu_and_identity():
    t = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    r, dr = activation_fits(ACTIVATIONS["relu"], 5.0, 64, ramp=1e-6)
    assert r.units == 1 and dr.units == 2
    assert float((r(t) - torch.relu(t)).abs().max()) < 1e-12
    outside = (t <= 0) | (t >= 1e-6)
    assert float((dr(t) - (t > 0).double())[outside].abs().max()) < 1e-9
    i, di = activation_fits(ACTIVATIONS["identity"], 5.0, 64)
    assert float((i(t) - t).abs().max()) < 1e-12 and float((di(t) - 1).abs().max()) < 1e-12


def test_bad_fit_arguments():
    with pytest.raises(SpecError, match="knots"):
        interpolant(torch.sigmoid, 1.0, 1)
    with pytest.raises(SpecError, match="R must be"):
        interpolant(torch.sigmoid, 0.0, 8)
