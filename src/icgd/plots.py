"""Figures (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from icgd.experiments.wu_construction import ConstructionResult  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _loss_panel(ax, res: ConstructionResult) -> None:
    steps = range(len(res.loss_gd))
    ax.plot(steps, res.loss_gd, "o-", color="0.4", lw=3, alpha=0.5, label="autograd GD")
    ax.plot(steps, res.loss_tf, "x--", color="C3", label="transformer (in context)")
    ax.set(xlabel="GD step", ylabel="training loss $L_n(w)$", title="training loss")
    ax.legend()


def _error_panel(ax, res: ConstructionResult) -> None:
    steps = list(range(1, len(res.rel_error)))
    ax.semilogy(steps, res.rel_error[1:], "o-", color="C0")
    ax.set(xlabel="GD step", ylabel=r"$\|\bar w_l - w_l\| / \|w_L - w_0\|$", title="weights vs autograd GD")


def plot_demo(res: ConstructionResult, path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    _loss_panel(axes[0], res)
    _error_panel(axes[1], res)
    ax = axes[2]
    y, gd, tf = res.y_query.flatten(), res.pred_gd.flatten(), res.pred_tf.flatten()
    ax.scatter(gd, tf, color="C3", label="transformer vs GD prediction")
    ax.scatter(y, gd, color="0.6", marker=".", label="GD prediction vs teacher")
    lo, hi = float(min(y.min(), gd.min(), tf.min())), float(max(y.max(), gd.max(), tf.max()))
    ax.plot([lo, hi], [lo, hi], "k:", lw=1)
    ax.set(xlabel="reference", ylabel="prediction", title="held-out queries")
    ax.legend(fontsize=8)
    c = res.config
    fig.suptitle(f"{c.depth}-layer {c.activation} net (width {c.width}), {c.steps} GD steps run by a "
                 f"{len(res.summary)}-layer transformer, knots={c.knots}")
    return _save(fig, path)


def plot_error_vs_step(res: ConstructionResult, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _error_panel(axes[0], res)
    _loss_panel(axes[1], res)
    return _save(fig, path)


def _spaced_labels(values: list[int], slots: int = 10) -> list[str]:
    """Tick labels for a log axis: a value is labelled when it lies at least 1/`slots` of the axis (in log scale)
    beyond the previous labelled one, so labels never overlap however dense the values."""
    logs = [math.log(v) for v in values]
    gap, last, out = (max(logs) - min(logs)) / slots, -math.inf, []
    for v, lv in zip(values, logs):
        out.append(str(v) if lv - last >= gap else "")
        last = lv if out[-1] else last
    return out


def plot_error_vs_knots(knots: list[int], errors: list[float], slope: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog(knots, errors, "o-", label=f"measured (slope {slope:.2f})")
    ref = [errors[0] * (k / knots[0]) ** -2 for k in knots]
    ax.loglog(knots, ref, "k:", label="slope −2")
    ax.set(xlabel="knots (ReLU units per fit)", ylabel="final relative error", title="error vs knots")
    ax.set_xticks(knots, _spaced_labels(knots))  # plain labels at the measured knot counts, none overlapping
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # no log-axis minor labels (2×10¹, 3×10¹, …)
    ax.legend()
    return _save(fig, path)
