"""icgd's scikit-learn estimators on data that ships with scikit-learn, against the usual baselines.

Writes ``docs/examples/sklearn.md`` (held-out R² / accuracy tables) and ``docs/examples/sklearn_steps.png`` (test
score vs the number of in-context GD steps). Run from the repository root (about a minute on one CPU core)::

    python docs/examples/sklearn_datasets.py

Every split is ``train_test_split(test_size=0.25, random_state=0)``. The baselines see standardised features
(``StandardScaler`` in a pipeline); the MLP also standardised targets. "same network, autograd GD" trains the
estimator's own network (same w0, η, steps) with :func:`icgd.learners.gd_trajectory`, or for the classifier the same
logistic model with autograd gradients: it must match the transformer up to the construction's fit error.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.compose import TransformedTargetRegressor  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_linnerud, load_wine  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.metrics import accuracy_score, r2_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from icgd.learners import gd_trajectory  # noqa: E402
from icgd.nets import forward  # noqa: E402
from icgd.sklearn import InContextClassifier, InContextRegressor  # noqa: E402

OUT = Path(__file__).resolve().parent
STEPS_GRID = [1, 2, 5, 10, 20, 50, 100, 200, 400]


def split(loader):
    X, y = loader(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0)


# ------------------------------------------------------------------------------------- the autograd references


def autograd_regression(est: InContextRegressor, Xte: np.ndarray) -> np.ndarray:
    """The estimator's network trained by autograd GD with its w0_, eta_ and steps, predicting Xte."""
    X, Y, w0 = (torch.from_numpy(a) for a in (est.context_X_, est.context_y_, est.w0_))
    w = gd_trajectory(est.net_spec_, X, Y, w0, est.eta_, est.steps)[-1]
    pred = forward(est.net_spec_, w, torch.from_numpy(est.network_inputs(Xte))).numpy()
    return pred * est.y_scale_ + est.y_mean_  # (n_queries, n_outputs)


def autograd_logistic(clf: InContextClassifier, Xte: np.ndarray) -> np.ndarray:
    """The classifier's logistic model (one-vs-rest) trained by autograd GD with its eta_, steps and lam."""
    X, Y = torch.from_numpy(clf.context_X_), torch.from_numpy(clf.context_y_)
    W = torch.zeros(X.shape[1], Y.shape[1], dtype=torch.float64)
    for _ in range(clf.steps):
        W.requires_grad_(True)
        Z = X @ W
        loss = (torch.nn.functional.softplus(Z) - Y * Z).mean(0).sum() + 0.5 * clf.lam * (W ** 2).sum()
        (grad,) = torch.autograd.grad(loss, W)
        W = (W - clf.eta_ * grad).detach()
    Q = np.hstack([(Xte - clf.x_mean_) / clf.x_scale_, np.ones((len(Xte), 1))])
    Z = Q @ W.numpy()
    idx = (Z[:, 0] > 0).astype(int) if Z.shape[1] == 1 else Z.argmax(1)
    return clf.classes_[idx]


# ---------------------------------------------------------------------------------------------------- tables


def fit_and_score(models, Xtr, ytr, Xte, yte, metric) -> tuple[list[tuple[str, float, float]], list[np.ndarray]]:
    """(name, test score, fit + predict CPU seconds) per model, and each model's test predictions."""
    rows, preds = [], []
    for name, model in models:
        t = time.process_time()
        pred = model.fit(Xtr, ytr).predict(Xte)
        rows.append((name, metric(yte, pred), time.process_time() - t))
        preds.append(pred)
    return rows, preds


def regression_rows(loader) -> tuple[list[tuple[str, float, float]], float]:
    Xtr, Xte, ytr, yte = split(loader)
    est = InContextRegressor(random_state=0)
    mlp = MLPRegressor(hidden_layer_sizes=(8,), max_iter=5000, random_state=0)
    scaled_mlp = TransformedTargetRegressor(make_pipeline(StandardScaler(), mlp), transformer=StandardScaler())
    models = [("InContextRegressor (transformer, 100 GD steps in context)", est),
              ("Ridge (alpha=1)", make_pipeline(StandardScaler(), Ridge(1.0))),
              ("KNeighborsRegressor (k=5)", make_pipeline(StandardScaler(), KNeighborsRegressor())),
              ("MLPRegressor (8 hidden, Adam)", scaled_mlp)]
    rows, preds = fit_and_score(models, Xtr, ytr, Xte, yte, r2_score)
    t = time.process_time()
    ref = autograd_regression(est, Xte).reshape(yte.shape)
    rows.insert(1, ("same network, autograd GD (same w0, η, steps)", r2_score(yte, ref), time.process_time() - t))
    pred = preds[0].reshape(ref.shape)  # the estimator's predictions from the loop above
    Q = torch.from_numpy(est.network_inputs(Xte))
    init = forward(est.net_spec_, torch.from_numpy(est.w0_), Q).numpy() * est.y_scale_ + est.y_mean_
    init = init.reshape(ref.shape)
    gap = float(np.linalg.norm(pred - ref) / np.linalg.norm(ref - init))  # relative to what GD changed
    return rows, gap


def classification_rows(loader) -> tuple[list[tuple[str, float, float]], float]:
    Xtr, Xte, ytr, yte = split(loader)
    clf = InContextClassifier()
    models = [("InContextClassifier (transformer, 100 GD steps in context)", clf),
              ("LogisticRegression", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
              ("KNeighborsClassifier (k=5)", make_pipeline(StandardScaler(), KNeighborsClassifier())),
              ("MLPClassifier (8 hidden, Adam)",
               make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(8,), max_iter=5000, random_state=0)))]
    rows, preds = fit_and_score(models, Xtr, ytr, Xte, yte, accuracy_score)
    t = time.process_time()
    ref = autograd_logistic(clf, Xte)
    rows.insert(1, ("same model, autograd GD (same η, steps)", accuracy_score(yte, ref), time.process_time() - t))
    agree = float((preds[0] == ref).mean())
    return rows, agree


def table(title: str, metric: str, rows, note: str) -> str:
    lines = [f"### {title}", "", f"| model | test {metric} | fit + predict (CPU s) |", "|---|---|---|"]
    lines += [f"| {name} | {score:.3f} | {secs:.2f} |" for name, score, secs in rows]
    return "\n".join(lines + ["", note, ""])


# ------------------------------------------------------------------------------------------------------ plot


def steps_curves() -> dict[str, dict[str, list[float]]]:
    curves: dict[str, dict[str, list[float]]] = {}
    Xtr, Xte, ytr, yte = split(load_diabetes)
    reg = {"transformer": [], "autograd": []}
    for steps in STEPS_GRID:
        est = InContextRegressor(steps=steps, random_state=0).fit(Xtr, ytr)
        reg["transformer"].append(r2_score(yte, est.predict(Xte)))
        reg["autograd"].append(r2_score(yte, autograd_regression(est, Xte)[:, 0]))
    reg["baseline"] = [r2_score(yte, make_pipeline(StandardScaler(), Ridge(1.0)).fit(Xtr, ytr).predict(Xte))]
    curves["diabetes"] = reg
    Xtr, Xte, ytr, yte = split(load_breast_cancer)
    cls = {"transformer": [], "autograd": []}
    for steps in STEPS_GRID:
        clf = InContextClassifier(steps=steps).fit(Xtr, ytr)
        cls["transformer"].append(accuracy_score(yte, clf.predict(Xte)))
        cls["autograd"].append(accuracy_score(yte, autograd_logistic(clf, Xte)))
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(Xtr, ytr)
    cls["baseline"] = [accuracy_score(yte, lr.predict(Xte))]
    curves["breast_cancer"] = cls
    return curves


def plot(curves, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = [("diabetes", "test R²", "Ridge", "InContextRegressor on diabetes"),
              ("breast_cancer", "test accuracy", "LogisticRegression", "InContextClassifier on breast cancer")]
    for ax, (key, ylabel, base, title) in zip(axes, panels):
        c = curves[key]
        ax.semilogx(STEPS_GRID, c["autograd"], "o-", color="0.4", lw=3, alpha=0.5, label="autograd GD")
        ax.semilogx(STEPS_GRID, c["transformer"], "x--", color="C3", label="transformer (GD in context)")
        ax.axhline(c["baseline"][0], color="C0", ls=":", label=base)
        ax.set(xlabel="GD steps run in context (blocks of the transformer)", ylabel=ylabel, title=title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    torch.set_num_threads(1)
    parts = ["# icgd's scikit-learn estimators on scikit-learn's datasets", "",
             "Generated by `python docs/examples/sklearn_datasets.py`. Held-out split: "
             "`train_test_split(test_size=0.25, random_state=0)`; defaults of the estimators "
             "(`InContextRegressor`: 2-layer sigmoid network of width 8, 100 steps, η = auto, 128 knots; "
             "`InContextClassifier`: logistic regression, 100 steps, η = auto); one CPU thread. Times are the "
             "process's CPU seconds (the machine was shared, so wall-clock times were noisy).", ""]
    for title, loader in [("Regression: diabetes (442 × 10)", load_diabetes),
                          ("Multi-output regression: linnerud (20 × 3 → 3)", load_linnerud)]:
        rows, gap = regression_rows(loader)
        note = (f"Transformer vs the same network trained by autograd: ‖ŷ − ŷ_GD‖ / ‖ŷ_GD − ŷ_w0‖ = {gap:.1e} "
                f"(float64; the gap is the sum-of-ReLU fit error, O(knots⁻²)).")
        parts.append(table(title, "R²", rows, note))
    for title, loader in [("Classification: breast cancer (569 × 30, 2 classes)", load_breast_cancer),
                          ("Classification: wine (178 × 13, 3 classes, one-vs-rest)", load_wine)]:
        rows, agree = classification_rows(loader)
        parts.append(table(title, "accuracy", rows, f"Transformer and autograd GD agree on {agree:.1%} of the "
                                                      f"test labels."))
    curves = steps_curves()
    plot(curves, OUT / "sklearn_steps.png")
    parts += ["![test score vs in-context GD steps](sklearn_steps.png)", "",
              "Test score against the number of GD steps the transformer runs in its forward pass (each step is "
              "2·depth + 4 = 8 layers for the regressor); the autograd curve is the same network trained outside "
              "the transformer.", ""]
    (OUT / "sklearn.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
