"""The wu2025 reproduction: its numbers are recomputed independently from the same seeded prompts (numpy R², autograd
GD + the network's forward pass), and its pieces (longer prompts, direct training, bootstrap bands) behave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icgd.experiments import wu2025
from icgd.experiments.reproduce import run_experiment, settings_for
from icgd.learners import gd_trajectory
from icgd.models import ICLTransformer
from icgd.nets import forward
from icgd.tasks import PARAM_SHIFTS, TEST_MIXTURES

TINY = ["steps=4", "depth_layers=[1]", "n_layer=1", "eval_prompts=24", "n_boot=20", "direct_epochs=4",
        "direct_width=8", "direct_prompts=8", "direct_positions=[3, 11]", "ood_positions=[11]", "con_prompts=8",
        "con_positions=[3, 11]", "con_etas=[0.2]", "con_steps=2", "con_knots=16", "depth_examples=6"]


def _r2_numpy(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """R² over prompts at each position, pred/y (B, n)."""
    return 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("wu2025")
    try:
        run_experiment("wu2025", "smoke", out, overrides=TINY, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "metrics.json").read_text())


def test_settings_cover_the_papers_test_distributions():
    keys = [s.key for s in wu2025.settings_list()]
    assert len(keys) == len(set(keys)) == 1 + (len(TEST_MIXTURES) - 1) + (len(PARAM_SHIFTS) - 1)
    mixes = {s.mixture for s in wu2025.settings_list()}
    assert set(TEST_MIXTURES) <= mixes
    assert {s.mu for s in wu2025.settings_list()} == set(PARAM_SHIFTS)
    for scale in ("smoke", "cpu", "paper"):
        s = wu2025.SCALES[scale]
        assert s["n_test"] > s["n_points"], "longer prompts than in training are part of the experiment"
        assert max(s["direct_positions"] + s["con_positions"] + s["ood_positions"]) < s["n_test"]
        json.dumps(s)


def test_reported_ridge_curve_and_construction_match_a_recomputation(tiny_run, one_thread):
    out, record = tiny_run
    s = record["settings"]
    assert s == settings_for("wu2025", "smoke", TINY)
    m = record["metrics"]
    setting = wu2025.settings_list()[0]
    p = wu2025.test_prompts(s, setting, 0, record["meta"]["seed"])
    # ridge with numpy: prefix i is fit on pairs < i (λ = the learner's default), scored at x_i
    from icgd.learners import Ridge

    lam = Ridge().lam
    X, Y = p.X.numpy(), p.Y[..., 0].numpy()
    pred = np.zeros_like(Y)
    for b in range(X.shape[0]):
        for i in range(1, X.shape[1]):
            A = X[b, :i]
            w = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ Y[b, :i])
            pred[b, i] = X[b, i] @ w
    np.testing.assert_allclose(m["curves"]["in_dist"]["ridge"]["r2"], _r2_numpy(pred, Y), rtol=1e-6, atol=1e-8)
    # the construction's reference: autograd GD + the network's forward pass, R² with numpy
    con = m["construction"]["in_dist"]
    spec, w0 = wu2025.student_spec(s), wu2025.student_init(s, record["meta"]["seed"])
    eta = m["construction_setup"]["eta"]
    P = s["con_prompts"]
    for k, gd_r2, r2 in zip(con["positions"], con["gd_r2"], con["r2"]):
        traj = gd_trajectory(spec, p.X[:P, :k], p.Y[:P, :k], w0.expand(P, -1), eta, s["con_steps"], box=s["con_box"])
        ref = forward(spec, traj[:, -1], p.X[:P, k:k + 1])[..., 0].numpy()
        expect = _r2_numpy(ref, p.Y[:P, k:k + 1, 0].numpy())[0]
        assert gd_r2 == pytest.approx(float(expect), rel=1e-9, abs=1e-12)
        assert abs(r2 - gd_r2) < 0.05
    # the report prints the run's numbers
    md = (out / "report.md").read_text()
    assert f"{m['headline']['construction_in_dist_max_abs_diff']:.2e}" in md
    assert (out / "figures" / "r2_in_distribution.png").exists()


def test_extended_positions_keep_the_trained_predictions(one_thread):
    g = torch.Generator().manual_seed(0)
    model = ICLTransformer(3, 1, n_layer=1, n_head=2, n_embd=16, attention="relu", max_points=8, generator=g).eval()
    big = wu2025.extend_positions(model, 12, torch.Generator().manual_seed(1))
    assert big.config.max_points == 12 and model.config.max_points == 8
    X, Y = torch.randn(4, 12, 3, generator=g), torch.randn(4, 12, 1, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(big(X[:, :8], Y[:, :8]), model(X[:, :8], Y[:, :8]))
        assert big(X, Y).shape == (4, 12, 1)
    torch.testing.assert_close(big.wpe.weight[:16], model.wpe.weight)


def test_direct_scores_best_is_the_max_over_epochs(one_thread):
    s = {**wu2025.SCALES["smoke"], "direct_epochs": 5, "direct_width": 8, "direct_prompts": 10, "n_boot": 30}
    p = wu2025.test_prompts(s, wu2025.settings_list()[0], 0, 0, count=10)
    d = wu2025.direct_scores(s, p, [4, 9], torch.Generator().manual_seed(0))
    from icgd.learners import DirectTraining

    learner = DirectTraining(depth=s["teacher_depth"], width=8, epochs=5, lr=s["direct_lr"])
    for i, k in enumerate([4, 9]):
        preds = learner.epoch_predictions(p.X[:, :k], p.Y[:, :k], p.X[:, k:k + 1])[:, :, 0, 0].numpy()
        per_epoch = [_r2_numpy(e[:, None], p.Y[:, k:k + 1, 0].numpy())[0] for e in preds]
        assert d["best"][i] == pytest.approx(max(per_epoch), rel=1e-9)
        assert d["final"][i] == pytest.approx(per_epoch[-1], rel=1e-9)
        assert d["lo"][i] <= d["hi"][i]


def test_bootstrap_band_brackets_the_estimate(one_thread):
    g = torch.Generator().manual_seed(3)
    y = torch.randn(200, 5, 1, generator=g, dtype=torch.float64)
    pred = y + 0.5 * torch.randn(200, 5, 1, generator=g, dtype=torch.float64)
    lo, hi = wu2025.r2_ci(pred, y, 200, torch.Generator().manual_seed(0))
    r2 = _r2_numpy(pred[..., 0].numpy(), y[..., 0].numpy())
    assert all(a <= r <= b for a, r, b in zip(lo, r2, hi))
    assert all(b - a < 0.2 for a, b in zip(lo, hi))
