"""The index plans of the frozen sparse layers (icgd.layers.plans) and the in-place residual stream of
Transformer._run_layers: the same outputs as the layers' general code and as dense references, the input never
changed, hooks and gradients unaffected, plans rebuilt when the weights change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icgd.constructions import deep_gd
from icgd.layers import EWML, MLP, ReLUAttention, Transformer
from icgd.layers.heads import fit_heads, sparse_bank
from icgd.layers.plans import LinearPlan, bank_plan
from icgd.nets import NetSpec, init_weights


def rnd(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


class _Fit:
    def __init__(self, gen, H):
        self.units, self.a1, self.a2, self.c = H, rnd(gen, H), rnd(gen, H), rnd(gen, H)


def _bank(gen, D=9, G=3, H=12):
    """Groups reading per-token query coordinates 0–2 and shared key coordinates 3–5 (plus a constant coordinate 8
    in block 1), values from coordinate 6 or 7 into coordinates 0–2."""
    q = [[(g % 3, 1.0), ((g + 1) % 3, 0.5), (8, 1.0)] for g in range(G)]
    k = [[(3 + g % 3, 2.0), (3 + (g + 2) % 3, -1.0), (8, 1.0)] for g in range(G)]
    v = [[(6 + g % 2, g % 3, 1.5)] for g in range(G)]
    alpha, c = fit_heads([_Fit(gen, H) for _ in range(G)], torch.float64)
    return sparse_bank(D, q, k, v, torch.float64, alpha=alpha, c=c, block=[[0, 0, 1]] * G)


def _tokens(gen, B, T, D=9, shared=(3, 4, 5, 8)):
    h = rnd(gen, B, T, D)
    h[..., 8] = 1.0
    h[:, :, list(shared)] = h[:, :1, list(shared)]
    return h


def _reference(layer, h):
    """The layer's general code: no plan (as for a bank whose weights require grad)."""
    bank = layer.heads
    for p in (bank.q.coef, bank.k.coef, bank.v.coef):
        p.requires_grad_(True)
    try:
        with torch.no_grad():
            return layer(h)
    finally:
        for p in (bank.q.coef, bank.k.coef, bank.v.coef):
            p.requires_grad_(False)


@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("shared", [(3, 4, 5, 8), (0, 1, 2, 8)])  # shared keys / shared queries
def test_relu_attention_plan_matches_general_code(gen, B, shared):
    layer = ReLUAttention(_bank(gen))
    h = _tokens(gen, B, 7, shared=shared)
    assert bank_plan(layer.heads) is not None
    out = layer(h)
    np.testing.assert_allclose(out.numpy(), _reference(layer, h).numpy(), rtol=1e-12, atol=1e-12)
    h2 = h.clone()
    with torch.inference_mode():
        res = layer.forward_inplace(h2)
    assert res is h2  # updated in place
    np.testing.assert_allclose(res.numpy(), out.numpy(), rtol=0, atol=0)


def test_ewml_plan_matches_general_code(gen):
    D = 9
    q = [[(0, 1.0), (1, -2.0)], [(2, 0.5), (3, 1.0)]]
    k = [[(4, 1.0), (5, 1.0)], [(6, 3.0), (7, 1.0)]]
    v = [[(8, 0, 1.0), (7, 1, -1.0)], [(6, 2, 2.0), (0, 0, 0.0)]]
    layer = EWML(sparse_bank(D, q, k, v, torch.float64, alpha=rnd(gen, 2, 3, 1), c=rnd(gen, 2, 3)))
    h = rnd(gen, 2, 5, D)
    np.testing.assert_allclose(layer(h).numpy(), _reference(layer, h).numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reorder", [False, True])
def test_linear_plan_matches_dense_matmul(gen, reorder):
    """Repeated and scattered columns, rows of different lengths, a shared column, empty rows."""
    out_dim, D = 11, 13
    W = torch.zeros(out_dim, D, dtype=torch.float64)
    for r in range(0, out_dim - 2):
        W[r, 2 + r // 2] = float(rnd(gen, 1))
        if r % 3 == 0:
            W[r, 12] = float(rnd(gen, 1))
    W[4, 0] = 1.5
    plan = LinearPlan(W.to_sparse(), reorder=reorder)
    x = rnd(gen, 2, 4, D)
    ref = (x @ W.T)[..., plan.rows]
    np.testing.assert_allclose(plan(x).numpy(), ref.numpy(), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(plan.full(x).numpy(), (x @ W.T).numpy(), rtol=1e-14, atol=1e-14)


def test_sparse_mlp_plan_matches_dense_mlp(gen):
    D, width = 10, 14
    W1 = torch.where(torch.rand(width, D, generator=gen) < 0.2, rnd(gen, width, D), torch.zeros(()))
    W2 = torch.where(torch.rand(D, width, generator=gen) < 0.2, rnd(gen, D, width), torch.zeros(()))
    sparse, dense = MLP.from_weights(W1, W2, sparse=True), MLP.from_weights(W1, W2)
    h = rnd(gen, 3, 6, D)
    np.testing.assert_allclose(sparse(h).numpy(), dense(h).detach().numpy(), rtol=1e-12, atol=1e-12)


def _model(steps=3):
    spec = NetSpec(2, 4, 2, 1)
    return spec, deep_gd(spec, eta=0.5, steps=steps, box=1.0, x_bound=3.0, knots=16)


def _prompt(gen, spec, B=1, n=9):
    X = rnd(gen, B, n, spec.d_in).clamp(-3, 3)
    return X, rnd(gen, B, n, spec.d_out), init_weights(spec, B, generator=gen).clamp(-1, 1)


def test_inplace_stream_leaves_inputs_and_matches_plain_path(gen):
    spec, model = _model()
    X, Y, w0 = _prompt(gen, spec, B=2)
    tokens, _ = model.tokens_for(X, Y, w0)
    before = tokens.clone()
    with torch.inference_mode():
        fast = model(tokens)
        trace_fast = model.trace(X, Y, w0)
    assert torch.equal(tokens, before)
    plain = model(tokens)  # grad mode: every layer returns a new tensor
    np.testing.assert_allclose(fast.numpy(), plain.detach().numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(trace_fast.numpy(), model.trace(X, Y, w0).detach().numpy(), rtol=0, atol=0)
    assert len({float(t.abs().sum()) for t in trace_fast[0]}) > 1  # the recorded steps are not one aliased tensor


def test_hooks_see_unmodified_activations(gen):
    spec, model = _model(steps=1)
    X, Y, w0 = _prompt(gen, spec)
    tokens, _ = model.tokens_for(X, Y, w0)
    cache = {}
    names = [f"blocks.{i}.hook_resid_pre" for i in range(len(model.layers))]
    with torch.inference_mode():
        out = model.run_with_hooks(tokens, fwd_hooks=[(n, lambda a, name: cache.__setitem__(name, a)) for n in names])
        ref = model(tokens)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=0, atol=0)
    h = tokens
    for i, layer in enumerate(model.layers):
        np.testing.assert_allclose(cache[names[i]].numpy(), h.numpy(), rtol=0, atol=0)
        with torch.no_grad():
            h = layer(h)


def test_gradient_flows_through_planned_layers(gen):
    spec, model = _model(steps=1)
    X, Y, w0 = _prompt(gen, spec)
    tokens, _ = model.tokens_for(X, Y, w0)
    tokens = tokens.clone().requires_grad_(True)
    out = model(tokens)
    out[..., model.layout.slice("w")].sum().backward()
    g = tokens.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    eps = 1e-6  # one directional finite difference along the context inputs x
    d = torch.zeros_like(tokens)
    d[:, :, model.layout.slice("x")] = rnd(gen, *d[:, :, model.layout.slice("x")].shape)
    with torch.no_grad():
        f = lambda t: model(t)[..., model.layout.slice("w")].sum()
        fd = (f(tokens + eps * d) - f(tokens - eps * d)) / (2 * eps)
    assert abs(float((g * d).sum()) - float(fd)) < 1e-5 * max(1.0, abs(float(fd)))


def test_plan_rebuilt_when_weights_change(gen):
    layer = ReLUAttention(_bank(gen))
    h = _tokens(gen, 1, 6)
    first = layer(h)
    with torch.no_grad():
        layer.heads.v.coef.mul_(2.0)
    np.testing.assert_allclose(layer(h).numpy(), _reference(layer, h).numpy(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(layer(h), first)


def test_transformer_of_plain_modules_is_unchanged(gen):
    """Layers without forward_inplace (here nn.Linear residual wrappers) keep the plain path."""
    class Res(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, dtype=torch.float64)

        def forward(self, h):
            return h + self.lin(h)

    model = Transformer([Res(), Res()], dim=4)
    h = rnd(gen, 1, 3, 4)
    with torch.inference_mode():
        out = model(h)
    ref = h + model.layers[0].lin(h)
    ref = ref + model.layers[1].lin(ref)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("reorder", [False, True])
def test_linear_plan_pads_stay_inside_the_token(gen, reorder):
    """Rows of different lengths whose entries end at the last coordinate: the padded slots must read valid
    coordinates (a regression: a pad continuing a run past the last column)."""
    D = 5
    W = torch.zeros(6, D, dtype=torch.float64)
    W[0, 3], W[0, 4], W[1, 4], W[2, 2], W[2, 4], W[3, 4], W[5, 1] = 1.0, 2.0, -1.0, 0.5, 3.0, 1.5, -2.0
    plan = LinearPlan(W.to_sparse(), reorder=reorder)
    x = rnd(gen, 1, 3, D)
    np.testing.assert_allclose(plan.full(x).numpy(), (x @ W.T).numpy(), rtol=1e-14, atol=1e-14)


def test_pre_hook_that_keeps_its_input_sees_it_unchanged(gen):
    """A forward pre-hook that saves the stream it is given (the usual way to record a layer's input) must see a
    tensor that the in-place fast path does not go on updating; the saved input equals that of the plain path."""
    spec, model = _model(steps=1)
    X, Y, w0 = _prompt(gen, spec, B=2)
    saved = {}

    def keep(module, args):
        saved["ref"], saved["copy"] = args[0], args[0].clone()
    handle = model.layers[0].register_forward_pre_hook(keep)
    try:
        with torch.no_grad():
            model.trace(X, Y, w0)
        assert torch.equal(saved["ref"], saved["copy"])
        fast_input = saved["copy"]
        model.trace(X, Y, w0)  # grad enabled: the plain path
        assert torch.equal(fast_input, saved["copy"])
    finally:
        handle.remove()


def test_plan_follows_alpha_and_c_starting_to_require_grad(gen):
    """A layer first called with frozen α, c (planned sector form), then with α and c requiring grad, must give
    gradients for them as a fresh layer does."""
    layer = ReLUAttention(_bank(gen))
    h = _tokens(gen, 2, 7)
    with torch.no_grad():
        before = layer(h)
    bank = layer.heads
    bank.alpha.requires_grad_(True)
    bank.c.requires_grad_(True)
    out = layer(h)
    out.sum().backward()
    assert bank.alpha.grad is not None and bank.c.grad is not None
    np.testing.assert_allclose(out.detach().numpy(), before.numpy(), rtol=1e-12, atol=1e-12)
