"""Akyürek et al.'s constructions against closed forms written here in numpy (float64):

* ``ridge`` against ``x_qᵀ (XᵀX + λI)⁻¹ Xᵀy`` (``np.linalg.solve``);
* ``akyurek_gd`` against one pass of single-example SGD from w = 0, a plain numpy loop;
* every primitive layer (mov, mul, aff, the reciprocal seed and Newton step, LayerNorm division) against its
  definition on random tokens.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icgd.constructions.akyurek import (
    NEWTON_STEPS, SEED_ALPHA, Product, aff, akyurek_gd, div, div_ln, mov, mul, recip_newton, recip_seed, ridge,
    ridge_layout,
)
from icgd.errors import NonFiniteError, ShapeError, SpecError
from icgd.layers import EWML, MLP, KernelAttention, Transformer
from icgd.layers.norm import LayerNorm
from icgd.tokens import Layout

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are hundreds of tiny layers: intra-op threads only add overhead (and stall badly on a busy
    machine), so the module runs single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def prompt(gen, B, n, d, m=3):
    """x ~ N(0, I), y = wᵀx with w ~ N(0, I): the paper's noiseless task."""
    X = torch.randn(B, n, d, generator=gen, dtype=F64)
    w = torch.randn(B, d, 1, generator=gen, dtype=F64)
    return X, X @ w, torch.randn(B, m, d, generator=gen, dtype=F64)


def ridge_ref(X, Y, xq, lam):
    X, Y, xq = (np.asarray(t, dtype=np.float64) for t in (X, Y, xq))
    d = X.shape[-1]
    A = np.swapaxes(X, -1, -2) @ X + lam * np.eye(d)
    w = np.linalg.solve(A, np.swapaxes(X, -1, -2) @ Y)
    return xq @ w, w[..., 0]


def sgd_ref(X, Y, xq, eta, lam):
    """w_k = w_{k−1} − 2η(x_k x_kᵀ w_{k−1} − y_k x_k + λ w_{k−1}), w_0 = 0; prediction w_nᵀ x_q."""
    X, Y, xq = (np.asarray(t, dtype=np.float64) for t in (X, Y, xq))
    preds = []
    for b in range(X.shape[0]):
        w = np.zeros(X.shape[-1])
        for x, y in zip(X[b], Y[b, :, 0]):
            w = w - 2.0 * eta * (x * (x @ w) - y * x + lam * w)
        preds.append(xq[b] @ w)
    return np.stack(preds)[..., None]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> None:
    """|a − b| ≤ atol + rtol |b| elementwise (torch.testing.assert_close costs seconds on its first call)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    assert bool(((a - b).abs() <= atol + rtol * b.abs()).all()), float((a - b).abs().max())


def rel_err(pred, ref) -> float:
    pred, ref = np.asarray(pred), np.asarray(ref)
    assert pred.shape == ref.shape, (pred.shape, ref.shape)
    return float(np.abs(pred - ref).max() / max(np.abs(ref).max(), 1e-300))


# ---------------------------------------------------------------------------------------------------------------
# ridge
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d, n, n_max, lam", [
    (8, 40, 40, 0.1),   # the paper's setting
    (8, 5, 40, 0.5),    # n < d and n < n_max
    (3, 20, 25, 1.0),
    (1, 1, 4, 0.3),
    (6, 12, 16, 0.01),
    (5, 3, 3, 2.0),
])
def test_ridge_exact_matches_closed_form(gen, d, n, n_max, lam):
    model = ridge(d, lam=lam, n_max=n_max)
    X, Y, xq = prompt(gen, 3, n, d)
    ref, w_ref = ridge_ref(X, Y, xq, lam)
    pred = model.predict(X, Y, xq)
    assert pred.shape == (3, 3, 1) and pred.dtype == F64
    assert rel_err(pred, ref) <= 1e-8
    assert np.abs(pred.numpy() - ref).max() <= 1e-8 * max(1.0, np.abs(ref).max())
    assert rel_err(model.weights(X, Y), w_ref) <= 1e-8


def test_ridge_state_holds_the_inverse_and_moment(gen):
    d, n, lam = 4, 9, 0.7
    model = ridge(d, lam=lam, n_max=12)
    X, Y, xq = prompt(gen, 2, n, d)
    tokens, _ = model.tokens_for(X, Y, xq)
    h = model(tokens)
    L = model.layout
    A_inv = np.linalg.inv(np.swapaxes(X.numpy(), -1, -2) @ X.numpy() + lam * np.eye(d))
    for i in (0, n, n + 2):  # a context token and the queries hold the same state
        assert rel_err(L.read(h, "A")[:, i].reshape(2, d, d), A_inv) <= 1e-12
        assert rel_err(L.read(h, "b")[:, i], (np.swapaxes(X.numpy(), -1, -2) @ Y.numpy())[..., 0]) <= 1e-14
    for scratch in ("u", "yk", "v", "s", "r", "z"):  # erased after the last example
        assert L.read(h, scratch).abs().max() == 0.0


def test_ridge_unbatched_and_list_inputs(gen):
    model = ridge(2, lam=0.5, n_max=6)
    X, Y, xq = prompt(gen, 1, 4, 2)
    ref, _ = ridge_ref(X, Y, xq, 0.5)
    out = model.predict(X[0].tolist(), Y[0].tolist(), xq[0].tolist())
    assert out.shape == (3, 1)
    assert rel_err(out, ref[0]) <= 1e-12
    w = model.weights(X[0].numpy(), Y[0].numpy())
    assert w.shape == (2,) and rel_err(xq[0] @ w, ref[0, :, 0]) <= 1e-12


def test_ridge_layer_and_head_counts():
    d, n_max = 3, 5
    exact = ridge(d, lam=0.2, n_max=n_max)
    counts = exact.layer_counts()
    assert counts["layers"] == len(exact.layers) == 1 + 12 * n_max + 2
    assert counts["heads"] == (2 * d + 15) * n_max + d + 1
    assert counts["KernelAttention"] == n_max and counts["LayerNorm"] == n_max
    assert counts["EWML"] == (1 + 1 + NEWTON_STEPS + 1 + 1) * n_max + 2
    faithful = ridge(d, lam=0.2, n_max=n_max, variant="faithful")
    assert len(faithful.layers) == 1 + 6 * n_max + 2
    assert {type(m) for m in faithful.layers} == {MLP, KernelAttention, LayerNorm}
    assert {m.activation for m in faithful.layers if isinstance(m, MLP)} == {"gelu"}
    assert isinstance(exact, Transformer)
    assert exact.roles[:3] == ["aff A = I/λ", "mov x_1, y_1", "mul v = A u, b += u y"]


# Measured (6 seeds × 5 shapes, d ≤ 8, n ≤ 40, batch 8): 8e-9 (λ = 1), 6e-8 (λ = 0.1), 1.4e-6 (λ = 0.01).
@pytest.mark.parametrize("lam, tol", [(1.0, 1e-7), (0.1, 1e-6), (0.01, 2e-5)])
def test_ridge_faithful_within_stated_tolerance(gen, lam, tol):
    d, n = 8, 40
    model = ridge(d, lam=lam, n_max=n, variant="faithful")
    X, Y, xq = prompt(gen, 4, n, d)
    ref, _ = ridge_ref(X, Y, xq, lam)
    assert rel_err(model.predict(X, Y, xq), ref) <= tol
    X, Y, xq = prompt(gen, 4, 5, d)  # under-determined, n < n_max
    ref, _ = ridge_ref(X, Y, xq, lam)
    assert rel_err(model.predict(X, Y, xq), ref) <= tol


def test_ridge_faithful_error_is_the_gelu_approximation(gen):
    """With a large LayerNorm constant the error is Lemma 4's, O(ε²): ×10 in ε is ×100 in error."""
    d, n, lam = 4, 20, 1.0
    X, Y, xq = prompt(gen, 4, n, d)
    ref, _ = ridge_ref(X, Y, xq, lam)
    errs = [rel_err(ridge(d, lam=lam, n_max=n, variant="faithful", gelu_scale=s, ln_big=1e6).predict(X, Y, xq), ref)
            for s in (1e-2, 1e-3)]
    assert errs[0] > 1e-5  # the approximation is real
    assert 30.0 < errs[0] / errs[1] < 300.0


def test_ridge_faithful_error_is_the_layernorm_division(gen):
    """With a tiny GeLU scale the error is Lemma 8's, O(1/N²)."""
    d, n, lam = 4, 20, 1.0
    X, Y, xq = prompt(gen, 4, n, d)
    ref, _ = ridge_ref(X, Y, xq, lam)
    errs = [rel_err(ridge(d, lam=lam, n_max=n, variant="faithful", gelu_scale=1e-5, ln_big=N).predict(X, Y, xq), ref)
            for N in (10.0, 100.0)]
    assert errs[0] > 1e-5
    assert 30.0 < errs[0] / errs[1] < 300.0


def test_ridge_rejects_bad_arguments_and_prompts(gen):
    with pytest.raises(SpecError, match="lam must be a finite number > 0"):
        ridge(3, lam=0.0, n_max=4)
    with pytest.raises(SpecError, match="n_max must be an integer >= 1"):
        ridge(3, lam=1.0, n_max=0)
    with pytest.raises(SpecError, match="d_in must be an integer >= 1"):
        ridge(0, lam=1.0, n_max=4)
    with pytest.raises(SpecError, match="variant must be one of"):
        ridge(3, lam=1.0, n_max=4, variant="approx")
    with pytest.raises(SpecError, match="dtype must be"):
        ridge(3, lam=1.0, n_max=4, dtype=torch.int64)
    with pytest.raises(SpecError, match="only with variant='faithful'"):
        ridge(3, lam=1.0, n_max=4, gelu_scale=1e-3)
    with pytest.raises(SpecError, match="gelu_scale must be"):
        ridge(3, lam=1.0, n_max=4, variant="faithful", gelu_scale=-1.0)
    model = ridge(3, lam=1.0, n_max=4)
    X, Y, xq = prompt(gen, 2, 5, 3)
    with pytest.raises(ShapeError, match=r"5 context examples .* n_max = 4; rebuild it with n_max >= 5"):
        model.predict(X, Y, xq)
    X, Y, xq = prompt(gen, 2, 3, 3)
    with pytest.raises(ShapeError, match="d_in"):
        model.predict(X[..., :2], Y, xq)
    with pytest.raises(ShapeError, match="output axis"):
        model.predict(X, Y[..., 0], xq)
    X[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        model.predict(X, Y, xq)


# ---------------------------------------------------------------------------------------------------------------
# one-pass SGD
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d, n, n_max, eta, lam", [
    (8, 40, 40, 0.01, 0.0),
    (8, 40, 40, 0.03, 0.1),
    (4, 5, 12, 0.05, 0.5),   # n < n_max with weight decay: absent examples must be identities
    (1, 3, 3, 0.1, 0.2),
])
def test_akyurek_gd_exact_matches_sgd_loop(gen, d, n, n_max, eta, lam):
    model = akyurek_gd(d, eta=eta, lam=lam, n_max=n_max)
    X, Y, xq = prompt(gen, 3, n, d)
    ref = sgd_ref(X, Y, xq, eta, lam)
    assert rel_err(model.predict(X, Y, xq), ref) <= 1e-12
    w = model.weights(X, Y)
    assert rel_err((xq @ w[..., None]), ref) <= 1e-12


def test_akyurek_gd_single_example_is_theorem_1(gen):
    """From w = 0 one step is w' = 2η y₁ x₁ whatever λ; the prediction is w'ᵀx₂."""
    X, Y, xq = prompt(gen, 2, 1, 3)
    pred = akyurek_gd(3, eta=0.05, lam=0.4, n_max=1).predict(X, Y, xq)
    expected = 2 * 0.05 * Y[:, :1, 0:1] * (xq @ X[:, 0, :, None])
    assert rel_err(pred, expected) <= 1e-14


def test_akyurek_gd_layers_and_default_n_max():
    model = akyurek_gd(3, eta=0.1)
    assert model.n_max == 40 and len(model.layers) == 4 * 40 + 1
    assert model.layer_counts()["heads"] == 4 * 40 + 1  # λ = 0: mov 1, mul e 2, mul g 1, readout 1
    assert akyurek_gd(3, eta=0.1, lam=0.1, n_max=5).layer_counts()["heads"] == 5 * 5 + 1


# Measured (6 seeds × 4 settings, batch 8): ≤ 2.3e-9.
def test_akyurek_gd_faithful_within_stated_tolerance(gen):
    for d, n, n_max, eta, lam in [(8, 40, 40, 0.01, 0.0), (4, 6, 10, 0.05, 0.5)]:
        model = akyurek_gd(d, eta=eta, lam=lam, n_max=n_max, variant="faithful")
        assert {type(m) for m in model.layers} == {KernelAttention, MLP}
        X, Y, xq = prompt(gen, 4, n, d)
        assert rel_err(model.predict(X, Y, xq), sgd_ref(X, Y, xq, eta, lam)) <= 1e-7


def test_akyurek_gd_rejects_bad_arguments():
    with pytest.raises(SpecError, match="eta must be a finite number > 0"):
        akyurek_gd(3, eta=0.0)
    with pytest.raises(SpecError, match="lam must be a finite number >= 0"):
        akyurek_gd(3, eta=0.1, lam=-1.0)
    with pytest.raises(SpecError, match="variant must be one of"):
        akyurek_gd(3, eta=0.1, variant="paper")
    with pytest.raises(SpecError, match="only with variant='faithful'"):
        akyurek_gd(3, eta=0.1, gelu_scale=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# primitives, each on its own
# ---------------------------------------------------------------------------------------------------------------

TOY = Layout([("x", 3), ("y", 1), ("one", 1), ("t", 1), ("pos", 4), ("p", 6), ("q", 6), ("o", 12), ("s", 1),
              ("r", 1)])


def toy_tokens(gen, B=2, T=6, n=3):
    h = torch.randn(B, T, TOY.dim, generator=gen, dtype=F64)
    h[..., TOY.slice("one")] = 1.0
    h[..., TOY.slice("pos")] = 0.0
    pos = TOY.slice("pos")
    h[:, :n, pos.start:pos.start + n] = torch.eye(n, dtype=F64)
    return h


def test_mov_copies_token_k_into_every_token(gen):
    h = toy_tokens(gen)
    k = 1
    layer = mov(TOY, TOY.index("pos", k), [("y", "s"), (TOY.index("x", 2), TOY.index("r"))])
    assert isinstance(layer, KernelAttention) and layer.num_heads == 1
    expected = h.clone()
    expected[..., TOY.index("s")] += h[:, k, TOY.index("y")][:, None]
    expected[..., TOY.index("r")] += h[:, k, TOY.index("x", 2)][:, None]
    close(layer(h), expected, rtol=0, atol=1e-15)
    with pytest.raises(SpecError, match="has 3 entries but 'p' has 6"):
        mov(TOY, TOY.index("pos", k), [("x", "p")])


def test_mov_from_an_absent_token_is_the_identity(gen):
    h = toy_tokens(gen, n=2)
    layer = mov(TOY, TOY.index("pos", 3), [("y", "s")])
    assert torch.equal(layer(h), h)


@pytest.mark.parametrize("shape", [(2, 3, 2), (3, 1, 2), (2, 1, 3), (1, 6, 1), (6, 1, 1)])
def test_mul_exact_is_the_matrix_product(gen, shape):
    a, b, c = shape
    L = Layout([("one", 1), ("P", a * b), ("Q", b * c), ("O", a * c)])
    h = torch.randn(2, 5, L.dim, generator=gen, dtype=F64)
    h[..., L.slice("one")] = 1.0
    layer = mul(L, [Product("O", "P", "Q", shape, coef=-0.5)])
    assert isinstance(layer, EWML)
    out = layer(h)
    prod = L.read(h, "P").reshape(2, 5, a, b) @ L.read(h, "Q").reshape(2, 5, b, c)
    expected = h.clone()
    expected[..., L.slice("O")] += -0.5 * prod.reshape(2, 5, a * c)
    close(out, expected, rtol=1e-14, atol=1e-14)
    heads = a * c if b > 1 else min(a, c)
    assert layer.num_heads == heads


def test_mul_faithful_is_lemma_4(gen):
    """√(π/2)/ε² (GeLU(εp + εq) − GeLU(εp) − GeLU(εq)) = pq (1 + O(ε²)) — and squares (p = q) work too."""
    L = Layout([("one", 1), ("P", 6), ("Q", 6), ("O", 4), ("S", 1)])
    h = torch.randn(2, 5, L.dim, generator=gen, dtype=F64)
    h[..., L.slice("one")] = 1.0
    prod = L.read(h, "P").reshape(2, 5, 2, 3) @ L.read(h, "Q").reshape(2, 5, 3, 2)
    square = (L.read(h, "P") ** 2).sum(-1, keepdim=True)
    errs = []
    for eps in (1e-2, 1e-3):
        layer = mul(L, [Product("O", "P", "Q", (2, 3, 2)), Product("S", "P", "P", (1, 6, 1))], "faithful", scale=eps)
        assert isinstance(layer, MLP) and layer.activation == "gelu"
        out = layer(h)
        e = max(float((L.read(out, "O") - L.read(h, "O") - prod.reshape(2, 5, 4)).abs().max() / prod.abs().max()),
                float((L.read(out, "S") - L.read(h, "S") - square).abs().max() / square.abs().max()))
        errs.append(e)
    assert errs[0] < 1e-2 and 30 < errs[0] / errs[1] < 300
    # operand size hints divide the effective ε of their slots: 10× on both is the same as ε/10
    hinted = mul(L, [Product("O", "P", "Q", (2, 3, 2))], "faithful", scale=1e-2, magnitude={"P": 10.0, "Q": 10.0})
    e = float((L.read(hinted(h), "O") - L.read(h, "O") - prod.reshape(2, 5, 4)).abs().max() / prod.abs().max())
    assert e < errs[0] / 30


def test_mul_rejects_mismatched_shapes():
    for variant in ("exact", "faithful"):
        with pytest.raises(SpecError, match=r"slot 'q' has 6 entries, expected 4"):
            mul(TOY, [Product("o", "p", "q", (3, 2, 2))], variant)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_aff_is_exactly_affine(gen, activation):
    h = toy_tokens(gen)
    W = torch.randn(6, 3, generator=gen, dtype=F64)
    bvec = torch.randn(6, generator=gen, dtype=F64)
    layer = aff(TOY, [("p", "x", W), ("q", "q", -1.0), ("s", "y", 2.5)], bias=[("p", bvec)], activation=activation)
    out = layer(h)
    expected = h.clone()
    expected[..., TOY.slice("p")] += TOY.read(h, "x") @ W.T + bvec
    expected[..., TOY.slice("q")] = 0.0
    expected[..., TOY.slice("s")] += 2.5 * TOY.read(h, "y")
    close(out, expected, rtol=1e-13, atol=1e-13)
    assert layer.width == 2 * (6 + 6 + 1)
    with pytest.raises(SpecError, match="scalar weight needs slots of one size"):
        aff(TOY, [("p", "x", 1.0)])
    with pytest.raises(SpecError, match=r"must be \(6, 3\)"):
        aff(TOY, [("p", "x", torch.ones(3, 6))])


def test_reciprocal_seed_newton_and_exact_division(gen):
    s_vals = torch.cat([torch.tensor([1.0, 1.5, 3.0]), torch.logspace(0, 8, 41, dtype=F64)]).to(F64)
    h = torch.zeros(1, len(s_vals), TOY.dim, dtype=F64)
    h[..., TOY.index("one")] = 1.0
    h[0, :, TOY.index("s")] = s_vals
    seed = recip_seed(TOY, "s", "r")
    assert isinstance(seed, LayerNorm) and seed.eps == 0.0
    h = seed(h)
    r0 = TOY.read(h, "r")[0, :, 0]
    close(r0, SEED_ALPHA * math.sqrt(2) / torch.sqrt(s_vals ** 2 + 1), rtol=1e-15, atol=0)
    e0 = 1 - s_vals * r0
    assert float(e0.abs().max()) <= 1 - SEED_ALPHA + 1e-15  # 0.1716 for every s >= 1
    step = recip_newton(TOY, "s", "r")
    for _ in range(NEWTON_STEPS):
        prev = TOY.read(h, "r")[0, :, 0].clone()
        h = step(h)
        close(TOY.read(h, "r")[0, :, 0], 2 * prev - s_vals * prev ** 2, rtol=1e-15, atol=0)
    assert float((TOY.read(h, "r")[0, :, 0] * s_vals - 1).abs().max()) <= 4e-16


def test_div_ln_is_lemma_8(gen):
    h = toy_tokens(gen)
    h[..., TOY.index("s")] = torch.rand(2, 6, generator=gen, dtype=F64) * 10 + 0.5
    h[..., TOY.index("s")] *= torch.where(torch.rand(2, 6, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    for big in (10.0, 1e3):
        out = div_ln(TOY, "p", "s", "q", big=big)(h)
        v, s = TOY.read(h, "p"), TOY.read(h, "s")
        got = TOY.read(out, "q") - TOY.read(h, "q")
        rel = ((got - v / s.abs()).norm(dim=-1) / (v / s.abs()).norm(dim=-1))
        m = 2 + 2 * 6
        bound = ((v * v).sum(-1) + m * 1e-5 / 2) / (2 * big ** 2 * s[..., 0] ** 2)
        # rel = 1 − (1 + 2·bound)^(−1/2): the stated error is the true one to first order
        assert bool((rel <= 1.01 * bound + 1e-13).all()) and bool((rel >= 0.9 * bound - 1e-13).all())


def test_div_both_variants(gen):
    h = toy_tokens(gen)
    h[..., TOY.index("r")] = 0.0
    h[..., TOY.index("s")] = 1.0 + torch.rand(2, 6, generator=gen, dtype=F64) * 1e3
    v, s = TOY.read(h, "p"), TOY.read(h, "s")
    exact = div(TOY, "p", "s", "q", "exact", scratch="r")
    assert len(exact) == NEWTON_STEPS + 2
    out = Transformer(exact)(h)
    close(TOY.read(out, "q") - TOY.read(h, "q"), v / s, rtol=1e-14, atol=1e-15)  # q holds O(1) values
    close(TOY.read(out, "r"), 1 / s, rtol=4e-16, atol=0)
    (faithful,) = div(TOY, "p", "s", "q", "faithful", big=1e3)
    close(TOY.read(faithful(h), "q") - TOY.read(h, "q"), v / s, rtol=1e-6, atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# the new layer types
# ---------------------------------------------------------------------------------------------------------------

def test_layernorm_layer_matches_definition(gen):
    W_in, W_out = torch.randn(5, 7, generator=gen, dtype=F64), torch.randn(7, 5, generator=gen, dtype=F64)
    gain, bias = torch.randn(5, generator=gen, dtype=F64), torch.randn(5, generator=gen, dtype=F64)
    layer = LayerNorm(W_in, W_out, eps=1e-3, gain=gain, bias=bias)
    h = torch.randn(2, 4, 7, generator=gen, dtype=F64)
    z = h @ W_in.T
    ref = h + torch.nn.functional.layer_norm(z, (5,), gain, bias, eps=1e-3) @ W_out.T
    close(layer(h), ref, rtol=1e-13, atol=1e-13)
    assert layer.width == 5 and "eps=0.001" in repr(layer)
    with pytest.raises(ShapeError, match=r"need W_in \(r, D\) and W_out \(D, r\)"):
        LayerNorm(W_in, W_in)
    with pytest.raises(SpecError, match="eps must be >= 0"):
        LayerNorm(W_in, W_out, eps=-1.0)
    with pytest.raises(ShapeError, match="expects 7"):
        layer(torch.zeros(1, 2, 6, dtype=F64))


def test_mlp_gelu_activation(gen):
    W1, W2 = torch.randn(4, 5, generator=gen, dtype=F64), torch.randn(5, 4, generator=gen, dtype=F64)
    h = torch.randn(2, 3, 5, generator=gen, dtype=F64)
    z = h @ W1.T
    gelu = z * 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    for sparse in (False, True):
        layer = MLP.from_weights(W1, W2, activation="gelu", sparse=sparse)
        close(layer(h), h + gelu @ W2.T, rtol=1e-13, atol=1e-13)
        assert "activation=gelu" in repr(layer)
    assert MLP(5, 3).activation == "relu" and "activation" not in repr(MLP(5, 3))
    with pytest.raises(SpecError, match="unknown MLP activation 'tanh'"):
        MLP(5, 3, activation="tanh")


def test_ridge_layout_has_the_named_slots():
    L = ridge_layout(3, 7)
    for name in ("x", "y", "t", "one", "pos", "A", "b", "w", "pred"):
        assert name in L
    assert L.size("pos") == 7 and L.size("A") == 9
