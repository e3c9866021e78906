"""vonoswald2023 at smoke scale: the reported numbers are recomputed independently (numpy) from the run's own
held-out tasks and its saved LSA weights."""

from __future__ import annotations


import numpy as np
import json

import pytest
from safetensors.numpy import load_file

from icgd.experiments.icl_common import sample
from icgd.experiments.settings import load
from icgd.experiments.vonoswald2023 import Settings, _task


@pytest.fixture
def smoke(smoke_run):
    return smoke_run("vonoswald2023")


def _val(record):
    s = load(Settings, record["settings"])
    p = sample(_task(s), s.eval_tasks, s.n, seed=record["meta"]["seed"], step=2)
    return s, p.X.numpy(), p.Y.numpy(), p.x_query.numpy(), p.y_query.numpy()


def test_gd_loss_and_eigenvalue_match_numpy(smoke):
    out, record = smoke
    one = record["metrics"]["one_layer"]
    s, X, Y, xq, yq = _val(record)
    n = s.n
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
    M = np.swapaxes(E, 1, 2) @ E / s.n
    upd = np.einsum("ij,jk,bkl,ml,mn,bqn->bqi", w["P"], w["W_V"], M, w["W_K"], w["W_Q"], q, optimize=True)
    pred = -(q + upd)[..., s.d:]
    assert one["loss_lsa"] == pytest.approx(0.5 * np.mean(np.sum((pred - yq) ** 2, -1)), rel=1e-6)
    assert one["rel_gap"] == pytest.approx((one["loss_lsa"] - one["loss_gd"]) / one["loss_gd"], rel=1e-9)
    # the report shows the run's numbers
    md = (out / "report.md").read_text()
    assert f"{one['loss_lsa']:.4f}" in md and f"{one['model_cos']:.4f}" in md


def _gdpp_tokens_numpy(etas, gammas, X, Y, xq) -> np.ndarray:
    """GD++ on the tokens (von Oswald et al. Eq. 23, icgd's normalised γ): context and query x's and residuals
    updated with the pre-step values, r_j ← r_j − (η/n) Σ_i r_i x_iᵀx_j, x_j ← x_j − (γ/n) Σ_i x_i x_iᵀx_j."""
    n = X.shape[1]
    x = np.concatenate([X, xq], axis=1)
    r = np.concatenate([Y, np.zeros((len(X), xq.shape[1], Y.shape[2]))], axis=1)
    for eta, gamma in zip(etas, gammas):
        G = np.einsum("bid,bjd->bij", x[:, :n], x)  # x_iᵀ x_j, i context, j all
        r, x = (r - eta / n * np.einsum("bij,bio->bjo", G, r[:, :n]),
                x - gamma / n * np.einsum("bij,bid->bjd", G, x[:, :n]))
    return -r[:, n:]


def test_layerwise_gdpp_matches_token_dynamics():
    import torch

    from icgd.experiments.vonoswald2023 import LayerwiseGDPP

    g = torch.Generator().manual_seed(0)
    X = torch.rand(6, 10, 4, generator=g, dtype=torch.float64) - 0.5
    Y = torch.randn(6, 10, 1, generator=g, dtype=torch.float64)
    xq = torch.rand(6, 2, 4, generator=g, dtype=torch.float64) - 0.5
    etas, gammas = [3.0, 5.0, 2.0], [0.7, 0.0, 1.3]
    ours = LayerwiseGDPP(etas, gammas).predict(X, Y, xq).numpy()
    ref = _gdpp_tokens_numpy(etas, gammas, X.numpy(), Y.numpy(), xq.numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_steps_to_cross_recovers_a_log_line():
    from icgd.experiments.vonoswald2023 import steps_to_cross

    steps = [100, 200, 400, 800, 1600, 3200]
    a, b = 0.5, -0.05  # gap = a + b log t crosses 0 at t = exp(10)
    track = {"step": steps, "preds_diff_gd": [0.1] * 6, "preds_diff_gdpp": [0.1 + a + b * np.log(t) for t in steps]}
    out = steps_to_cross(track)
    assert out["steps"] == pytest.approx(np.exp(10.0), rel=1e-9) and out["points"] == 3
    track["preds_diff_gdpp"] = [0.2 + 0.01 * np.log(t) for t in steps]  # gap growing: no crossing predicted
    assert steps_to_cross(track)["steps"] is None


def test_paired_gap_matches_numpy():
    import torch

    from icgd.experiments.vonoswald2023 import paired_gap
    from icgd.learners import GD

    g = torch.Generator().manual_seed(1)
    X, Y, xq, yq = (torch.randn(*shape, generator=g, dtype=torch.float64)
                    for shape in ((50, 8, 3), (50, 8, 1), (50, 1, 3), (50, 1, 1)))
    out = paired_gap(GD(1.0, 1), GD(2.0, 2), X, Y, xq, yq)

    def losses(eta, steps):
        w = np.zeros((50, 3, 1))
        Xn, Yn = X.numpy(), Y.numpy()
        for _ in range(steps):
            w = w + eta / 8 * np.swapaxes(Xn, 1, 2) @ (Yn - Xn @ w)
        return 0.5 * ((xq.numpy() @ w - yq.numpy()) ** 2)[:, 0, 0]

    diff = losses(1.0, 1) - losses(2.0, 2)
    assert out["mean"] == pytest.approx(diff.mean(), rel=1e-10)
    assert out["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(50), rel=1e-10)


def test_provenance_kinds_and_paper_column(smoke):
    import json

    from icgd.experiments.vonoswald2023_report import PAPER_KINDS, sources

    values = sources()
    for v in values:
        assert v["kind"] in (*PAPER_KINDS, "authors-code"), v["key"]
        if v["kind"] == "plot-reading" or "read off" in v["source"]:
            assert v.get("tolerance", 0) > 0, v["key"]
    out, record = smoke
    md = (out / "report.md").read_text()
    paper_section = md.split("## The paper's numbers beside ours")[1].split("\n## ")[0]
    code_only = [v for v in values if v["kind"] == "authors-code"]
    assert code_only and not any(v["source"] in paper_section for v in code_only)
    assert all(v["source"] in md for v in code_only)  # they stand in their own table
    head = record["metrics"]["headline"]
    one = record["metrics"]["one_layer"]
    assert head["lsa1_loss"] == one["loss_lsa"] and head["gd1_loss"] == one["loss_gd"]
    deep = record["metrics"]["deep"][-1]
    assert head["deepest_preds_diff_to_gdpp"] == deep["preds_diff_gdpp"]
    assert json.loads(json.dumps(head)) == head


@pytest.mark.parametrize("override, message", [
    (["steps=abc"], r"setting 'steps' must be an int, got 'abc'"),
    (["deep=[{\"layers\": 2}]"], r"vonoswald2023.Settings deep\[0\]: missing setting\(s\) shared, steps, lr"),
    (["deep=[3]"], r"setting 'deep\[0\]' must be an object \{layers, shared"),
    (["ood_alphas=1"], r"setting 'ood_alphas' must be a list of float"),
    (["lr=true"], r"setting 'lr' must be a float \(or int\), got True"),
])
def test_typed_settings_reject_bad_overrides(override, message):
    from icgd.errors import ConfigError
    from icgd.experiments.reproduce import settings_for
    from icgd.experiments.vonoswald2023 import SETTINGS

    for scale in ("smoke", "cpu", "paper"):  # the stored form round-trips to the typed settings
        assert load(Settings, settings_for("vonoswald2023", scale)) == SETTINGS[scale]
    key, _, value = override[0].partition("=")
    raw = {**settings_for("vonoswald2023", "smoke"), key: json.loads(value) if value != "abc" else value}
    with pytest.raises(ConfigError, match=message):  # the typed settings name what is wrong
        load(Settings, raw)
    with pytest.raises(ConfigError):  # and `--set` refuses it too, before anything runs
        settings_for("vonoswald2023", "smoke", override)
