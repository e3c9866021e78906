"""The fused head-bank kernels of icgd.layers against head-by-head references written here in numpy loops:
the sector form of a ReLU head sum (``relu_sectors``), the shortcut paths of ReLUAttention that use it, EWML's
folded heads, the column-based invariance test and the public sparse builders of ``icgd.layers.heads``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import icgd.layers.attention as attention_mod
from icgd.layers import EWML, ReLUAttention
from icgd.layers.attention import relu_mix
from icgd.layers.heads import fit_heads, relu_sectors, sparse_bank, sparse_rowmap, sparse_valuemap


def rnd(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def head_sum_ref(U, alpha, c):
    """``Σ_h c_{g,h} relu(Σ_b α_{g,h,b} U_{b,g,x,b})`` head by head."""
    U, alpha, c = (np.asarray(t, dtype=np.float64) for t in (U, alpha, c))
    B, G, X, nb = U.shape
    out = np.zeros((B, G, X))
    for b in range(B):
        for g in range(G):
            for x in range(X):
                for h in range(alpha.shape[1]):
                    out[b, g, x] += c[g, h] * max(0.0, float(alpha[g, h] @ U[b, g, x]))
    return out


def attention_ref(h, Q, K, V, causal):
    """Token form of ReLU attention from dense per-head matrices, divided by the keys each token sees."""
    h, Q, K, V = (np.asarray(t.detach(), dtype=np.float64) for t in (h, Q, K, V))
    out = h.copy()
    B, T, _ = h.shape
    for b in range(B):
        for i in range(T):
            keys = range(i + 1) if causal else range(T)
            for m in range(Q.shape[0]):
                for s in keys:
                    out[b, i] += max(0.0, float((Q[m] @ h[b, i]) @ (K[m] @ h[b, s]))) * (V[m] @ h[b, s]) / len(keys)
    return out


@pytest.mark.parametrize("nb", [1, 2])
def test_relu_sectors_equal_the_head_by_head_sum(gen, nb):
    G, H, X = 3, 12, 40
    alpha, c = rnd(gen, G, H, nb), rnd(gen, G, H)
    alpha[0, :3] = 0.0  # heads that are always off
    alpha[1, 1] = 2.0 * alpha[1, 0]  # two heads with the same breakpoints
    U = rnd(gen, 2, G, X, nb, scale=3.0)
    U[0, :, :2] = 0.0  # the origin
    U[1, :, 0, 0] = 0.0  # on an axis
    if nb == 2:  # exactly on a breakpoint of head 4: ⟨α_4, U⟩ = 0
        U[1, :, 1] = torch.stack([-alpha[:, 4, 1], alpha[:, 4, 0]], dim=-1)
    ref = head_sum_ref(U, alpha, c)
    assert (ref != 0).any()
    np.testing.assert_allclose(relu_mix(U, alpha, c, relu_sectors(alpha, c)).numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(relu_mix(U, alpha, c).numpy(), ref, rtol=1e-12, atol=1e-12)


def test_relu_sectors_fit_heads_reproduce_a_fitted_function(gen):
    """The construction's use: the heads of a sum-of-ReLU fit evaluated on U = (v·p, 1) over the whole range."""
    from icgd.constructions.fits import activation_fits
    from icgd.nets import get_activation

    fit = activation_fits(get_activation("sigmoid"), 8.0, 64, dtype=torch.float64)[0]
    alpha, c = fit_heads([fit, fit], torch.float64)
    t = torch.linspace(-8.0, 8.0, 1001, dtype=torch.float64)
    U = torch.stack([t, torch.ones_like(t)], dim=-1).expand(1, 2, -1, 2).contiguous()
    out = relu_mix(U, alpha, c, relu_sectors(alpha, c))
    np.testing.assert_allclose(out.numpy(), head_sum_ref(U, alpha, c), rtol=1e-13, atol=1e-13)
    assert float((out[0, 0] - torch.sigmoid(t)).abs().max()) < 1e-3  # and it is the fit of the sigmoid


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shared", ["keys", "queries"])
def test_relu_attention_sector_path_matches_every_head(gen, causal, shared, monkeypatch):
    """Many heads per group (the sector form is used) on tokens whose key (or query) rows are the same for every
    token, against the per-head loop and against the layer with every shortcut disabled."""
    D, T, G, H = 7, 6, 3, 16
    fixed = [0, 1] if shared == "keys" else [2, 3]
    rows_fixed = [[(fixed[0], 0.7), (fixed[1], -1.1)] for _ in range(G)]
    rows_free = [[(g + 2, 1.0), (5, 0.5)] if shared == "keys" else [(g, 1.0), (5, -0.5)] for g in range(G)]
    q_rows, k_rows = (rows_free, rows_fixed) if shared == "keys" else (rows_fixed, rows_free)
    values = [[(g, 6 - g, 0.5), (4, g, -1.0)] for g in range(G)]
    bank = sparse_bank(D, q_rows, k_rows, values, torch.float64, alpha=rnd(gen, G, H, 2), c=rnd(gen, G, H),
                       block=[[0, 1]] * G)
    assert bank.relu_sectors() is not None
    layer = ReLUAttention(bank, causal=causal)
    h = rnd(gen, 2, T, D)
    h[:, :, fixed] = h[:, :1, fixed]
    ref = attention_ref(h, *bank.dense(), causal)
    np.testing.assert_allclose(layer(h).numpy(), ref, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(attention_mod, "_invariant", lambda t: False)
    np.testing.assert_allclose(layer(h).numpy(), ref, rtol=1e-12, atol=1e-12)


def test_padded_rows_do_not_break_the_shared_key_test(gen):
    """Groups of different sizes are padded with zero rows that point at coordinate 0, which varies across tokens;
    the invariance test looks only at coordinates read with a nonzero coefficient, so the shortcut still fires."""
    D = 6
    k_rows = [[(3, 1.0)], [(3, 0.5), (4, 2.0)]]
    bank = sparse_bank(D, [[(0, 1.0)], [(1, 1.0), (2, 1.0)]], k_rows, [[(5, 0, 1.0)], [(5, 1, 1.0)]],
                       torch.float64, alpha=rnd(gen, 2, 9, 1), c=rnd(gen, 2, 9))
    assert bank.k.idx[0, 1, 0] == 0 and bank.k.coef[0, 1, 0] == 0  # the padding row
    assert bank.k.columns().tolist() == [3, 4]
    h = rnd(gen, 1, 5, D)
    h[:, :, 3:5] = h[:, :1, 3:5]
    seen = []
    real = attention_mod._invariant
    attention_mod._invariant = lambda t: seen.append(real(t)) or seen[-1]
    try:
        out = ReLUAttention(bank)(h)
    finally:
        attention_mod._invariant = real
    assert seen == [True]
    np.testing.assert_allclose(out.numpy(), attention_ref(h, *bank.dense(), False), rtol=1e-12, atol=1e-12)


def test_ewml_folded_heads_match_every_head(gen):
    D, T, G, H = 6, 4, 3, 5
    bank = sparse_bank(D, [[(0, 1.0), (1, -2.0)]] * G, [[(2, 0.5), (3, 1.5)]] * G,
                       [[(4, g, 1.0), (g, 5, -0.5)] for g in range(G)], torch.float64,
                       alpha=rnd(gen, G, H, 2), c=rnd(gen, G, H), block=[[0, 1]] * G)
    h = rnd(gen, 2, T, D)
    Q, K, V = (np.asarray(t) for t in bank.dense())
    hn = h.numpy()
    ref = hn.copy()
    for b in range(2):
        for i in range(T):
            for m in range(Q.shape[0]):
                ref[b, i] += float((Q[m] @ hn[b, i]) @ (K[m] @ hn[b, i])) * (V[m] @ hn[b, i])
    np.testing.assert_allclose(EWML(bank)(h).numpy(), ref, rtol=1e-12, atol=1e-12)


def test_sparse_builders_give_the_listed_matrices():
    D = 5
    q = sparse_rowmap(D, [[(1, 2.0)], [(0, -1.0), (4, 3.0)]], torch.float64)
    expected_q = np.zeros((2, 2, D))
    expected_q[0, 0, 1], expected_q[1, 0, 0], expected_q[1, 1, 4] = 2.0, -1.0, 3.0
    np.testing.assert_array_equal(q.dense().numpy(), expected_q)
    v = sparse_valuemap(D, [[(1, 2, 0.5), (1, 2, 0.25)], [(3, 0, -1.0)]], torch.float64)
    expected_v = np.zeros((2, D, D))
    expected_v[0, 2, 1], expected_v[1, 0, 3] = 0.75, -1.0  # repeated COO entries add up
    np.testing.assert_array_equal(v.dense().numpy(), expected_v)
    bank = sparse_bank(D, [[(1, 2.0)], [(0, -1.0), (4, 3.0)]], [[(2, 1.0)], [(3, 1.0), (3, 1.0)]],
                       [[(1, 2, 0.5)], [(3, 0, -1.0)]], torch.float64, block=[[0], [0, 1]])
    assert bank.block.tolist() == [[0, 0], [0, 1]] and bank.num_heads == 2
    assert math.isclose(float(bank.alpha.sum()), 4.0)  # default: one head per group, every block scaled by 1


def test_cached_sectors_and_columns_follow_new_and_edited_coefficients(gen):
    """The sector table and the column list are cached; replacing or editing α, c or the rows must refresh them."""
    D, G, H = 6, 2, 10
    bank = sparse_bank(D, [[(0, 1.0), (1, 1.0)]] * G, [[(2, 1.0), (3, 1.0)]] * G, [[(4, 5, 1.0)]] * G,
                       torch.float64, alpha=rnd(gen, G, H, 2), c=rnd(gen, G, H), block=[[0, 1]] * G)
    h = rnd(gen, 1, 4, D)
    h[:, :, 2:4] = h[:, :1, 2:4]
    layer = ReLUAttention(bank)
    for step in range(3):
        np.testing.assert_allclose(layer(h).numpy(), attention_ref(h, *bank.dense(), False), rtol=1e-12, atol=1e-12)
        if step == 0:
            bank.c = torch.nn.Parameter(rnd(gen, G, H), requires_grad=False)  # a new tensor
        else:
            with torch.no_grad():
                bank.alpha.mul_(-1.5)  # edited in place
    assert bank.k.columns().tolist() == [2, 3]
    with torch.no_grad():
        bank.k.coef[:, 1] = 0.0  # coordinate 3 is no longer read
    assert bank.k.columns().tolist() == [2]
