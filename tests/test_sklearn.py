"""icgd.sklearn: the scikit-learn contract (check_estimator), predictions equal to autograd GD on the same network,
chunking, multi-output, bad inputs, the checkpoint engine and the in-context logistic classifier."""

from __future__ import annotations

import functools
import importlib
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_linnerud, make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from icgd.errors import ShapeError, SpecError
from icgd.learners import gd_trajectory
from icgd.learners.gd import empirical_risk
from icgd.nets import forward
from icgd.sklearn import EXPECTED_FAILED_CHECKS, InContextClassifier, InContextRegressor

pytestmark = pytest.mark.usefixtures("one_thread")

# small and fast, yet above check_regressors_train's R² > 0.5 and check_classifiers_train's accuracy > 0.83
FAST = [InContextRegressor(width=4, steps=20, knots=16, random_state=0), InContextClassifier(steps=20, knots=16)]


def _expected_failures(estimator) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS[type(estimator).__name__]


@parametrize_with_checks(FAST, expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ----------------------------------------------------------------------------------------- regressor vs autograd


@functools.lru_cache(maxsize=None)
def _split(name: str):
    X, y = {"diabetes": load_diabetes, "linnerud": load_linnerud}[name](return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    cut = int(0.75 * len(X))
    return X[idx[:cut]], y[idx[:cut]], X[idx[cut:]], y[idx[cut:]]


def _autograd_predictions(est: InContextRegressor, X: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The estimator's network trained by autograd GD (same w0, η, steps) and at w0, on the original scale."""
    spec = est.net_spec_
    Xc, Yc, w0 = (torch.from_numpy(a) for a in (est.context_X_, est.context_y_, est.w0_))
    w = gd_trajectory(spec, Xc, Yc, w0, est.eta_, steps)[-1]
    Q = torch.from_numpy(est.network_inputs(X))
    trained, initial = (forward(spec, v, Q).numpy() * est.y_scale_ + est.y_mean_ for v in (w, w0))
    return trained, initial


@pytest.mark.parametrize("name", ["diabetes", "linnerud"])
def test_predict_equals_the_network_trained_by_autograd_gd(name):
    Xtr, ytr, Xte, yte = _split(name)
    est = InContextRegressor(steps=40, knots=256, random_state=1).fit(Xtr, ytr)
    pred = est.predict(Xte).reshape(len(Xte), -1)
    ref, init = _autograd_predictions(est, Xte, 40)
    rel = np.linalg.norm(pred - ref) / np.linalg.norm(ref - init)  # relative to what GD changed
    assert rel <= 1e-3, rel
    assert np.abs(pred - ref).max() <= 1e-3 * np.abs(ref).max()
    assert pred.dtype == np.float64


def test_eta_auto_is_the_inverse_gauss_newton_curvature_and_gd_descends():
    Xtr, ytr, _, _ = _split("diabetes")
    est = InContextRegressor(random_state=0).fit(Xtr, ytr)
    spec, X, w0 = est.net_spec_, torch.from_numpy(est.context_X_), torch.from_numpy(est.w0_)
    J = torch.func.jacrev(lambda w: forward(spec, w, X).reshape(-1))(w0)
    lam = float(torch.linalg.eigvalsh(J.T @ J / X.shape[0])[-1])
    assert est.eta_ == pytest.approx(1.0 / lam, rel=1e-6)
    traj = gd_trajectory(spec, X, torch.from_numpy(est.context_y_), w0, est.eta_, 100)
    risk = empirical_risk(spec, traj, X.expand(101, -1, -1), torch.from_numpy(est.context_y_).expand(101, -1, -1))
    assert bool((risk[1:] <= risk[:-1]).all()) and float(risk[-1]) < 0.5 * float(risk[0])


def test_chunked_equals_unchunked_and_queries_do_not_interact():
    Xtr, ytr, Xte, _ = _split("diabetes")
    base = InContextRegressor(steps=10, knots=32, random_state=0)
    whole = base.set_params(batch_size=1000).fit(Xtr, ytr).predict(Xte)
    chunked = base.set_params(batch_size=7).fit(Xtr, ytr).predict(Xte)
    alone = np.array([base.predict(Xte[i:i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(chunked, whole, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(alone, whole[:3], rtol=1e-10, atol=1e-10)


def test_queries_beyond_the_training_range_are_clipped_per_feature():
    Xtr, ytr, Xte, _ = _split("diabetes")
    est = InContextRegressor(steps=10, knots=32, random_state=0).fit(Xtr, ytr)
    far = Xte[:4].copy()
    far[:, 2] = Xtr[:, 2].max() + 100 * Xtr[:, 2].std()  # far outside: clipped to the largest |x̃| seen
    inputs = est.network_inputs(far)
    assert np.allclose(inputs[:, 2], est.x_bound_[2]) and np.allclose(inputs[:, -1], 1.0)
    edge = far.copy()
    edge[:, 2] = est.x_mean_[2] + est.x_bound_[2] * est.x_scale_[2]
    np.testing.assert_allclose(est.predict(far), est.predict(edge), rtol=1e-10)
    inside = est.network_inputs(Xtr)[:, :-1]
    np.testing.assert_allclose(inside, (Xtr - est.x_mean_) / est.x_scale_)  # the context is never clipped


def test_multi_output_shapes_and_r2():
    Xtr, ytr, Xte, yte = _split("linnerud")
    est = InContextRegressor(steps=20, knots=64, random_state=0).fit(Xtr, ytr)
    pred = est.predict(Xte)
    assert pred.shape == yte.shape and est.n_outputs_ == 3
    assert est.score(Xte, yte) == pytest.approx(r2_score(yte, pred))
    col = InContextRegressor(steps=20, knots=64, random_state=0).fit(Xtr, ytr[:, :1])
    assert col.predict(Xte).shape == (len(Xte), 1)  # a column y gives column predictions
    one = InContextRegressor(steps=20, knots=64, random_state=0).fit(Xtr, ytr[:, 0])
    assert one.predict(Xte).shape == (len(Xte),)
    np.testing.assert_allclose(one.predict(Xte), col.predict(Xte)[:, 0], rtol=1e-12)


def test_bad_inputs_get_sklearn_errors():
    X, y = _split("diabetes")[:2]
    est = InContextRegressor(steps=2, knots=8, random_state=0)
    with pytest.raises(NotFittedError):
        est.predict(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit(bad, y)
    with pytest.raises(ValueError, match="NaN"):
        est.fit(X, np.where(np.arange(len(y)) == 5, np.nan, y))
    with pytest.raises(ValueError, match="could not convert string to float"):
        est.fit(np.array([["a", "b"]] * 5, dtype=object), np.arange(5.0))
    with pytest.raises(ValueError, match="0 sample"):
        est.fit(X[:0], y[:0])
    est.fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but InContextRegressor is expecting 10 features"):
        est.predict(X[:, :3])
    with pytest.raises(ValueError, match="0 sample"):
        est.predict(X[:0])
    with pytest.raises(ValueError, match="NaN"):
        est.predict(bad)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        est.fit(X, y[:-1])
    for params, match in [({"engine": "magic"}, "engine"), ({"eta": "fast"}, "eta"), ({"eta": -1.0}, "eta"),
                          ({"activation": "swish"}, "activation"), ({"steps": -1}, "steps"),
                          ({"batch_size": 0}, "batch_size"), ({"engine": "checkpoint"}, "checkpoint=")]:
        with pytest.raises(ValueError, match=match):
            InContextRegressor(**params).fit(X, y)
    with pytest.raises(SpecError):
        InContextClassifier(steps=0).fit(X, y > y.mean())


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "icgd.sklearn")
    with pytest.raises(ImportError, match=r"pip install 'icgd\[sklearn\]'"):
        importlib.import_module("icgd.sklearn")


# --------------------------------------------------------------------------------------------- checkpoint engine


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from icgd.train import build_config, train

    folder = tmp_path_factory.mktemp("run")
    overrides = ["n_layer=1", "n_head=1", "n_embd=16", "eval_prompts=32", "batch_size=16", "log_every=5",
                 'baselines=["ols"]', "d_in=3", "n_points=12", "warmup=2", "steps=10", "save_every=10"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(build_config("garg-linear-smoke", overrides=overrides), folder, progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder


def test_checkpoint_engine_runs_the_trained_transformer(tiny_run):
    from icgd.train import load_checkpoint
    from icgd.train.config import TrainConfig
    from icgd.train.loop import build_model

    rng = np.random.default_rng(0)
    X, Xq = rng.normal(size=(9, 3)) * 2 + 1, rng.normal(size=(7, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 3
    est = InContextRegressor(engine="checkpoint", checkpoint=str(tiny_run), batch_size=3).fit(X, y)
    pred = est.predict(Xq)
    # the same model rebuilt independently, on standardised data
    model = build_model(TrainConfig.load(tiny_run / "config.json"))
    model.load_state_dict(load_checkpoint(tiny_run).model)
    mu, sd = X.mean(0), X.std(0)
    to = functools.partial(torch.tensor, dtype=torch.float32)
    with torch.no_grad():
        z = model(to((X - mu) / sd)[None], to((y - y.mean()) / y.std())[None, :, None], to((Xq - mu) / sd)[None])
    np.testing.assert_allclose(pred, z[0, :, 0].double().numpy() * y.std() + y.mean(), rtol=1e-5, atol=1e-5)
    whole = est.set_params(batch_size=256).fit(X, y).predict(Xq)
    np.testing.assert_allclose(pred, whole, rtol=1e-5, atol=1e-6)


def test_checkpoint_engine_checks_sizes(tiny_run):
    rng = np.random.default_rng(0)
    with pytest.raises(ShapeError, match="d_in=3"):
        InContextRegressor(engine="checkpoint", checkpoint=str(tiny_run)).fit(rng.normal(size=(5, 4)), np.ones(5))
    with pytest.raises(ShapeError, match="at most 11 samples"):
        InContextRegressor(engine="checkpoint", checkpoint=str(tiny_run)).fit(rng.normal(size=(20, 3)), np.ones(20))


# ------------------------------------------------------------------------------------------------- classifier


def _numpy_logistic_gd(X: np.ndarray, y: np.ndarray, eta: float, steps: int, lam: float = 0.0) -> np.ndarray:
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        w = w - eta * (X.T @ (1 / (1 + np.exp(-X @ w)) - y) / len(X) + lam * w)
    return w


def test_classifier_logits_equal_numpy_logistic_gd():
    X, y = load_breast_cancer(return_X_y=True)
    # lam keeps most logits inside [-8, 8], where the construction's sigmoid is fitted (clamped outside)
    clf = InContextClassifier(steps=60, lam=0.05).fit(X[:400], y[:400])
    Q = np.hstack([(X[400:] - clf.x_mean_) / clf.x_scale_, np.ones((len(X) - 400, 1))])
    ref = Q @ _numpy_logistic_gd(clf.context_X_, y[:400].astype(float), clf.eta_, 60, 0.05)
    z = clf.decision_function(X[400:])
    assert np.linalg.norm(z - ref) <= 1e-3 * np.linalg.norm(ref)
    assert clf.eta_ == pytest.approx(1 / (np.linalg.eigvalsh(clf.context_X_.T @ clf.context_X_ / 400)[-1] / 4 + 0.05))
    np.testing.assert_allclose(clf.predict_proba(X[400:])[:, 1], 1 / (1 + np.exp(-z)))


def test_classifier_matches_logistic_regression_on_separable_blobs():
    X, y = make_blobs(n_samples=300, centers=3, cluster_std=1.0, random_state=3)
    y = np.array(["a", "b", "c"])[y]
    Xtr, ytr, Xte, yte = X[:200], y[:200], X[200:], y[200:]
    clf = InContextClassifier(steps=50, batch_size=40).fit(Xtr, ytr)
    ours = (clf.predict(Xte) == yte).mean()
    theirs = LogisticRegression().fit(Xtr, ytr).score(Xte, yte)
    assert ours >= 0.98 and ours >= theirs - 0.02, (ours, theirs)
    P = clf.predict_proba(Xte)
    assert list(clf.classes_) == ["a", "b", "c"] and P.shape == (100, 3)
    np.testing.assert_allclose(P.sum(1), 1.0)
    assert (clf.classes_[P.argmax(1)] == clf.predict(Xte)).all()
    whole = clf.set_params(batch_size=256).fit(Xtr, ytr).predict_proba(Xte)
    np.testing.assert_allclose(P, whole, rtol=1e-10, atol=1e-12)
