"""Wu et al.'s N-layer bias-free network: forward pass, weight order, activations, shapes and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from icgd import NetSpec
from icgd.errors import NonFiniteError, ShapeError, SpecError, UnknownActivationError
from icgd.nets import ACTIVATIONS, flatten, forward, forward_all, get_activation, init_weights, to_module, unflatten


def rnd(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def _np(a):
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)


def close(a, b, tol=1e-12):
    a, b = _np(a), _np(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# Independent scalar formulas for every activation (math module, not torch).
SCALAR = {
    "sigmoid": lambda t: 1 / (1 + math.exp(-t)),
    "tanh": math.tanh,
    "relu": lambda t: max(t, 0.0),
    "gelu": lambda t: t * 0.5 * (1 + math.erf(t / math.sqrt(2))),
    "softplus": lambda t: math.log1p(math.exp(t)),
    "identity": lambda t: t,
}


def net_ref(V_list, acts, x):
    """p(0) = x, p(j) = r_j(V_j p(j-1)) for one input, with per-element Python loops."""
    p = list(map(float, x))
    for V, act in zip(V_list, acts):
        V = np.asarray(V.detach())
        p = [act(sum(V[k, q] * p[q] for q in range(V.shape[1]))) for k in range(V.shape[0])]
    return np.array(p)


SPEC = NetSpec(d_in=3, width=4, depth=3, d_out=2, activation="tanh")


def test_spec_shapes_and_counts():
    assert SPEC.shapes == [(4, 3), (4, 4), (2, 4)]
    assert SPEC.num_params == 12 + 16 + 8
    assert SPEC.num_units == 4 + 4 + 2
    assert [(s.start, s.stop) for s in SPEC.offsets()] == [(0, 12), (12, 28), (28, 36)]
    assert SPEC.weight_index(2, 1, 3) == 12 + 1 * 4 + 3
    with pytest.raises(SpecError, match=r"V_3 has shape \(2, 4\), asked for entry \(2, 0\)"):
        SPEC.weight_index(3, 2, 0)
    one = NetSpec(d_in=2, width=7, depth=1, d_out=3)
    assert one.shapes == [(3, 2)]  # depth 1: the width is unused


def test_flat_order_equals_cat_of_linear_weights(gen):
    torch.manual_seed(0)
    lins = [nn.Linear(i, o, bias=False, dtype=torch.float64) for o, i in SPEC.shapes]
    w = torch.cat([lin.weight.detach().flatten() for lin in lins])
    X = rnd(gen, 5, 3)
    module = nn.Sequential(*[m for lin in lins for m in (lin, nn.Tanh())])
    close(forward(SPEC, w, X), module(X))
    mats = unflatten(SPEC, w)
    for V, lin in zip(mats, lins):
        close(V, lin.weight)
    for j, lin in enumerate(lins, start=1):
        o, i = lin.weight.shape
        for k in range(o):
            for q in range(i):
                assert w[SPEC.weight_index(j, k, q)].item() == lin.weight[k, q].item()


def test_forward_matches_scalar_loop_and_to_module(gen):
    spec = NetSpec(d_in=3, width=4, depth=3, d_out=2, activation="sigmoid")
    w = init_weights(spec, generator=gen)
    X = rnd(gen, 6, 3)
    out = forward(spec, w, X)
    mats = unflatten(spec, w)
    ref = np.stack([net_ref(mats, [SCALAR["sigmoid"]] * 3, x) for x in X])
    close(out, ref)
    module = to_module(spec, w)
    assert [type(m).__name__ for m in module][::2] == ["Linear"] * 3
    assert all(m.bias is None for m in module[::2])
    close(module(X), out)
    outs = forward_all(spec, w[None], X[None])
    assert [tuple(o.shape) for o in outs] == [(1, 6, 4), (1, 6, 4), (1, 6, 2)]
    close(outs[-1][0], out)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_output_activation_false(gen, act):
    spec = NetSpec(d_in=2, width=3, depth=2, d_out=2, activation=act, output_activation=False)
    w = init_weights(spec, generator=gen)
    X = rnd(gen, 4, 2)
    mats = unflatten(spec, w)
    ref = np.stack([net_ref(mats, [SCALAR[act], SCALAR["identity"]], x) for x in X])
    close(forward(spec, w, X), ref)
    close(to_module(spec, w)(X), ref)
    assert spec.layer_act(1).name == act and spec.layer_act(2).name == "identity"


def test_flatten_unflatten_round_trip(gen):
    w = rnd(gen, 3, SPEC.num_params)
    mats = unflatten(SPEC, w)
    assert [tuple(m.shape) for m in mats] == [(3, 4, 3), (3, 4, 4), (3, 2, 4)]
    close(flatten(SPEC, mats), w)
    close(mats[1][2, 3, 1], w[2, 12 + 3 * 4 + 1])  # row-major within a layer
    single = [rnd(gen, o, i) for o, i in SPEC.shapes]
    w1 = flatten(SPEC, single)
    assert w1.shape == (SPEC.num_params,)
    for a, b in zip(unflatten(SPEC, w1), single):
        close(a, b)
    with pytest.raises(ShapeError, match="expected 3 weight matrices, got 2"):
        flatten(SPEC, single[:2])
    with pytest.raises(ShapeError, match=r"V_2 must have shape \(\.\.\., 4, 4\)"):
        flatten(SPEC, [single[0], single[0], single[2]])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_and_derivative_against_autograd(name):
    act = get_activation(name)
    t = torch.cat([torch.linspace(-6, 6, 97, dtype=torch.float64), torch.tensor([0.0, 1e-9, -1e-9, 25.0, -25.0],
                                                                               dtype=torch.float64)])
    close(act(t), [SCALAR[name](float(x)) for x in t], tol=1e-12)
    tt = t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(act(tt).sum(), tt)
    close(act.deriv(t), g, tol=1e-9)
    if name == "relu":
        zero = torch.zeros(1, dtype=torch.float64)
        assert act.deriv(zero).item() == 0.0
        z = zero.clone().requires_grad_(True)
        (gz,) = torch.autograd.grad(act(z).sum(), z)
        assert gz.item() == 0.0
    # derivative also against a central finite difference of the independent scalar formula (away from kinks)
    for x in [-2.3, -0.4, 0.7, 3.1]:
        h = 1e-6
        fd = (SCALAR[name](x + h) - SCALAR[name](x - h)) / (2 * h)
        assert abs(act.deriv(torch.tensor([x], dtype=torch.float64)).item() - fd) < 1e-7


def test_batched_and_unbatched_shapes(gen):
    Bn, n = 3, 5
    w_b = rnd(gen, Bn, SPEC.num_params, scale=0.5)
    X_b = rnd(gen, Bn, n, 3)
    assert forward(SPEC, w_b[0], X_b[0]).shape == (n, 2)
    both = forward(SPEC, w_b, X_b)
    assert both.shape == (Bn, n, 2)
    w_only = forward(SPEC, w_b, X_b[0])  # one prompt, several weight vectors
    x_only = forward(SPEC, w_b[0], X_b)  # one weight vector, several prompts
    assert w_only.shape == x_only.shape == (Bn, n, 2)
    for b in range(Bn):
        close(both[b], forward(SPEC, w_b[b], X_b[b]))
        close(w_only[b], forward(SPEC, w_b[b], X_b[0]))
        close(x_only[b], forward(SPEC, w_b[0], X_b[b]))
    # numpy arrays and lists are accepted and give the same float64 numbers (a list of X values is converted
    # at the weights' precision, not rounded through float32 first)
    out = forward(SPEC, w_b[0].numpy(), X_b[0].tolist())
    assert out.dtype == torch.float64
    close(out, forward(SPEC, w_b[0], X_b[0]))


def test_init_weights_shape_and_scale():
    g = torch.Generator().manual_seed(5)
    spec = NetSpec(d_in=50, width=40, depth=2, d_out=30)
    w = init_weights(spec, batch=20, generator=g, scale=2.0)
    assert w.shape == (20, spec.num_params) and w.dtype == torch.float64
    V1, V2 = unflatten(spec, w)
    assert abs(V1.std().item() - 2.0 / math.sqrt(50)) < 0.02
    assert abs(V2.std().item() - 2.0 / math.sqrt(40)) < 0.02
    assert init_weights(spec).shape == (spec.num_params,)


# ------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("field", ["d_in", "width", "depth", "d_out"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_spec_rejects_non_positive_sizes(field, bad):
    kwargs = dict(d_in=2, width=3, depth=2, d_out=1)
    kwargs[field] = bad
    with pytest.raises(SpecError, match=f"{field} must be an integer >= 1, got {bad!r}"):
        NetSpec(**kwargs)


def test_spec_rejects_unknown_activation():
    with pytest.raises(UnknownActivationError, match="unknown activation 'swish'; choose one of gelu, identity"):
        NetSpec(d_in=2, width=3, depth=2, d_out=1, activation="swish")
    with pytest.raises(KeyError):  # also a KeyError and a ValueError, and its message is not quoted
        get_activation("swish")
    with pytest.raises(ValueError):
        get_activation("swish")
    try:
        get_activation("swish")
    except UnknownActivationError as exc:
        assert str(exc).startswith("unknown activation 'swish'")
    with pytest.raises(SpecError, match="output_activation must be True or False"):
        NetSpec(d_in=2, width=3, depth=2, d_out=1, output_activation=1)


def test_forward_rejects_bad_shapes_and_values(gen):
    w = rnd(gen, SPEC.num_params)
    with pytest.raises(ShapeError, match=r"X has last dimension 4 but spec.d_in is 3"):
        forward(SPEC, w, rnd(gen, 5, 4))
    with pytest.raises(ShapeError, match=r"w has last dimension 35 but spec.num_params is 36"):
        forward(SPEC, w[:-1], rnd(gen, 5, 3))
    with pytest.raises(ShapeError, match="w has 2 rows but X has 3 prompts"):
        forward(SPEC, rnd(gen, 2, SPEC.num_params), rnd(gen, 3, 5, 3))
    with pytest.raises(ShapeError, match=r"X must have 2 dimensions \(one prompt\) or 3 \(a batch\)"):
        forward(SPEC, w, rnd(gen, 1, 2, 5, 3))
    X = rnd(gen, 5, 3)
    X[2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="X contains NaN or inf"):
        forward(SPEC, w, X)
    w_inf = w.clone()
    w_inf[0] = float("inf")
    with pytest.raises(NonFiniteError, match="w contains NaN or inf"):
        forward(SPEC, w_inf, rnd(gen, 5, 3))
    with pytest.raises(ShapeError, match="to_module takes one weight vector"):
        to_module(SPEC, rnd(gen, 2, SPEC.num_params))
    with pytest.raises(ShapeError, match=r"w must have shape \(D_w,\) or \(B, D_w\)"):
        unflatten(SPEC, rnd(gen, 1, 1, SPEC.num_params))
