"""Every layer of icgd.layers against a naive per-token loop written here from the papers' equations.

Conventions: tokens are rows ``h[b, i]`` of a ``(B, T, D)`` float64 tensor; every reference below loops over
batch, query token, key token and head in plain Python (numpy for the arithmetic) so that it shares no code
path (einsum, masks, head mixing, shortcuts) with the library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import icgd.layers.attention as attention_mod
from icgd.errors import ShapeError, SpecError
from icgd.layers import (
    EWML, HeadBank, KernelAttention, LinearAttention, MLP, ReLUAttention, RowMap, SoftmaxAttention, SparseSoftmaxAttention, Transformer,
    ValueMap,
)

B, T, D = 2, 5, 6


def rnd(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def close(a, b, tol=1e-12):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------------------
# Naive references
# ---------------------------------------------------------------------------------------------------------------

class DenseHeads:
    """Per-head callables from dense matrices Q_m, K_m (r, D), V_m (D, D)."""

    def __init__(self, Q, K, V):
        self.Q, self.K, self.V = (np.asarray(t.detach(), dtype=np.float64) for t in (Q, K, V))

    def heads(self):
        for m in range(self.Q.shape[0]):
            yield (lambda x, m=m: self.Q[m] @ x), (lambda x, m=m: self.K[m] @ x), (lambda x, m=m: self.V[m] @ x)


class GroupedHeads:
    """Per-head callables straight from the *grouped sparse* definition of the HeadBank docstring:

        Q_{g,h} = diag(alpha[g,h,block[g]]) Q_g,   K_{g,h} = K_g,   V_{g,h} = c[g,h] V_g

    with Q_g/K_g given by (idx, coef) per row and V_g by COO (src, dst, coef). No dense matrix is ever built."""

    def __init__(self, qidx, qcoef, kidx, kcoef, vsrc, vdst, vcoef, alpha, c, block, dim):
        np_ = lambda t: np.asarray(t.detach() if isinstance(t, torch.Tensor) else t)  # noqa: E731
        self.qidx, self.qcoef, self.kidx, self.kcoef = np_(qidx), np_(qcoef), np_(kidx), np_(kcoef)
        self.vsrc, self.vdst, self.vcoef = np_(vsrc), np_(vdst), np_(vcoef)
        self.alpha, self.c, self.block, self.dim = np_(alpha), np_(c), np_(block), dim

    def _rows(self, idx, coef, g, x):
        r, nnz = idx.shape[1:]
        out = np.zeros(r)
        for rho in range(r):
            for z in range(nnz):
                out[rho] += coef[g, rho, z] * x[idx[g, rho, z]]
        return out

    def _value(self, g, x):
        out = np.zeros(self.dim)
        for e in range(self.vsrc.shape[1]):
            out[self.vdst[g, e]] += self.vcoef[g, e] * x[self.vsrc[g, e]]
        return out

    def heads(self):
        G, H, _ = self.alpha.shape
        for g in range(G):
            for h in range(H):
                def q(x, g=g, h=h):
                    rows = self._rows(self.qidx, self.qcoef, g, x)
                    return np.array([self.alpha[g, h, self.block[g, rho]] * rows[rho] for rho in range(len(rows))])

                def k(x, g=g):
                    return self._rows(self.kidx, self.kcoef, g, x)

                def v(x, g=g, h=h):
                    return self.c[g, h] * self._value(g, x)

                yield q, k, v


def relu_attention_ref(h, heads, causal):
    """h_i + (1/n_keys) Σ_m Σ_{s} relu(<Q_m h_i, K_m h_s>) V_m h_s; returns also (#positive, #negative) scores."""
    H = np.asarray(h.detach())
    Bn, Tn, Dn = H.shape
    out = H.copy()
    pos = neg = 0
    head_list = list(heads.heads())
    for b in range(Bn):
        for i in range(Tn):
            keys = range(i + 1) if causal else range(Tn)
            acc = np.zeros(Dn)
            for q, k, v in head_list:
                qi = q(H[b, i])
                for s in keys:
                    score = float(np.dot(qi, k(H[b, s])))
                    pos += score > 0
                    neg += score < 0
                    acc += max(score, 0.0) * v(H[b, s])
            out[b, i] += acc / len(keys)
    return out, pos, neg


def ewml_ref(h, heads):
    H = np.asarray(h.detach())
    out = H.copy()
    head_list = list(heads.heads())
    for b in range(H.shape[0]):
        for i in range(H.shape[1]):
            x = H[b, i]
            for q, k, v in head_list:
                out[b, i] += float(np.dot(q(x), k(x))) * v(x)
    return out


def allowed_keys(H, b, i, causal, key_flag):
    Tn = H.shape[1]
    keys = range(i + 1) if causal else range(Tn)
    return [s for s in keys if key_flag is None or H[b, s, key_flag] != 0]


def softmax_attention_ref(h, Wq, Wk, Wv, Wo, causal, key_flag):
    H = np.asarray(h.detach())
    Wq, Wk, Wv, Wo = (np.asarray(t.detach()) for t in (Wq, Wk, Wv, Wo))
    nh, dh, _ = Wq.shape
    out = H.copy()
    for b in range(H.shape[0]):
        for i in range(H.shape[1]):
            keys = allowed_keys(H, b, i, causal, key_flag)
            if not keys:
                continue  # no key: zero update
            for m in range(nh):
                q = Wq[m] @ H[b, i]
                scores = [float(np.dot(q, Wk[m] @ H[b, s])) / math.sqrt(dh) for s in keys]
                mx = max(scores)
                e = [math.exp(sc - mx) for sc in scores]
                z = sum(ej / sum(e) * (Wv[m] @ H[b, s]) for ej, s in zip(e, keys))
                out[b, i] += Wo[m] @ z
    return out


def kernel_scalar(kind, q, k, bw):
    if kind == "linear":
        return float(np.dot(q, k))
    if kind == "relu":
        return max(float(np.dot(q, k)), 0.0)
    if kind == "exp":
        return math.exp(float(np.dot(q, k)))
    if kind == "rbf":
        return math.exp(-float(np.sum((q - k) ** 2)) / (2 * bw * bw))
    raise AssertionError(kind)


def kernel_attention_ref(h, Wq, Wk, Wv, Wo, kind, bw, causal, key_flag):
    H = np.asarray(h.detach())
    Wq, Wk, Wv, Wo = (np.asarray(t.detach()) for t in (Wq, Wk, Wv, Wo))
    out = H.copy()
    for b in range(H.shape[0]):
        for i in range(H.shape[1]):
            keys = allowed_keys(H, b, i, causal, key_flag)
            for m in range(Wq.shape[0]):
                z = np.zeros(Wv.shape[1])
                for s in keys:
                    z += kernel_scalar(kind, Wq[m] @ H[b, i], Wk[m] @ H[b, s], bw) * (Wv[m] @ H[b, s])
                if keys:
                    out[b, i] += Wo[m] @ z / len(keys)
    return out


def lsa_ref(h, P, Q, key_flag):
    """von Oswald et al.: e_j + (1/n) Σ_m P_m Σ_{i keys} e_i e_i^T Q_m e_j, keys = tokens with flag != 0."""
    E = np.asarray(h.detach())
    P, Q = np.asarray(P.detach()), np.asarray(Q.detach())
    out = E.copy()
    for b in range(E.shape[0]):
        keys = [i for i in range(E.shape[1]) if key_flag is None or E[b, i, key_flag] != 0]
        Gram = sum(np.outer(E[b, i], E[b, i]) for i in keys)
        for j in range(E.shape[1]):
            for m in range(P.shape[0]):
                out[b, j] += P[m] @ Gram @ Q[m] @ E[b, j] / len(keys)
    return out


def mlp_ref(h, W1, W2, b1=None, b2=None):
    H = np.asarray(h.detach())
    W1, W2 = np.asarray(W1.detach()), np.asarray(W2.detach())
    out = H.copy()
    for b in range(H.shape[0]):
        for i in range(H.shape[1]):
            z = W1 @ H[b, i]
            if b1 is not None:
                z = z + np.asarray(b1.detach())
            u = W2 @ np.maximum(z, 0.0)
            if b2 is not None:
                u = u + np.asarray(b2.detach())
            out[b, i] += u
    return out


# ---------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------

def sparse_bank(gen, G=3, H=2, r=4, nnz=2, e=5, nb=2, dim=D, q_cols=None, k_cols=None):
    """A sparse grouped HeadBank plus the raw arrays it was built from. `q_cols`/`k_cols` restrict the coordinates
    the query/key rows may read (to build token-invariant rows)."""
    def idx_in(cols, shape):
        cols = torch.arange(dim) if cols is None else torch.as_tensor(cols)
        return cols[torch.randint(0, len(cols), shape, generator=gen)]

    qidx, kidx = idx_in(q_cols, (G, r, nnz)), idx_in(k_cols, (G, r, nnz))
    qidx[0, 0, :] = qidx[0, 0, 0]  # a repeated index: coefficients of one coordinate must accumulate
    qcoef, kcoef = rnd(gen, G, r, nnz), rnd(gen, G, r, nnz)
    vsrc, vdst = torch.randint(0, dim, (G, e), generator=gen), torch.randint(0, dim, (G, e), generator=gen)
    vsrc[0, 1], vdst[0, 1] = vsrc[0, 0], vdst[0, 0]  # a repeated COO entry
    vcoef = rnd(gen, G, e)
    alpha, c = rnd(gen, G, H, nb), rnd(gen, G, H)
    block = torch.randint(0, nb, (G, r), generator=gen)
    block[0, 0], block[0, 1] = 0, nb - 1  # every block is used
    bank = HeadBank(RowMap(dim, idx=qidx, coef=qcoef), RowMap(dim, idx=kidx, coef=kcoef),
                    ValueMap(dim, src=vsrc, dst=vdst, coef=vcoef), alpha=alpha, c=c, block=block)
    grouped = GroupedHeads(qidx, qcoef, kidx, kcoef, vsrc, vdst, vcoef, alpha, c, block, dim)
    return bank, grouped


def dyadic(t: torch.Tensor) -> torch.Tensor:
    """Round to multiples of 1/8: sums of products of such small numbers are exact in float64 in any order."""
    return torch.round(t * 8) / 8


def dense_qkv(gen, M=3, r=4, dim=D, q_cols=None, k_cols=None):
    """Dense heads. With `q_cols`/`k_cols` the query/key rows read only those coordinates and have dyadic entries,
    so that a dense GEMM gives bit-identical rows for tokens that agree on those coordinates (whatever its
    accumulation order) and the library's bit-exact shortcut test can fire."""
    Q, K, V = rnd(gen, M, r, dim), rnd(gen, M, r, dim), rnd(gen, M, dim, dim, scale=0.5)
    for W, cols in ((Q, q_cols), (K, k_cols)):
        if cols is not None:
            keep = torch.zeros(dim, dtype=torch.bool)
            keep[list(cols)] = True
            W[..., ~keep] = 0
            W.copy_(dyadic(W))
    return Q, K, V


def tokens_with_shared(gen, shared_cols=None):
    """Random tokens; coordinates in `shared_cols` are equal across the tokens of a prompt (not across prompts)."""
    h = rnd(gen, B, T, D)
    if shared_cols is not None:
        cols = list(shared_cols)
        h[:, :, cols] = dyadic(h[:, :1, cols]).expand(B, T, len(cols)).clone()
    return h


class PathSpy(list):
    """Results of attention._invariant within one forward call (the list itself) and the number of dimensions of
    the score tensors handed to mix_heads (`score_dims`): 4 on an O(T) shortcut, 5 on the O(T²) path."""

    def __init__(self):
        super().__init__()
        self.score_dims: list[int] = []


@pytest.fixture
def path_spy(monkeypatch):
    spy = PathSpy()
    real_inv, real_mix, real_relu_mix = attention_mod._invariant, attention_mod.mix_heads, attention_mod.relu_mix

    def inv(t):
        r = real_inv(t)
        spy.append(r)
        return r

    def mix(U, *args):
        spy.score_dims.append(U.dim())
        return real_mix(U, *args)

    monkeypatch.setattr(attention_mod, "_invariant", inv)
    def relu_mix(U, *args):
        spy.score_dims.append(U.dim())
        return real_relu_mix(U, *args)

    monkeypatch.setattr(attention_mod, "mix_heads", mix)
    monkeypatch.setattr(attention_mod, "relu_mix", relu_mix)
    return spy


def forced_general(layer, h, monkeypatch):
    """The layer's output with both shortcuts disabled (the O(T²) path)."""
    with monkeypatch.context() as m:
        m.setattr(attention_mod, "_invariant", lambda t: False)
        return layer(h)


# ---------------------------------------------------------------------------------------------------------------
# ReLUAttention
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_relu_attention_dense_heads_match_loop(gen, causal, path_spy):
    Q, K, V = dense_qkv(gen)
    h = tokens_with_shared(gen)
    layer = ReLUAttention.from_dense(Q, K, V, causal=causal)
    out = layer(h)
    assert path_spy == [False, False] and path_spy.score_dims == [5]  # general path
    ref, pos, neg = relu_attention_ref(h, DenseHeads(Q, K, V), causal)
    assert pos > 0 and neg > 0  # relu really clips some scores
    close(out, ref)


@pytest.mark.parametrize("causal", [False, True])
def test_relu_attention_sparse_grouped_heads_match_both_loops(gen, causal, path_spy):
    bank, grouped = sparse_bank(gen)
    h = tokens_with_shared(gen)
    layer = ReLUAttention(bank, causal=causal)
    out = layer(h)
    assert path_spy == [False, False] and path_spy.score_dims == [5]
    assert layer.num_heads == 6
    ref_dense, pos, neg = relu_attention_ref(h, DenseHeads(*bank.dense()), causal)
    ref_grouped, _, _ = relu_attention_ref(h, grouped, causal)
    assert pos > 0 and neg > 0
    close(out, ref_dense)
    close(out, ref_grouped)


def test_headbank_dense_equals_grouped_definition(gen):
    G, H, r, nb = 3, 2, 4, 2
    bank, grouped = sparse_bank(gen, G=G, H=H, r=r, nb=nb)
    Qd, Kd, Vd = bank.dense()
    assert Qd.shape == (G * H, r, D) and Kd.shape == (G * H, r, D) and Vd.shape == (G * H, D, D)
    # Materialise each grouped head by applying its callables to the unit vectors (independent of dense()).
    eye = np.eye(D)
    for m, (q, k, v) in enumerate(grouped.heads()):
        close(Qd[m], np.stack([q(eye[j]) for j in range(D)], axis=1))
        close(Kd[m], np.stack([k(eye[j]) for j in range(D)], axis=1))
        close(Vd[m], np.stack([v(eye[j]) for j in range(D)], axis=1))
    # nonzero parameter count, counted by hand from the stored arrays
    expected = sum(int((t != 0).sum()) for t in (bank.q.coef, bank.k.coef, bank.v.coef, bank.alpha, bank.c))
    assert bank.num_params() == expected


def test_rowmap_valuemap_sparse_forward_match_dense(gen):
    bank, _ = sparse_bank(gen)
    h = rnd(gen, B, T, D)
    Qg, Vg = bank.q.dense(), bank.v.dense()
    close(bank.q(h), torch.einsum("grd,btd->btgr", Qg, h))
    # read + emit of the sparse value map equals Σ_g V_g h
    close(bank.v.emit(bank.v.read(h)), torch.einsum("ged,btd->bte", Vg, h))


def shortcut_layer(gen, kind, causal, **cols):
    """A ReLUAttention (dense or sparse heads) whose query or key rows read only the coordinates in `cols`, and
    the heads the reference loop uses."""
    if kind == "dense":
        Q, K, V = dense_qkv(gen, **cols)
        return ReLUAttention.from_dense(Q, K, V, causal=causal), DenseHeads(Q, K, V)
    bank, heads = sparse_bank(gen, **cols)
    return ReLUAttention(bank, causal=causal), heads


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_relu_attention_invariant_keys_shortcut(gen, causal, kind, path_spy, monkeypatch):
    shared = [0, 1]
    layer, heads = shortcut_layer(gen, kind, causal, k_cols=shared)
    h = tokens_with_shared(gen, shared)
    out = layer(h)
    assert path_spy == [True] and path_spy.score_dims == [4]  # the key shortcut was taken
    ref, pos, neg = relu_attention_ref(h, heads, causal)
    assert pos > 0 and neg > 0
    close(out, ref)
    close(forced_general(layer, h, monkeypatch), ref)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_relu_attention_invariant_queries_shortcut(gen, causal, kind, path_spy, monkeypatch):
    shared = [2, 3]
    layer, heads = shortcut_layer(gen, kind, causal, q_cols=shared)
    h = tokens_with_shared(gen, shared)
    out = layer(h)
    assert path_spy == [False, True] and path_spy.score_dims == [4]  # keys vary, queries do not
    ref, pos, neg = relu_attention_ref(h, heads, causal)
    assert pos > 0 and neg > 0
    close(out, ref)
    close(forced_general(layer, h, monkeypatch), ref)
    if not causal:  # same query rows and all keys: every token gets the same update
        upd = (out - h).detach()
        close(upd, upd[:, :1].expand_as(upd))


def test_relu_attention_single_token_and_chunked_head_mixing(gen, monkeypatch):
    bank, heads = sparse_bank(gen, H=5)
    layer = ReLUAttention(bank, causal=False)
    h = tokens_with_shared(gen)
    ref, _, _ = relu_attention_ref(h, heads, False)
    monkeypatch.setattr(attention_mod, "_CHUNK_ELEMENTS", 7)  # force several chunks of heads
    close(layer(h), ref)
    h1 = h[:, :1].clone()  # T = 1: every shortcut applies and must still be exact
    close(layer(h1), relu_attention_ref(h1, heads, False)[0])


def test_headbank_rejects_bad_shapes(gen):
    Q, K, V = dense_qkv(gen)
    with pytest.raises(ShapeError, match="need Q, K of shape"):
        HeadBank.from_dense(Q, K[:, :2], V)
    with pytest.raises(ShapeError, match=r"row indices must lie in \[0, 6\)"):
        RowMap(D, idx=torch.tensor([[[6]]]), coef=torch.ones(1, 1, 1, dtype=torch.float64))
    with pytest.raises(ShapeError, match="tokens have dimension 5 but the heads expect 6"):
        ReLUAttention.from_dense(Q, K, V)(rnd(gen, B, T, 5))


# ---------------------------------------------------------------------------------------------------------------
# EWML
# ---------------------------------------------------------------------------------------------------------------

def test_ewml_dense_heads_match_loop(gen):
    Q, K, V = dense_qkv(gen)
    h = rnd(gen, B, T, D)
    close(EWML.from_dense(Q, K, V)(h), ewml_ref(h, DenseHeads(Q, K, V)))


def test_ewml_sparse_heads_match_loops(gen):
    bank, grouped = sparse_bank(gen)
    h = rnd(gen, B, T, D)
    out = EWML(bank)(h)
    close(out, ewml_ref(h, grouped))
    close(out, ewml_ref(h, DenseHeads(*bank.dense())))


# ---------------------------------------------------------------------------------------------------------------
# SoftmaxAttention / KernelAttention / LinearAttention
# ---------------------------------------------------------------------------------------------------------------

FLAG = D - 1


def flagged_tokens(gen):
    """Random tokens whose coordinate FLAG marks the keys; prompt 0: tokens 0-2 are keys; prompt 1: token 0 is not
    a key (so with causal masking token 0 reads nothing) but tokens 1, 3 are."""
    h = rnd(gen, B, T, D)
    h[..., FLAG] = 0.0
    h[0, :3, FLAG] = 1.0
    h[1, [1, 3], FLAG] = 1.0
    return h


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_flag", [False, True])
def test_softmax_attention_matches_loop(gen, causal, use_flag):
    layer = SoftmaxAttention(D, n_heads=2, d_head=3, causal=causal, key_flag=FLAG if use_flag else None,
                             generator=gen, dtype=torch.float64)
    h = flagged_tokens(gen)
    out = layer(h)
    ref = softmax_attention_ref(h, layer.W_q, layer.W_k, layer.W_v, layer.W_o, causal, FLAG if use_flag else None)
    close(out, ref)
    if causal and use_flag:  # token 0 of prompt 1 reads no key: unchanged
        close(out[1, 0], h[1, 0])


@pytest.mark.parametrize("score", ["linear", "relu", "exp", "rbf"])
@pytest.mark.parametrize("causal,use_flag", [(False, False), (True, False), (False, True), (True, True)])
def test_kernel_attention_matches_loop(gen, score, causal, use_flag):
    flag = FLAG if use_flag else None
    layer = KernelAttention(D, n_heads=2, d_head=3, score=score, bandwidth=1.3, causal=causal, key_flag=flag,
                            generator=gen, dtype=torch.float64)
    h = flagged_tokens(gen) * 0.7
    ref = kernel_attention_ref(h, layer.W_q, layer.W_k, layer.W_v, layer.W_o, score, 1.3, causal, flag)
    close(layer(h), ref)


def test_kernel_attention_callable_score(gen):
    layer = KernelAttention(D, n_heads=1, d_head=2, score=lambda q, k: torch.tanh(q @ k.transpose(-1, -2)),
                            generator=gen, dtype=torch.float64)
    h = rnd(gen, B, T, D)
    Wq, Wk, Wv, Wo = (np.asarray(t.detach()[0]) for t in (layer.W_q, layer.W_k, layer.W_v, layer.W_o))
    H = h.numpy()
    ref = H.copy()
    for b in range(B):
        for i in range(T):
            z = sum(math.tanh(float(np.dot(Wq @ H[b, i], Wk @ H[b, s]))) * (Wv @ H[b, s]) for s in range(T))
            ref[b, i] += Wo @ z / T
    close(layer(h), ref)


def test_kernel_attention_rejects_unknown_score_and_bad_flag():
    with pytest.raises(SpecError, match="unknown kernel score 'cosine'"):
        KernelAttention(D, score="cosine")
    with pytest.raises(SpecError, match="bandwidth must be > 0"):
        KernelAttention(D, score="rbf", bandwidth=0.0)
    with pytest.raises(SpecError, match=r"key_flag must be a coordinate in \[0, 6\)"):
        SoftmaxAttention(D, key_flag=6)
    with pytest.raises(ShapeError, match=r"tokens must be \(B, T, 6\)"):
        SoftmaxAttention(D, dtype=torch.float64)(torch.zeros(2, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("n_heads", [1, 2])
def test_linear_attention_from_pq_matches_lsa_formula(gen, n_heads):
    P, Q = rnd(gen, n_heads, D, D, scale=0.5), rnd(gen, n_heads, D, D, scale=0.5)
    layer = LinearAttention.from_pq(P, Q, key_flag=FLAG)
    h = flagged_tokens(gen)
    close(layer(h), lsa_ref(h, P, Q, FLAG))
    P2, Q2 = layer.pq()
    close(P2, P)
    close(Q2, Q)


def test_linear_attention_from_pq_2d_and_unflagged(gen):
    P, Q = rnd(gen, D, D, scale=0.5), rnd(gen, D, D, scale=0.5)
    layer = LinearAttention.from_pq(P, Q)
    h = rnd(gen, B, T, D)
    close(layer(h), lsa_ref(h, P[None], Q[None], None))


def test_linear_attention_random_weights_pq_round_trip(gen):
    layer = LinearAttention(D, n_heads=2, d_head=3, key_flag=FLAG, generator=gen, dtype=torch.float64)
    h = flagged_tokens(gen)
    P, Q = layer.pq()
    assert P.shape == (2, D, D) and Q.shape == (2, D, D)
    # P_m = W_o^m W_v^m and Q_m = W_k^mᵀ W_q^m, written out entry by entry
    Wq, Wk, Wv, Wo = (np.asarray(t.detach()) for t in (layer.W_q, layer.W_k, layer.W_v, layer.W_o))
    for m in range(2):
        for a in range(D):
            for c in range(D):
                assert abs(P[m, a, c].item() - sum(Wo[m, a, e] * Wv[m, e, c] for e in range(3))) < 1e-12
                assert abs(Q[m, a, c].item() - sum(Wk[m, e, a] * Wq[m, e, c] for e in range(3))) < 1e-12
    close(layer(h), lsa_ref(h, P, Q, FLAG))
    rebuilt = LinearAttention.from_pq(P, Q, key_flag=FLAG)
    close(rebuilt(h), layer(h))


def test_linear_attention_from_pq_rejects_bad_shapes(gen):
    with pytest.raises(ShapeError, match="P and Q must both be"):
        LinearAttention.from_pq(rnd(gen, 2, D, D), rnd(gen, 2, D, D - 1))


# ---------------------------------------------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------------------------------------------

def test_mlp_bias_free_matches_loop(gen):
    layer = MLP(D, 7, generator=gen, dtype=torch.float64)
    assert not layer.bias
    h = rnd(gen, B, T, D)
    close(layer(h), mlp_ref(h, layer.W1, layer.W2))


def test_mlp_biased_matches_loop(gen):
    W1, W2, b1, b2 = rnd(gen, 7, D), rnd(gen, D, 7), rnd(gen, 7), rnd(gen, D)
    layer = MLP.from_weights(W1, W2, b1, b2)
    assert layer.bias
    h = rnd(gen, B, T, D)
    out = layer(h)
    close(out, mlp_ref(h, W1, W2, b1, b2))
    assert (W1 @ h[0, 0] + b1 < 0).any()  # relu clips something


def test_sparse_mlp_matches_loop_and_counts_nonzeros(gen):
    W1, W2 = rnd(gen, 7, D), rnd(gen, D, 7)
    W1[W1.abs() < 0.8] = 0.0  # mostly zeros, like the constructions' MLPs
    W2[W2.abs() < 0.8] = 0.0
    layer = MLP.from_weights(W1, W2, sparse=True)
    assert layer.W1.is_sparse and layer.W2.is_sparse
    h = rnd(gen, B, T, D)
    close(layer(h), mlp_ref(h, W1, W2))
    assert layer.num_params() == int((W1 != 0).sum() + (W2 != 0).sum())


def test_mlp_width_zero_is_identity_and_shape_errors(gen):
    h = rnd(gen, B, T, D)
    close(MLP(D, 0, dtype=torch.float64)(h), h)
    with pytest.raises(SpecError, match="width >= 0"):
        MLP(D, -1)
    with pytest.raises(ShapeError, match="the MLP expects 6"):
        MLP(D, 3, dtype=torch.float64)(rnd(gen, B, T, 4))
    with pytest.raises(ShapeError, match=r"need W1 \(width, D\)"):
        MLP.from_weights(rnd(gen, 3, D), rnd(gen, 3, D))


# ---------------------------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------------------------

def small_stack(gen):
    Q, K, V = dense_qkv(gen, M=2)
    bank, _ = sparse_bank(gen)
    layers = [
        MLP(D, 5, generator=gen, dtype=torch.float64),
        ReLUAttention.from_dense(Q, K, V, causal=True),
        SoftmaxAttention(D, n_heads=2, d_head=3, generator=gen, dtype=torch.float64),
        EWML(bank),
    ]
    return layers, Transformer(layers, dim=D)


def test_transformer_run_with_cache_records_every_layer(gen):
    layers, model = small_stack(gen)
    h = rnd(gen, B, T, D, scale=0.5)
    out, cache = model.run_with_cache(h)
    x = h
    for i, layer in enumerate(layers):
        close(cache[f"blocks.{i}.hook_resid_pre"], x)
        x = layer(x)
        close(cache[f"blocks.{i}.hook_resid_post"], x)
    close(out, x)
    close(cache["resid_post", -1], x)
    close(cache["resid_pre", 2], cache["blocks.1.hook_resid_post"])
    resid = [f"blocks.{i}.hook_resid_{k}" for i in range(4) for k in ("pre", "post")]
    assert [k for k in cache if "resid" in k] == resid
    # attention layers add their pattern and per-head output; every cache key is the module path of its hook point
    assert [k for k in cache if "resid" not in k] == [f"layers.{i}.hook_{k}" for i in (1, 2) for k in ("pattern", "z")]
    for name in cache:
        assert model.get_submodule(name) is model.hook_points()[name]
    close(model(h, start=1, stop=3), layers[2](layers[1](h)))
    _, only_out = model.run_with_cache(h, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert sorted(only_out) == [f"blocks.{i}.hook_resid_post" for i in range(4)]
    close(only_out["resid_post", -1], x)  # negative index into a cache that holds no resid_pre entries
    close(only_out["resid_post", 0], layers[0](h))
    with pytest.raises(KeyError):
        only_out["resid_pre", 0]


def test_attention_pattern_and_z_hooks_rebuild_the_update(gen):
    """hook_pattern and hook_z of every attention layer against the layer's equation computed here from its dense
    per-head matrices; the materialising path gives the same output as the fast path."""
    Q, K, V = rnd(gen, 3, 2, D), rnd(gen, 3, 2, D), rnd(gen, 3, D, D)
    h = rnd(gen, B, T, D, scale=0.5)
    for causal in (False, True):
        mask = torch.ones(T, T, dtype=torch.float64).tril() if causal else torch.ones(T, T, dtype=torch.float64)
        count = mask.sum(-1, keepdim=True)
        scores = torch.einsum("mrd,btd,mre,bse->bmts", Q, h, K, h)
        softmax = torch.softmax(scores.masked_fill(mask == 0, float("-inf")), -1)
        for layer, pattern in ((ReLUAttention.from_dense(Q, K, V, causal=causal), torch.relu(scores) * mask / count),
                               (SparseSoftmaxAttention(HeadBank.from_dense(Q, K, V), causal=causal), softmax)):
            model = Transformer([layer], dim=D)
            out, cache = model.run_with_cache(h)
            close(cache["layers.0.hook_pattern"], pattern)
            z = torch.einsum("bmts,mde,bse->btmd", pattern, V, h)
            close(cache["layers.0.hook_z"], z)
            close(out, h + z.sum(2))
            close(out, layer(h))  # the unhooked fast path
        dense = SoftmaxAttention(D, n_heads=2, d_head=3, causal=causal, generator=gen, dtype=torch.float64)
        out, cache = Transformer([dense], dim=D).run_with_cache(h)
        q, k = torch.einsum("hed,btd->bhte", dense.W_q, h), torch.einsum("hed,btd->bhte", dense.W_k, h)
        w = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(3)).masked_fill(mask == 0, float("-inf")), -1)
        close(cache["layers.0.hook_pattern"], w)
        z = torch.einsum("bhts,hed,bsd,hfe->bthf", w, dense.W_v, h, dense.W_o)
        close(cache["layers.0.hook_z"], z)
        close(out, dense(h))


def test_shared_layer_hooks_are_per_position(gen):
    Q, K, V = rnd(gen, 2, 2, D), rnd(gen, 2, 2, D), rnd(gen, 2, D, D)
    layer = ReLUAttention.from_dense(Q, K, V)
    model = Transformer([layer, MLP(D, 3, generator=gen, dtype=torch.float64), layer], dim=D)
    h = rnd(gen, B, T, D, scale=0.5)
    _, cache = model.run_with_cache(h)
    close(cache["layers.0.hook_z"].sum(2), cache["blocks.0.hook_resid_post"] - h)
    close(cache["layers.2.hook_z"].sum(2), cache["blocks.2.hook_resid_post"] - cache["blocks.1.hook_resid_post"])
    assert model.get_submodule("layers.2.hook_z") is layer.hook_z
    seen = []
    model.run_with_hooks(h, fwd_hooks=[("layers.2.hook_pattern", lambda a, n: seen.append(n))])
    assert seen == ["layers.2.hook_pattern"]  # registered under position 2: not fired at position 0
    assert not layer.hook_pattern.active  # removed on exit


def test_transformer_run_with_hooks_edits_activation(gen):
    layers, model = small_stack(gen)
    h = rnd(gen, B, T, D, scale=0.5)
    seen = []

    def zero_token0(act, name):
        seen.append(name)
        act = act.clone()
        act[:, 0] = 0.0
        return act

    out = model.run_with_hooks(h, fwd_hooks=[("blocks.1.hook_resid_post", zero_token0)])
    x = layers[1](layers[0](h)).clone()
    x[:, 0] = 0.0
    expected = layers[3](layers[2](x))
    close(out, expected)
    assert seen == ["blocks.1.hook_resid_post"]
    assert not torch.allclose(out, model(h))  # the edit mattered, and the hook is gone afterwards
    close(model(h), layers[3](layers[2](layers[1](layers[0](h)))))


def test_transformer_rejects_bad_tokens_and_hook_names(gen):
    _, model = small_stack(gen)
    with pytest.raises(ShapeError, match="this transformer expects 6"):
        model(rnd(gen, B, T, 4))
    with pytest.raises(ShapeError, match=r"tokens must be \(batch, tokens, dim\)"):
        model(rnd(gen, T, D))
    from icgd.errors import ICGDError
    with pytest.raises(ICGDError, match="no hook point 'blocks.9.hook_resid_post'"):
        model.run_with_hooks(rnd(gen, B, T, D), fwd_hooks=[("blocks.9.hook_resid_post", lambda a, n: a)])
    with pytest.raises(RuntimeError, match="boom"):  # hooks are removed also when the forward pass raises
        with model.hooks([("blocks.0.hook_resid_post", lambda a, n: a)]):
            raise RuntimeError("boom")
    assert not any(p.active for p in model.hook_points().values())


def test_transformer_summary_rows(gen):
    layers, model = small_stack(gen)
    rows = model.summary()
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["kind"] for r in rows] == ["MLP", "ReLUAttention", "SoftmaxAttention", "EWML"]
    assert [r["heads"] for r in rows] == [None, 2, 2, 6]
    assert rows[0]["width"] == 5
    assert all(r["dim"] == D for r in rows)
    mlp = layers[0]
    assert rows[0]["params"] == int((mlp.W1 != 0).sum()) + int((mlp.W2 != 0).sum()) == 2 * 5 * D
    Q, K, V = layers[1].heads.dense()
    # one group per dense head: Q, K, V entries plus alpha (1 per head) and c (1 per head)
    assert rows[1]["params"] == int((Q != 0).sum() + (K != 0).sum() + (V != 0).sum()) + 2 + 2
    assert rows[2]["params"] == 4 * 2 * 3 * D
    bank = layers[3].heads
    assert rows[3]["params"] == sum(int((t != 0).sum()) for t in (bank.q.coef, bank.k.coef, bank.v.coef,
                                                                   bank.alpha, bank.c))
