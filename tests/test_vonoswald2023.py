"""vonoswald2023 at smoke scale: the reported numbers are recomputed independently (numpy) from the run's own
held-out tasks and its saved LSA weights."""

from __future__ import annotations


import numpy as np
import pytest
from safetensors.numpy import load_file

from icgd.experiments.icl_common import sample
from icgd.experiments.vonoswald2023 import _task


@pytest.fixture
def smoke(smoke_run):
    return smoke_run("vonoswald2023")


def _val(record):
    s = record["settings"]
    p = sample(_task(s), s["eval_tasks"], s["n"], seed=record["meta"]["seed"], step=2)
    return s, p.X.numpy(), p.Y.numpy(), p.x_query.numpy(), p.y_query.numpy()


def test_gd_loss_and_eigenvalue_match_numpy(smoke):
    out, record = smoke
    one = record["metrics"]["one_layer"]
    s, X, Y, xq, yq = _val(record)
    n = s["n"]
    # one GD step from W = 0 on L(W) = 1/(2n) Σ ‖W x_i − y_i‖²: ŷ = (η/n) Σ_i y_i x_iᵀ x_q
    pred = one["eta_gd"] / n * np.einsum("bno,bnd,bmd->bmo", Y, X, xq)
    assert one["loss_gd"] == pytest.approx(0.5 * np.mean(np.sum((pred - yq) ** 2, -1)), rel=1e-9)
    assert one["max_eig_xxt"] == pytest.approx(np.linalg.eigvalsh(np.swapaxes(X, 1, 2) @ X).max(), rel=1e-9)
    assert one["loss_zero"] == pytest.approx(0.5 * np.mean(yq ** 2), rel=1e-9)


def test_lsa_loss_matches_saved_weights(smoke):
    out, record = smoke
    one = record["metrics"]["one_layer"]
    s, X, Y, xq, yq = _val(record)
    paper = {"W_q": "W_Q", "W_k": "W_K", "W_v": "W_V", "W_o": "P"}  # LinearAttention parameter → the paper's name
    w = {paper[k.split(".")[-1]]: v[0].astype(np.float64)
         for k, v in load_file(out / "runs/lsa-1/model.safetensors").items()}
    E = np.concatenate([X, Y], -1)  # context tokens (x_i, y_i)
    q = np.concatenate([xq, np.zeros_like(yq)], -1)  # query (x_q, 0)
    # e_q ← e_q + (1/n) P W_V Σ_i e_i e_iᵀ W_Kᵀ W_Q e_q ; prediction = −(y-slot of e_q)
    M = np.swapaxes(E, 1, 2) @ E / s["n"]
    upd = np.einsum("ij,jk,bkl,ml,mn,bqn->bqi", w["P"], w["W_V"], M, w["W_K"], w["W_Q"], q, optimize=True)
    pred = -(q + upd)[..., s["d"]:]
    assert one["loss_lsa"] == pytest.approx(0.5 * np.mean(np.sum((pred - yq) ** 2, -1)), rel=1e-6)
    assert one["rel_gap"] == pytest.approx((one["loss_lsa"] - one["loss_gd"]) / one["loss_gd"], rel=1e-9)
    # the report shows the run's numbers
    md = (out / "report.md").read_text()
    assert f"{one['loss_lsa']:.4f}" in md and f"{one['model_cos']:.4f}" in md
