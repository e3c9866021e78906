"""cheng2024 at smoke scale: the functional-GD reference loss and the Bayes loss are recomputed independently in
numpy (closed-form FGD predictor ``k_qᵀ Σ_{t<L} (η/n)(I − (η/n)K)^t y`` and the GP conditional mean under K₊) from
the run's held-out prompts, and the trained model's parameterisation reduces to the construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icgd.constructions import functional_gd
from icgd.experiments import cheng2024 as exp


@pytest.fixture
def smoke(smoke_run):
    out, record = smoke_run("cheng2024")
    return record["settings"], record["meta"]["seed"], record["metrics"]


def _kernel(kind: str, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    G = A @ np.swapaxes(B, -1, -2)
    return {"linear": G, "relu": np.maximum(G, 0), "exp": np.exp(G)}[kind]


def _fgd_numpy(kind: str, eta: float, L: int, X, Y, xq) -> np.ndarray:
    n = X.shape[1]
    K, kq = _kernel(kind, X, X), _kernel(kind, xq, X)[:, 0]  # (B, n, n), (B, n)
    step = eta / n
    resid, total = Y.copy(), np.zeros_like(Y)
    for _ in range(L):  # coefficients of f_L = Σ_i c_i k(x_i, ·)
        total += step * resid
        resid = resid - step * np.einsum("bij,bj->bi", K, resid)
    return np.einsum("bi,bi->b", kq, total)


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
    for i, data in enumerate(s["kernels"]):
        p = exp.prompts(exp.gp_task(s, data), s["eval_prompts"], n, seed=seed, step=i)
        X, Y, xq, yq = p.X.numpy(), p.Y[..., 0].numpy(), p.x_query.numpy(), p.y_query[:, 0, 0].numpy()
        row = table["data"][data]
        for act in s["kernels"]:
            eta = row["fgd"][act]["eta"]
            loss = float(((_fgd_numpy(act, eta, s["layers"], X, Y, xq) - yq) ** 2).mean())
            assert row["fgd"][act]["loss"] == pytest.approx(loss, rel=1e-8)
        bayes = float(((_bayes_numpy(data, X, Y, xq) - yq) ** 2).mean())
        assert row["bayes_loss"] == pytest.approx(bayes, rel=1e-6, abs=1e-12)
        assert row["zero_loss"] == pytest.approx(float((yq ** 2).mean()), rel=1e-12)
        assert row["bayes_loss"] <= min(r["loss"] for r in row["fgd"].values()) * (1 + 1e-9)


def test_trained_numbers_are_measured(smoke):
    s, _, metrics = smoke
    losses = [r["loss"] for t in metrics["tables"] for row in t["data"].values() for r in row["trained"].values()]
    assert len(set(losses)) == len(losses) == len(s["kernels"]) ** 2 * len(s["ns"])
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
