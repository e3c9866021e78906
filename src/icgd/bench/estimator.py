"""Part of section 2: the scikit-learn estimator :class:`icgd.sklearn.InContextRegressor` (depth 2, width 8, 100
steps) on diabetes (the README's split, ``train_test_split(random_state=0)``: 331 training and 111 test rows), fit
then predict, against plain autograd GD on the same network and data; its R² and its deviation from autograd GD."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from icgd.bench.common import Stats, interleaved, paired_ratio

# The estimator's figures before its speed-up (fit and predict seconds, R² on the diabetes split), measured on an
# idle 2-core machine with the same split and settings.
PREVIOUS = {"fit": 2.6, "predict": 3.9, "r2": 0.361}

COLD = """
import time, warnings
import torch
torch.set_num_threads({threads})
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from icgd.sklearn import InContextRegressor
Xtr, Xte, ytr, yte = train_test_split(*load_diabetes(return_X_y=True), random_state=0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    est = InContextRegressor(depth=2, width=8, steps=100, random_state=0).fit(Xtr, ytr)
    t1 = time.perf_counter()
    est.predict(Xte)
    t2 = time.perf_counter()
print(t1 - t0, t2 - t1, sum(issubclass(w.category, FutureWarning) for w in caught))
"""


@dataclass
class EstimatorResult:
    rows: tuple[int, int]  # training and test rows
    fit: Stats  # seconds per fit
    predict: Stats  # seconds per predict
    total: Stats  # fit + predict, per round
    autograd: Stats  # the same network by autograd GD: η, the GD steps, the predictions
    ratio: Stats  # total / autograd, per round
    cold: tuple[float, float] | None  # fit and predict seconds in a fresh process (first calls)
    future_warnings: int | None  # FutureWarnings raised by that first fit + predict
    r2: float
    r2_autograd: float
    max_dev: float  # max |ŷ_tf − ŷ_gd| on the test rows, in target units
    rel_dev: float  # ‖ŷ_tf − ŷ_gd‖ / ‖ŷ_gd − ŷ(w0)‖: relative to what GD changed


def _autograd_side(est, Xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain autograd GD on the estimator's network and standardised data: η by the same power iteration, the GD
    steps by :func:`icgd.learners.gd_trajectory`, then the network at the last and at the initial weights."""
    from icgd.learners import gd_trajectory
    from icgd.nets import forward
    from icgd.sklearn import network_step_size

    spec = est.net_spec_
    X, Y, w0 = (torch.from_numpy(a) for a in (est.context_X_, est.context_y_, est.w0_))
    eta = network_step_size(spec, w0, X)
    w = gd_trajectory(spec, X, Y, w0, eta, est.steps)[-1]
    Q = torch.from_numpy(est.network_inputs(Xte))
    out = [forward(spec, v, Q).numpy() * est.y_scale_ + est.y_mean_ for v in (w, w0)]
    return out[0][:, 0], out[1][:, 0]


def _cold(threads: int) -> tuple[tuple[float, float] | None, int | None]:
    try:
        res = subprocess.run([sys.executable, "-c", COLD.format(threads=threads)], capture_output=True, text=True,
                             timeout=600, check=True)
        fit, predict, warned = res.stdout.split()[-3:]
        return (float(fit), float(predict)), int(warned)
    except (subprocess.SubprocessError, ValueError, OSError):
        return None, None


def run(repeats: int, threads: int) -> EstimatorResult | None:
    """`repeats` interleaved rounds (after one warm-up) of fit + predict and of the autograd side; None without
    scikit-learn."""
    try:
        from sklearn.datasets import load_diabetes
        from sklearn.model_selection import train_test_split

        from icgd.sklearn import InContextRegressor
    except ImportError:
        return None
    Xtr, Xte, ytr, yte = train_test_split(*load_diabetes(return_X_y=True), random_state=0)
    marks: dict[str, list[float]] = {"fit": [], "predict": []}
    state = {}

    def estimator() -> None:
        t0 = time.perf_counter()
        est = InContextRegressor(depth=2, width=8, steps=100, random_state=0).fit(Xtr, ytr)
        t1 = time.perf_counter()
        state["pred"], state["est"] = est.predict(Xte), est
        marks["fit"].append(t1 - t0)
        marks["predict"].append(time.perf_counter() - t1)

    def autograd() -> None:
        state["gd"] = _autograd_side(state["est"], Xte)

    estimator()
    times = interleaved({"est": estimator, "gd": autograd}, repeats, warmup=0)
    fit, predict = marks["fit"][-repeats:], marks["predict"][-repeats:]
    pred, (gd, init) = state["pred"], state["gd"]
    cold, warned = _cold(threads)

    def r2(p: np.ndarray) -> float:
        return float(1.0 - ((yte - p) ** 2).sum() / ((yte - yte.mean()) ** 2).sum())

    return EstimatorResult((len(Xtr), len(Xte)), Stats.of(fit), Stats.of(predict), Stats.of(times["est"]),
                           Stats.of(times["gd"]), paired_ratio(times["est"], times["gd"]), cold, warned, r2(pred),
                           r2(gd), float(np.abs(pred - gd).max()),
                           float(np.linalg.norm(pred - gd) / np.linalg.norm(gd - init)))
