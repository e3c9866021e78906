"""The wu2025 reproduction: its numbers are recomputed independently from the same seeded prompts (numpy R², autograd
GD + the network's forward pass), its fit intervals use no reference answer, and its pieces (typed settings, longer
prompts, direct training, bootstrap intervals, the shift rule, the depth verdict) behave."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from icgd.errors import ConfigError
from icgd.experiments import wu2025
from icgd.experiments.reproduce import run_experiment, settings_for
from icgd.experiments.settings import as_dict, load
from icgd.experiments.wu2025_report import depth_verdict
from icgd.learners import gd_trajectory
from icgd.models import ICLTransformer
from icgd.nets import forward, unflatten
from icgd.tasks import PARAM_SHIFTS, TEST_MIXTURES, WU_DEEP_TEACHER, make_task

TINY = ["steps=4", "checks=1", "depth_layers=[1]", "n_layer=1", "eval_prompts=24", "n_boot=20", "direct_epochs=4",
        "direct_width=8", "direct_prompts=8", "direct_positions=[3, 11]", "ood_positions=[11]", "con_prompts=8",
        "con_positions=[3, 11]", "con_etas=[0.3]", "con_steps=2", "con_knots=16", "con_knots_sweep=[16, 32]",
        "depth_examples=6"]


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


def test_settings_are_typed_per_scale_and_cover_the_papers_test_distributions():
    keys = [s.key for s in wu2025.settings_list()]
    assert len(keys) == len(set(keys)) == 1 + (len(TEST_MIXTURES) - 1) + (len(PARAM_SHIFTS) - 1)
    assert set(TEST_MIXTURES) <= {s.mixture for s in wu2025.settings_list()}
    assert {s.mu for s in wu2025.settings_list()} == set(PARAM_SHIFTS)
    for scale, s in wu2025.SETTINGS.items():
        assert dataclasses.is_dataclass(s) and wu2025.SCALES[scale] == as_dict(s)
        assert load(wu2025.WuSettings, json.loads(json.dumps(as_dict(s)))) == s
        assert s.n_test > s.n_points, "longer prompts than in training are part of the experiment"
        assert len(s.depth_layers) >= 2 and s.n_layer in s.depth_layers
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.steps = 1
    assert len(wu2025.SETTINGS["cpu"].depth_layers) >= 3
    with pytest.raises(ConfigError, match="unknown setting"):
        load(wu2025.WuSettings, {**wu2025.SCALES["cpu"], "stpes": 3})
    with pytest.raises(ConfigError, match="below n_test"):
        dataclasses.replace(wu2025.SETTINGS["cpu"], direct_positions=(5, 46))


def test_reported_ridge_curve_plateau_and_construction_match_a_recomputation(tiny_run, one_thread):
    out, record = tiny_run
    s = load(wu2025.WuSettings, record["settings"])
    assert record["settings"] == settings_for("wu2025", "smoke", TINY)
    m = record["metrics"]
    p = wu2025.test_prompts(s, wu2025.settings_list()[0], 0, record["meta"]["seed"])
    # ridge with numpy: prefix i is fit on pairs < i (λ = the learner's default), scored at x_i
    from icgd.learners import Ridge

    lam = Ridge().lam
    X, Y = p.X.numpy(), p.Y[..., 0].numpy()
    pred = np.zeros_like(Y)
    for b in range(X.shape[0]):
        for i in range(1, X.shape[1]):
            A = X[b, :i]
            pred[b, i] = X[b, i] @ np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ Y[b, :i])
    r2 = _r2_numpy(pred, Y)
    np.testing.assert_allclose(m["curves"]["in_dist"]["ridge"]["r2"], r2, rtol=1e-6, atol=1e-8)
    h = m["headline"]
    assert h["ridge_in_dist_plateau"] == pytest.approx(r2[s.plateau_from:s.plateau_to + 1].mean(), rel=1e-6)
    assert h["ridge_in_dist_plateau_lo"] <= h["ridge_in_dist_plateau_hi"]
    for key in ("relu_in_dist_plateau", "softmax_in_dist_plateau", "ridge_in_dist_plateau", "direct_in_dist"):
        assert isinstance(h[key], float)
    # the construction's reference: autograd GD + the network's forward pass, R² with numpy
    con = m["construction"]["in_dist"]
    spec, w0 = wu2025.student_spec(s), wu2025.student_init(s, record["meta"]["seed"])
    eta, P = m["construction_setup"]["eta"], s.con_prompts
    for k, gd_r2, r2k in zip(con["positions"], con["gd_r2"], con["r2"]):
        traj = gd_trajectory(spec, p.X[:P, :k], p.Y[:P, :k], w0.expand(P, -1), eta, s.con_steps, box=s.con_box)
        ref = forward(spec, traj[:, -1], p.X[:P, k:k + 1])[..., 0].numpy()
        assert gd_r2 == pytest.approx(float(_r2_numpy(ref, p.Y[:P, k:k + 1, 0].numpy())[0]), rel=1e-9, abs=1e-12)
        assert abs(r2k - gd_r2) < 0.05
    md = (out / "report.md").read_text()
    assert f"{h['construction_in_dist_max_abs_diff']:.2e}" in md and "## Headline numbers" in md
    assert (out / "figures" / "r2_in_distribution.png").exists()


def test_construction_fit_intervals_use_neither_labels_nor_the_trajectory(one_thread):
    s = wu2025.SETTINGS["smoke"]
    p = wu2025.test_prompts(s, wu2025.settings_list()[0], 0, 0, count=16)
    ranges = wu2025.prompt_fit_ranges(s, p.X)
    assert wu2025.prompt_fit_ranges(s, p.X) == ranges  # no labels are passed; same inputs, same intervals
    # they bound every pre-activation of every weight GD visits inside the box (here: on these prompts)
    spec, w0 = wu2025.student_spec(s), wu2025.student_init(s, 0)
    traj = gd_trajectory(spec, p.X, p.Y, w0.expand(16, -1), 1.0, 10, box=s.con_box)
    L = traj.shape[1]
    h = p.X[:, None].expand(-1, L, -1, -1).reshape(16 * L, *p.X.shape[1:])
    for j, V in enumerate(unflatten(spec, traj.reshape(16 * L, -1)), start=1):
        u = h @ V.transpose(-1, -2)
        assert float(u.abs().max()) <= ranges[j - 1]
        h = spec.layer_act(j)(u)


def test_plateau_interval_and_paired_difference_against_numpy():
    g = torch.Generator().manual_seed(5)
    y = torch.randn(300, 12, 1, generator=g, dtype=torch.float64)
    a = y + 0.3 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    b = y + 0.6 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    ra, rb = (_r2_numpy(t[..., 0].numpy(), y[..., 0].numpy())[3:9].mean() for t in (a, b))
    est, lo, hi = wu2025.plateau_ci([a], y, 3, 8, 200, torch.Generator().manual_seed(0))
    assert est == pytest.approx(ra, rel=1e-9) and lo < est < hi
    est, lo, hi = wu2025.plateau_ci([a, b], y, 3, 8, 200, torch.Generator().manual_seed(0), (1.0, -1.0))
    assert est == pytest.approx(ra - rb, rel=1e-9) and 0 < lo < est < hi


def test_mean_field_shift_keeps_the_label_scale_and_the_raw_shift_does_not():
    def labels(mu: float, rule: str) -> tuple[float, float]:
        task = make_task("wu_network", **{**WU_DEEP_TEACHER, "mu": mu, "shift_rule": rule})
        Y = task.sample(256, 20, seed=0, step=0, dtype=torch.float64).Y
        return float(Y.mean()), float(Y.std())

    mean0, std0 = labels(0.0, "mean_field")
    assert (mean0, std0) == labels(0.0, "raw")  # μ = 0: the rules agree
    for mu in (-0.5, 0.5):
        mean, std = labels(mu, "mean_field")
        assert abs(mean - mean0) < 0.2 * std0 and 0.8 < std / std0 < 1.25
        mean, std = labels(mu, "raw")  # μ on every raw weight: the labels move by several standard deviations
        assert abs(mean - mean0) > 3 * std0


def test_deep_teacher_needs_a_nonlinear_fit(one_thread):
    """On the named teacher, a small deep network trained on 30 pairs predicts the next label clearly better than a
    linear fit with an intercept (numpy least squares), on the same prompts."""
    from icgd.learners import DirectTraining

    task = make_task("wu_network", **WU_DEEP_TEACHER)
    p = task.sample(32, 30, m=1, seed=3, step=0, dtype=torch.float64)
    F = np.concatenate([p.X.numpy(), np.ones((32, 30, 1))], -1)
    Fq = np.concatenate([p.x_query.numpy(), np.ones((32, 1, 1))], -1)
    affine = np.array([Fq[b, 0] @ np.linalg.lstsq(F[b], p.Y[b, :, 0].numpy(), rcond=None)[0] for b in range(32)])
    y = p.y_query[:, 0, 0].numpy()
    r2_affine = _r2_numpy(affine[:, None], y[:, None])[0]
    deep = DirectTraining(depth=4, width=64, epochs=100, activation="tanh").predict(p.X, p.Y, p.x_query)
    r2_deep = _r2_numpy(deep[:, 0, 0].numpy()[:, None], y[:, None])[0]
    assert r2_deep > r2_affine + 0.05, (r2_deep, r2_affine)


def test_depth_verdict_rule():
    assert depth_verdict({"plateau": [[0.5, 0.45, 0.55], [0.6, 0.56, 0.64], [0.7, 0.66, 0.74]]}) == "reproduced"
    assert depth_verdict({"plateau": [[0.5, 0.45, 0.55], [0.53, 0.48, 0.58]]}) == "partly"
    assert depth_verdict({"plateau": [[0.5, 0.45, 0.55], [0.51, 0.46, 0.56]]}) == "not"
    assert depth_verdict({"plateau": [[0.5, 0.45, 0.55], [0.7, 0.66, 0.74], [0.6, 0.56, 0.64]]}) == "partly"
    assert depth_verdict({"plateau": [[0.5, 0.45, 0.55], [0.49, 0.44, 0.54]]}) == "not"


def test_plateau_stop_rule():
    assert not wu2025.plateaued([1.0, 0.5, 0.4, 0.3], 0.01)
    assert wu2025.plateaued([1.0, 0.5, 0.499, 0.498, 0.4985], 0.01)
    assert not wu2025.plateaued([1.0, 0.5, 0.499, 0.498, 0.45], 0.01)


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
    s = dataclasses.replace(wu2025.SETTINGS["smoke"], direct_epochs=5, direct_width=8, direct_prompts=10, n_boot=30)
    p = wu2025.test_prompts(s, wu2025.settings_list()[0], 0, 0, count=10)
    d = wu2025.direct_scores(s, p, (4, 9), torch.Generator().manual_seed(0))
    from icgd.learners import DirectTraining

    learner = DirectTraining(depth=s.teacher_depth, width=8, epochs=5, lr=s.direct_lr, activation=s.direct_activation)
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
