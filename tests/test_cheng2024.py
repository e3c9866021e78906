"""cheng2024 at smoke scale: the functional-GD reference loss and the Bayes loss are recomputed independently in
numpy (closed-form FGD predictor ``k_qᵀ Σ_{t<L} (η/n)(I − (η/n)K)^t y`` and the GP conditional mean under K₊) from
the run's held-out prompts, and the trained model's parameterisation reduces to the construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icgd.constructions import functional_gd
from icgd.experiments import cheng2024 as exp
from icgd.experiments.settings import load


@pytest.fixture
def smoke(smoke_run):
    out, record = smoke_run("cheng2024")
    return load(exp.Settings, record["settings"]), record["meta"]["seed"], record["metrics"]


def _kernel(kind: str, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    G = A @ np.swapaxes(B, -1, -2)
    return {"linear": G, "relu": np.maximum(G, 0), "exp": np.exp(G)}[kind]


def _fgd_numpy(kind: str, eta: float, L: int, X, Y, xq) -> np.ndarray:
    if kind == "softmax":
        return _softmax_gd_numpy(eta, L, X, Y, xq)
    n = X.shape[1]
    K, kq = _kernel(kind, X, X), _kernel(kind, xq, X)[:, 0]  # (B, n, n), (B, n)
    step = eta / n
    resid, total = Y.copy(), np.zeros_like(Y)
    for _ in range(L):  # coefficients of f_L = Σ_i c_i k(x_i, ·)
        total += step * resid
        resid = resid - step * np.einsum("bij,bj->bi", K, resid)
    return np.einsum("bi,bi->b", kq, total)


def _softmax_gd_numpy(eta: float, L: int, X, Y, xq) -> np.ndarray:
    """y_j ← y_j − η Σ_i y_i softmax_i⟨x_i, x_j⟩ on every token (query y = 0), prediction −y_q."""
    x = np.concatenate([X, xq], axis=1)
    G = np.exp(X @ np.swapaxes(x, 1, 2))  # (B, n, n+1): key i, query j
    S = G / G.sum(axis=1, keepdims=True)
    y = np.concatenate([Y, np.zeros_like(Y[:, :1])], axis=1)
    for _ in range(L):
        y = y - eta * np.einsum("bij,bi->bj", S, y[:, :-1])
    return -y[:, -1]


def _bayes_numpy(kind: str, X, Y, xq) -> np.ndarray:
    x = np.concatenate([X, xq], axis=1)
    K = _kernel(kind, x, x)
    lam, U = np.linalg.eigh(0.5 * (K + np.swapaxes(K, 1, 2)))
    lam = np.abs(lam) if kind == "relu" else np.clip(lam, 0, None)
    K = (U * lam[:, None, :]) @ np.swapaxes(U, 1, 2)
    n = X.shape[1]
    w = np.linalg.pinv(K[:, :n, :n], rcond=1e-10, hermitian=True) @ Y[..., None]
    return (K[:, n:, :n] @ w)[:, 0, 0]


def test_fgd_and_bayes_losses_recomputed(smoke):
    s, seed, metrics = smoke
    table = metrics["tables"][0]
    n = table["n"]
    for i, data in enumerate(s.kernels):
        p = exp.prompts(exp.gp_task(s, data), s.eval_prompts, n, seed=seed, step=i)
        X, Y, xq, yq = p.X.numpy(), p.Y[..., 0].numpy(), p.x_query.numpy(), p.y_query[:, 0, 0].numpy()
        row = table["data"][data]
        for act in s.activations:
            eta = row["fgd"][act]["eta"]
            loss = float(((_fgd_numpy(act, eta, s.layers, X, Y, xq) - yq) ** 2).mean())
            assert row["fgd"][act]["loss"] == pytest.approx(loss, rel=1e-8)
        bayes = float(((_bayes_numpy(data, X, Y, xq) - yq) ** 2).mean())
        assert row["bayes_loss"] == pytest.approx(bayes, rel=1e-6, abs=1e-12)
        assert row["zero_loss"] == pytest.approx(float((yq ** 2).mean()), rel=1e-12)
        assert row["bayes_loss"] <= min(r["loss"] for r in row["fgd"].values()) * (1 + 1e-9)


def test_trained_numbers_are_measured(smoke):
    s, _, metrics = smoke
    losses = [r["loss"] for t in metrics["tables"] for row in t["data"].values() for r in row["trained"].values()]
    assert len(set(losses)) == len(losses) == len(s.kernels) * len(s.activations) * len(s.ns)
    assert all(np.isfinite(losses))


def test_model_with_fgd_weights_is_the_construction(one_thread):
    d, n, L, eta = 3, 7, 3, 0.8
    g = torch.Generator().manual_seed(0)
    X, xq = torch.randn(4, n, d, generator=g, dtype=torch.float64), torch.randn(4, d, generator=g,
                                                                                   dtype=torch.float64)
    Y = torch.randn(4, n, generator=g, dtype=torch.float64)
    for kind in exp.KINDS:
        model = exp.KernelTransformer(d, L, kind, dtype=torch.float64)
        with torch.no_grad():
            model.A.zero_()
            model.B.copy_(torch.eye(d).expand(L, d, d))
            model.C.copy_(torch.eye(d).expand(L, d, d))
            model.r.fill_(-eta)
        ours = model(X, Y, xq)
        ref = functional_gd(d, kernel=kind, eta=eta, steps=L).predict(X, Y[..., None], xq[:, None])[:, 0, 0]
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_softmax_construction_matches_numpy(one_thread):
    d, n, L, eta = 4, 6, 3, 0.7
    g = torch.Generator().manual_seed(1)
    X = torch.nn.functional.normalize(torch.randn(5, n, d, generator=g, dtype=torch.float64), dim=-1)
    xq = torch.nn.functional.normalize(torch.randn(5, d, generator=g, dtype=torch.float64), dim=-1)
    Y = torch.randn(5, n, generator=g, dtype=torch.float64)
    ours = exp.construction(d, L, "softmax", eta)(X, Y, xq).detach().numpy()
    ref = _softmax_gd_numpy(eta, L, X.numpy(), Y.numpy(), xq[:, None].numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_implementation_distance(one_thread):
    d, n, L = 5, 8, 3
    task = exp.make_task("gp", d=d, kernel="relu")
    p = exp.prompts(task, 64, n, seed=0, step=0)
    # a member of the construction family (B = c I, C = I, A = 0) is at distance 0 and is its own projection
    model = exp.construction(d, L, "relu", 0.5)
    with torch.no_grad():
        model.B.mul_(torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)[:, None, None])
    out = exp.implementation_distance(model, p)
    assert out["distance"] == pytest.approx(0.0, abs=1e-12)
    assert out["projected_loss"] == pytest.approx(out["loss"], rel=1e-12)
    # a random model: BᵀC's distance to c·I and the relative x-update of layer 0, recomputed in numpy
    model = exp.KernelTransformer(d, L, "relu", init="random", generator=torch.Generator().manual_seed(3),
                                  dtype=torch.float64)
    out = exp.implementation_distance(model, p)
    B, C, A = (t.detach().numpy() for t in (model.B, model.C, model.A))
    M = np.swapaxes(B, 1, 2) @ C
    c = np.trace(M, axis1=1, axis2=2) / d
    off = np.linalg.norm(M - c[:, None, None] * np.eye(d), axis=(1, 2)) / np.linalg.norm(M, axis=(1, 2))
    np.testing.assert_allclose(out["bc_offdiag"], off, rtol=1e-10)
    Z = np.concatenate([p.X.numpy(), p.x_query.numpy()], axis=1)
    H = np.maximum((Z[:, :n] @ B[0].T) @ np.swapaxes(Z @ C[0].T, 1, 2), 0)
    dZ = np.einsum("bij,bik->bjk", H, Z[:, :n] @ A[0].T) / n
    ratio = np.mean(np.linalg.norm(dZ.reshape(len(Z), -1), axis=1) / np.linalg.norm(Z.reshape(len(Z), -1), axis=1))
    assert out["x_update"][0] == pytest.approx(ratio, rel=1e-10)
    assert len(out["x_update"]) == L - 1 and out["distance"] == max(list(off) + out["x_update"])


def test_no_paper_column_and_headline(smoke_run):
    import json

    from icgd.experiments.report import paper_values

    out, record = smoke_run("cheng2024")
    assert paper_values("cheng2024")[1] == {}  # no published number is stored, so none is compared
    md = (out / "report.md").read_text()
    assert "## The paper's numbers beside ours" not in md
    m = record["metrics"]
    head = m["headline"]
    impl = m["implementation"]["data"]
    assert head["impl_distance_trained_max"] == max(r["trained"]["distance"] for r in impl.values())
    assert head["impl_distance_control_min"] == min(r["control"]["distance"] for r in impl.values())
    assert head["cells"] == len(m["tables"]) * 3
    assert json.loads(json.dumps(head)) == head
