"""akyurek2023 at smoke scale: SPD to OLS and the test error are recomputed by hand (numpy min-norm least squares on
every prefix) from the run's held-out prompts and its saved transformer."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from icgd.experiments.akyurek2023 import Settings, _task
from icgd.experiments.settings import load
from icgd.experiments.icl_common import sample
from icgd.train import TrainConfig, load_checkpoint
from icgd.train.loop import build_model


@pytest.fixture
def smoke(smoke_run):
    return smoke_run("akyurek2023")


def _ols_prefix(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Row i: min-norm least squares on pairs < i, evaluated at x_i (0 for i = 0)."""
    B, n, _ = X.shape
    out = np.zeros((B, n))
    for i in range(1, n):
        w = np.linalg.pinv(X[:, :i]) @ Y[:, :i]  # (B, d, 1)
        out[:, i] = (X[:, i:i + 1] @ w)[:, 0, 0]
    return out


def test_spd_to_ols_recomputed_by_hand(smoke, one_thread):
    out, record = smoke
    s, seed = load(Settings, record["settings"]), record["meta"]["seed"]
    row = next(r for r in record["metrics"]["models"] if r["depth"] == max(s.depths(0.0)) and r["noise"] == 0.0)
    p = sample(_task(s, 0.0), s.eval_prompts, s.n, m=0, seed=seed, step=2)
    run = out / "runs" / f"L{row['depth']}-noise0"
    model = build_model(TrainConfig.load(run / "config.json"))
    model.load_state_dict(load_checkpoint(run).model)
    with torch.no_grad():
        pred = model.double()(p.X, p.Y)[..., 0].numpy()
    X, Y = p.X.numpy(), p.Y.numpy()
    ols = _ols_prefix(X, Y)
    curve = ((pred - ols) ** 2).mean(0) / s.d
    assert row["spd"]["OLS"]["curve"] == pytest.approx(curve.tolist(), rel=1e-6, abs=1e-9)
    assert row["spd"]["OLS"]["mean"] == pytest.approx(curve[1:].mean(), rel=1e-6)
    assert row["spd"]["OLS"]["mspd"] == pytest.approx(curve[1:s.d].mean(), rel=1e-6)
    assert row["spd"]["OLS"]["lo"] <= row["spd"]["OLS"]["mean"] <= row["spd"]["OLS"]["hi"]
    err = ((pred - Y[..., 0]) ** 2).mean(0) / s.d
    assert row["error"]["model"] == pytest.approx(err.tolist(), rel=1e-6)
    # the headline: the deepest noiseless model's position-averaged error over OLS's
    ratio = err[1:].mean() / (((ols - Y[..., 0]) ** 2).mean(0)[1:].mean() / s.d)
    head = record["metrics"]["headline"]
    assert head["deepest_noiseless_mse_over_ols"] == pytest.approx(ratio, rel=1e-6)
    assert head["deepest_noiseless_mse_over_ols_lo"] <= ratio <= head["deepest_noiseless_mse_over_ols_hi"]
    # and the report prints these numbers
    md = (out / "report.md").read_text()
    assert f"{row['spd']['OLS']['mean']:.4f}" in md


def test_probe_targets_and_controls_are_reported(smoke):
    out, record = smoke
    m = record["metrics"]
    L = max(depth for depth, _ in load(Settings, record["settings"]).models)
    for r in m["models"]:
        if r["noise"] == 0.0:
            assert len(r["probes"]["w_ols"]["r2"]) == r["depth"] + 1  # embedding + every block
    assert len(m["controls"]["untrained_probes"]["xty"]["r2"]) == L + 1
