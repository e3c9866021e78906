"""Garg, Tsipras, Liang & Valiant (NeurIPS 2022), "What can transformers learn in-context? A case study of simple
function classes": a GPT-2 style transformer trained from scratch on prompts ``(x_1, f(x_1), …, x_k, f(x_k),
x_query)`` learns linear functions in context about as well as least squares, far better than averaging or
3-nearest-neighbours; trained on sparse linear functions it beats least squares and approaches the lasso.

Setup: ``x ~ N(0, I_d)``, ``w ~ N(0, I_d)`` (sparse: k nonzero coordinates), noiseless ``y = wᵀx``; interleaved
tokens and :class:`icgd.models.ICLTransformer` trained on every prefix (Garg's objective), with Garg's curriculum
over dimensions and points where set. The error is the squared error at each number of in-context examples,
normalised as in the paper's plots: divided by d for linear functions and by the sparsity k for sparse ones, so
the zero predictor scores 1.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from icgd.analysis import bootstrap_ci
from icgd.experiments import settings as settings_io
from icgd.experiments.compute_estimate import TrainShape, estimate
from icgd.experiments.icl_common import sample, verdict
from icgd.experiments.plateau import Plateau, train_until_plateau
from icgd.experiments.report import Report
from icgd.experiments.reproduce import RunContext
from icgd.learners import KNN, Averaging, Lasso, LeastSquares
from icgd.tasks import Prompt, Task, make_task

TITLE = "Garg et al. 2022: what can transformers learn in-context? (linear and sparse linear functions)"


@dataclass(frozen=True)
class Settings:
    """One scale of the reproduction: the linear task (d, n), the sparse one (sparse_d, sparse_k, sparse_n), the
    model, training, and evaluation."""

    d: int
    n: int
    sparse_d: int
    sparse_k: int
    sparse_n: int
    n_layer: int
    n_head: int
    n_embd: int
    steps: int
    batch: int
    lr: float
    warmup: int
    curriculum: bool
    curriculum_interval: int
    plateau: float  # a run stops early when its held-out loss improved < this (relative) over 20 % of the steps
    eval_prompts: int
    tune_prompts: int
    lasso_alphas: tuple[float, ...]
    garg_lasso: bool  # also evaluate Garg et al.'s own scikit-learn lasso call (float32, default tol)
    n_boot: int


SETTINGS = {
    "smoke": Settings(d=4, n=9, sparse_d=6, sparse_k=2, sparse_n=9, n_layer=2, n_head=2, n_embd=32, steps=40,
                      batch=64, lr=1e-3, warmup=5, curriculum=False, curriculum_interval=100, plateau=0.0,
                      eval_prompts=300, tune_prompts=200, lasso_alphas=(0.01, 0.1), garg_lasso=True, n_boot=200),
    # cpu: the sparse task at the linear task's dimension (d = 10 stayed at predict-zero); n = 2d + 1 examples
    "cpu": Settings(d=6, n=13, sparse_d=6, sparse_k=2, sparse_n=13, n_layer=3, n_head=2, n_embd=64, steps=5000,
                    batch=64, lr=1e-3, warmup=200, curriculum=True, curriculum_interval=150, plateau=0.02,
                    eval_prompts=2000, tune_prompts=500, lasso_alphas=(0.001, 0.01, 0.1), garg_lasso=True,
                    n_boot=1000),
    "paper": Settings(d=20, n=41, sparse_d=20, sparse_k=3, sparse_n=41, n_layer=12, n_head=8, n_embd=256,
                      steps=500000, batch=64, lr=1e-4, warmup=0, curriculum=True, curriculum_interval=2000,
                      plateau=0.0, eval_prompts=1280, tune_prompts=1280,
                      lasso_alphas=(0.0001, 0.001, 0.01, 0.1, 1.0), garg_lasso=True, n_boot=1000),
}
SCALES = settings_io.as_scales(SETTINGS)

TRACK = 0.05  # "tracks OLS": mean |error gap| over positions at most this (normalised error units)
NEAR_ZERO = 0.05  # "≈ 0 error"; also the cpu target for the linear model at k = 2d
SPARSE_TARGET = 0.7  # cpu target: the sparse model's mean normalised error over 1 ≤ k < d below this
THEORY_D = 20  # the paper's dimension, at which its averaging curve is compared with ours
GARG_LASSO_PROMPTS = 500  # held-out prompts on which Garg et al.'s scikit-learn lasso call is also run


# ------------------------------------------------------------------------------------------------- computation


def linear_task(s: Settings) -> Task:
    return make_task("linear", d=s.d)


def sparse_task(s: Settings) -> Task:
    return make_task("sparse_linear", d=s.sparse_d, k=s.sparse_k)


def curriculum(s: Settings, d: int, n: int) -> dict:
    """Garg's curriculum scaled to (d, n): dims from ⌈d/4⌉ (≥ 1) up by 1, points from that + 1 up by 2 (Garg:
    dims 5 → 20, points 11 → 41), each every `curriculum_interval` steps; {} when switched off."""
    if not s.curriculum:
        return {}
    d0 = max(1, -(-d // 4))
    return {"dims_start": d0, "dims_end": d, "points_start": min(n, 2 * d0 + 1), "points_end": n,
            "dims_inc": 1, "points_inc": 2, "interval": int(s.curriculum_interval)}


def _train(ctx: RunContext, s: Settings, name: str, task: str, task_kwargs: dict, d: int, n: int):
    over = {"task": task, "task_kwargs": task_kwargs, "d_in": d, "n_points": n, "n_layer": s.n_layer,
            "n_head": s.n_head, "n_embd": s.n_embd, "steps": s.steps, "batch_size": s.batch, "lr": s.lr,
            "warmup": s.warmup, "curriculum": curriculum(s, d, n), "eval_prompts": 256,
            "log_every": max(10, s.steps // 30), "save_every": s.steps, "baselines": []}
    return train_until_plateau(ctx, name, "garg-linear-smoke", over, Plateau(after=0.5, rel=s.plateau))


def eval_prompts(task: Task, s: Settings, n: int, seed: int, step: int) -> Prompt:
    """Held-out float64 prompts of n pairs (every prefix is scored)."""
    return sample(task, s.eval_prompts, n, m=0, seed=seed, step=step)


def per_prompt_errors(pred: torch.Tensor, Y: torch.Tensor, norm: float) -> torch.Tensor:
    """``(ŷ − y)² / norm`` per prompt and position, ``(B, n)``."""
    return ((pred - Y) ** 2).sum(-1) / norm


def tune_lasso(task: Task, s: Settings, n: int, seed: int) -> float:
    """The lasso α of `lasso_alphas` with the lowest mean prefix error on tuning prompts."""
    p = sample(task, s.tune_prompts, n, m=0, seed=seed, step=11)
    errs = {a: float(per_prompt_errors(Lasso(a).prefix_predictions(p.X, p.Y), p.Y, 1.0).mean())
            for a in s.lasso_alphas}
    return float(min(errs, key=errs.get))


def garg_lasso_prefix(X: torch.Tensor, Y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, int]:
    """Garg et al.'s lasso baseline as their code calls it: scikit-learn ``Lasso(alpha, fit_intercept=False,
    max_iter=100000)`` with its default tol 1e-4, on float32 data, one fit per prompt and prefix. Returns the
    prefix predictions (float64) and how many fits scikit-learn reported as not converged."""
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
    from sklearn.linear_model import Lasso as SkLasso

    Xn, Yn = X.numpy().astype(np.float32), Y[..., 0].numpy().astype(np.float32)
    out, unconverged = np.zeros(Yn.shape), 0
    for b in range(Xn.shape[0]):
        for i in range(1, Xn.shape[1]):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SkConvergenceWarning)
                fit = SkLasso(alpha=alpha, fit_intercept=False, max_iter=100000).fit(Xn[b, :i], Yn[b, :i])
            unconverged += any(issubclass(c.category, SkConvergenceWarning) for c in caught)
            out[b, i] = fit.predict(Xn[b, i:i + 1])[0]
    return torch.from_numpy(out)[..., None], unconverged


def curves(preds: dict[str, torch.Tensor], Y: torch.Tensor, norm: float, n_boot: int, seed: int) -> dict:
    """Per learner: normalised error per number of in-context examples (mean, 95 % bootstrap band)."""
    out = {}
    for i, (name, pred) in enumerate(preds.items()):
        e = per_prompt_errors(pred, Y, norm)
        lo, hi = bootstrap_ci(e, n_boot=n_boot, generator=torch.Generator().manual_seed(seed + i))
        out[name] = {"mean": [float(v) for v in e.mean(0)], "lo": [float(v) for v in lo],
                     "hi": [float(v) for v in hi]}
    return out


def _mean_ci(values: torch.Tensor, s: Settings, seed: int) -> dict:
    lo, hi = bootstrap_ci(values, n_boot=s.n_boot, generator=torch.Generator().manual_seed(seed))
    return {"value": float(values.mean()), "lo": float(lo), "hi": float(hi)}


def evaluate(ctx: RunContext, s: Settings, trained, task: Task, n: int, norm: float, learners: dict,
             step: int) -> tuple[dict, Prompt, dict]:
    run, stopped = trained
    p = eval_prompts(task, s, n, ctx.seed, step)
    model = copy.deepcopy(run.model).double().eval()
    with torch.no_grad():
        preds = {"transformer": model(p.X, p.Y)}
    preds.update({name: l.prefix_predictions(p.X, p.Y) for name, l in learners.items()})
    out = {"curves": curves(preds, p.Y, norm, s.n_boot, ctx.seed), "training": run.curve(),
           "train_seconds": run.seconds, "steps_run": int(run.trainer.step), "stopped_on_plateau": stopped}
    return out, p, preds


def averaging_at_theory_dim(s: Settings, seed: int) -> dict:
    """The averaging estimator's normalised error at k = 2d for the paper's d = 20 (theory (d + 1)/k = 0.525),
    measured on our own prompts: the value the paper's plot is compared with."""
    p = sample(make_task("linear", d=THEORY_D), s.eval_prompts, 2 * THEORY_D + 1, m=0, seed=seed, step=3)
    e = per_prompt_errors(Averaging().prefix_predictions(p.X, p.Y), p.Y, float(THEORY_D))[:, 2 * THEORY_D]
    return {**_mean_ci(e, s, seed), "d": THEORY_D, "k": 2 * THEORY_D, "theory": (THEORY_D + 1) / (2 * THEORY_D)}


def _sparse(ctx: RunContext, s: Settings) -> dict:
    stask = sparse_task(s)
    alpha = tune_lasso(stask, s, s.sparse_n, ctx.seed)
    sp = _train(ctx, s, "sparse", "sparse_linear", {"k": s.sparse_k}, s.sparse_d, s.sparse_n)
    sparse, p, preds = evaluate(ctx, s, sp, stask, s.sparse_n, float(s.sparse_k),
                                {"OLS": LeastSquares(), f"lasso (α={alpha:g})": Lasso(alpha),
                                 "averaging": Averaging()}, step=2)
    sparse["lasso_alpha"] = alpha
    under = per_prompt_errors(preds["transformer"], p.Y, float(s.sparse_k))[:, 1:min(s.sparse_d, s.sparse_n)]
    sparse["transformer_below_d"] = _mean_ci(under.mean(1), s, ctx.seed + 5)
    if s.garg_lasso:
        ctx.log("garg2022: Garg et al.'s scikit-learn lasso call on the same prompts")
        B = min(GARG_LASSO_PROMPTS, p.X.shape[0])  # one scikit-learn fit per prompt and prefix: a subset
        g, unconverged = garg_lasso_prefix(p.X[:B], p.Y[:B], alpha)
        ours = preds[f"lasso (α={alpha:g})"][:B]
        both = curves({"garg": g, "ours": ours}, p.Y[:B], float(s.sparse_k), s.n_boot, ctx.seed)
        sparse["garg_lasso"] = {"curve": both["garg"], "ours_curve": both["ours"], "prompts": B,
                                "max_abs_pred_diff": float((g - ours).abs().max()),
                                "mean_abs_pred_diff": float((g - ours).abs()[:, 1:].mean()),
                                "unconverged_fits": unconverged, "fits": int(B * (p.X.shape[1] - 1))}
    return sparse


def headline(m: dict, s: Settings) -> dict:
    """The numbers the README quotes: the linear model at k = 2d and the sparse model's mean over k < d."""
    lin = m["linear"]["curves"]["transformer"]
    k = min(2 * s.d, s.n - 1)
    return {"linear_error_at_2d": lin["mean"][k], "linear_error_at_2d_lo": lin["lo"][k],
            "linear_error_at_2d_hi": lin["hi"][k], "linear_2d": k,
            "sparse_error_below_d": m["sparse"]["transformer_below_d"]["value"],
            "sparse_error_below_d_lo": m["sparse"]["transformer_below_d"]["lo"],
            "sparse_error_below_d_hi": m["sparse"]["transformer_below_d"]["hi"]}


def run(ctx: RunContext) -> dict:
    s = settings_io.load(Settings, ctx.settings)
    ctx.log("garg2022: linear regression")
    lin = _train(ctx, s, "linear", "linear", {}, s.d, s.n)
    linear = evaluate(ctx, s, lin, linear_task(s), s.n, float(s.d),
                      {"OLS": LeastSquares(), "averaging": Averaging(), "3-NN": KNN(3)}, step=1)[0]
    linear["averaging_theory_dim"] = averaging_at_theory_dim(s, ctx.seed)
    ctx.log("garg2022: sparse linear regression")
    m = {"linear": linear, "sparse": _sparse(ctx, s)}
    return {"headline": headline(m, s), **m}


# ------------------------------------------------------------------------------------------------- report prose


def what_was_run(s: Settings | dict, scale: str) -> str:
    """The "what was run" paragraph, from the settings of the run (typed, or the dict of ``metrics.json``); at smoke
    scale it describes what the smoke run ran."""
    s = settings_io.load(Settings, s) if isinstance(s, dict) else s
    cur = curriculum(s, s.d, s.n)
    smoke = (" This is the smoke scale: a check that the pipeline runs end to end, far too small for any verdict."
             if scale == "smoke" else "")
    stop = (f"; a run stops early once its held-out loss improved less than {100 * s.plateau:g} % over the last "
            "20 % of the planned steps (checked after half of them)" if s.plateau else "")
    garg = (" The lasso is also run as Garg et al.'s code calls scikit-learn (float32, default tol 1e-4, "
            "max_iter 100 000) on the same prompts." if s.garg_lasso else "")
    return (f"**What was run.** Two GPT-2 style transformers (`icgd.models.ICLTransformer`: pre-LayerNorm, "
            f"{s.n_layer} layers, {s.n_head} heads, width {s.n_embd}, MLP, learned positions, causal, interleaved "
            f"x/y tokens), trained from scratch to predict every y_i from the pairs before it, for up to {s.steps} "
            f"steps of batch {s.batch} (AdamW lr {s.lr:g}, warm-up {s.warmup}, cosine decay"
            + (f", curriculum dims {cur['dims_start']}→{cur['dims_end']} and points {cur['points_start']}→"
               f"{cur['points_end']} (+2) every {cur['interval']} steps" if cur else "") + stop
            + f"): one on linear functions (d = {s.d}, {s.n} examples per prompt), one on sparse linear functions "
            f"(d = {s.sparse_d}, {s.sparse_k} nonzeros, {s.sparse_n} examples). Errors on {s.eval_prompts} held-out "
            "prompts per number of examples k, normalised by d (linear) or by the sparsity (sparse) so that "
            f"predicting 0 scores 1; bands are 95 % bootstrap intervals ({s.n_boot} resamples). Baselines "
            "(`icgd.learners`): min-norm least squares, averaging ŵ = (1/k) Σ y_i x_i, 3-NN, and the lasso (solved "
            f"to its KKT tolerance; α chosen from {list(s.lasso_alphas)} on {s.tune_prompts} other prompts)."
            + garg + smoke)


def reduced_vs_paper(s: Settings) -> str:
    return (f"**Reduced vs the paper** (2-core CPU): d = {s.d} (paper 20) with {s.n} examples (paper 41) for "
            f"linear, d = {s.sparse_d} with {s.sparse_k} nonzeros (paper d = 20, 3 nonzeros) for sparse; "
            f"{s.n_layer} layers × {s.n_embd} wide (paper 12 × 256, 8 heads); {s.steps} steps (paper 500 000). "
            "Changed from the committed report before this one (6000 steps, 15 examples; linear 0.083 at k = 12, "
            "sparse at d = 10 stuck at predict-zero, 0.99 below d): the sparse task at d = 6 instead of 10, 2d + 1 "
            f"examples per prompt, and {s.steps} steps, sized for a 2-core machine shared with other runs. The "
            "paper's curves "
            "are plots, so its numbers are read off the figures, with the reading's tolerance; they are compared "
            "at the same relative positions (k = d/2, d), and the averaging baseline at the paper's own d = 20.")


def _cost(report: Report, s: Settings) -> str:
    m = report.metrics
    measured = [(TrainShape(s.n_layer, s.n_embd, 2 * n, s.batch), m[part]["steps_run"], m[part]["train_seconds"])
                for part, n in (("linear", s.n), ("sparse", s.sparse_n))]
    p = SETTINGS["paper"]
    paper = [(TrainShape(p.n_layer, p.n_embd, 2 * n, p.batch), p.steps) for n in (p.n, p.sparse_n)]
    return estimate(measured, paper).sentence(
        f"2 models ({p.n_layer} layers × {p.n_embd}, {p.steps} steps of batch {p.batch}, 2·{p.n} tokens)")


# ------------------------------------------------------------------------------------------------- report claims


def _at(curve: dict, k: int) -> float:
    """Mean normalised error with k in-context examples (clipped to the prompt)."""
    return curve["mean"][min(k, len(curve["mean"]) - 1)]


def _lasso_key(c: dict) -> str:
    return next(k for k in c if k.startswith("lasso"))


def _gap(a: dict, b: dict, ks: range) -> float:
    return sum(abs(a["mean"][k] - b["mean"][k]) for k in ks) / max(1, len(ks))


def _trend(part: dict) -> str:
    """How the held-out training loss moved over the second half of training, as a phrase."""
    t = part["training"]
    steps, loss = t["step"], t["eval_loss"]
    mid = min(range(len(steps)), key=lambda i: abs(steps[i] - steps[-1] / 2))
    change = loss[-1] / loss[mid] - 1
    return (f"held-out training loss {loss[mid]:.3g} at step {steps[mid]} → {loss[-1]:.3g} at step {steps[-1]} "
            f"({100 * change:+.0f} %)" + (", stopped on a plateau" if part.get("stopped_on_plateau") else ""))


def _why(report: Report, part: str, zero_level: float) -> str:
    """A short reason for a missed target: still improving (undertrained) or stuck at the predict-0 level."""
    p = report.metrics[part]
    stuck = p["training"]["eval_loss"][-1] >= 0.9 * zero_level
    state = "it has not left the predict-0 plateau" if stuck else "the model is still improving, i.e. undertrained"
    return f" Why: {state} after {p['steps_run']} steps (paper 500 000): {_trend(p)}."


def _claim_linear(report: Report, s: Settings) -> None:
    c = report.metrics["linear"]["curves"]
    d, n = s.d, s.n
    T, O, A, K = c["transformer"], c["OLS"], c["averaging"], c["3-NN"]
    gap = _gap(T, O, range(1, n))
    beats = all(T["mean"][k] < min(A["mean"][k], K["mean"][k]) for k in range(d, n))
    report.claim(
        "Linear functions: the trained transformer's error tracks least squares at every number of examples and is "
        "far below averaging and 3-NN",
        "reproduced" if gap <= TRACK and beats else ("partly" if beats else "not"),
        f"mean |transformer − OLS| over k = 1…{n - 1}: {gap:.4f} (threshold {TRACK}); at k = {d // 2}: transformer "
        f"{_at(T, d // 2):.3f}, OLS {_at(O, d // 2):.3f}; at k = {n - 1}: transformer {_at(T, n - 1):.4f}, "
        f"averaging {_at(A, n - 1):.3f}, 3-NN {_at(K, n - 1):.3f}; below both baselines for all k ≥ d: {beats}."
        + ("" if gap <= TRACK else _why(report, "linear", float(d))))
    k2 = min(2 * d, n - 1)
    after = [T["mean"][k] for k in range(d, n)]
    at2d = (T["mean"][k2], T["lo"][k2], T["hi"][k2])
    report.claim(
        f"Linear functions: once k ≥ d (= {d}) examples are given the transformer's error is ≈ 0, like OLS (the cpu "
        f"target: at most {NEAR_ZERO} at k = 2d = {k2})",
        "reproduced" if max(after) <= NEAR_ZERO else ("partly" if at2d[0] <= NEAR_ZERO else "not"),
        f"transformer at k = d: {_at(T, d):.4f}, at k = 2d = {k2}: {at2d[0]:.4f} [{at2d[1]:.4f}, {at2d[2]:.4f}], "
        f"max over k ≥ d: {max(after):.4f} (threshold {NEAR_ZERO}); OLS at k = d: {_at(O, d):.2e}."
        + ("" if max(after) <= NEAR_ZERO else _why(report, "linear", float(d))))


def _claim_sparse(report: Report, s: Settings) -> None:
    sp = report.metrics["sparse"]
    sc = sp["curves"]
    under = range(1, min(s.sparse_d, s.sparse_n))
    ST, SO, SL = sc["transformer"], sc["OLS"], sc[_lasso_key(sc)]
    t = sp["transformer_below_d"]
    o_mean = sum(SO["mean"][k] for k in under) / len(under)
    l_mean = sum(SL["mean"][k] for k in under) / len(under)
    beats_ols, near_lasso = t["hi"] < o_mean, t["value"] <= l_mean + TRACK
    target = "met" if t["value"] < SPARSE_TARGET else "missed"
    report.claim(
        f"Sparse linear functions (d = {s.sparse_d}, {s.sparse_k} nonzeros): the transformer beats least squares "
        "when k < d and approaches the lasso", verdict([beats_ols, near_lasso]),
        f"mean error over k = 1…{under[-1]}: transformer {t['value']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}] (cpu "
        f"target < {SPARSE_TARGET}: {target}), lasso {l_mean:.3f}, OLS {o_mean:.3f}; at k = {s.sparse_d // 2}: "
        f"transformer {_at(ST, s.sparse_d // 2):.3f}, lasso {_at(SL, s.sparse_d // 2):.3f}, OLS "
        f"{_at(SO, s.sparse_d // 2):.3f}." + ("" if beats_ols and near_lasso
                                              else _why(report, "sparse", float(s.sparse_k))))


def _paper_rows(report: Report, s: Settings) -> None:
    m = report.metrics
    c, sc, d, sd = m["linear"]["curves"], m["sparse"]["curves"], s.d, s.sparse_d
    report.paper_vs_ours("lr_transformer_half_d", _at(c["transformer"], d // 2), f"k = {d // 2} = d/2 (d = {d})")
    report.paper_vs_ours("lr_ols_half_d", _at(c["OLS"], d // 2), f"k = {d // 2}; theory (d − k)/d")
    report.paper_vs_ours("lr_transformer_at_d", _at(c["transformer"], d), f"k = d = {d}")
    av = m["linear"]["averaging_theory_dim"]
    report.paper_vs_ours("lr_averaging_at_2d", av["value"],
                         f"ours at the paper's d = {av['d']}, k = {av['k']} (95 % [{av['lo']:.3f}, {av['hi']:.3f}]); "
                         f"theory (d + 1)/k = {av['theory']:.3f}")
    report.paper_vs_ours("sparse_transformer_at_d", _at(sc["transformer"], sd), f"k = d = {sd}, {s.sparse_k} nonzeros")
    report.paper_vs_ours("sparse_ols_half_d", _at(sc["OLS"], sd // 2), f"k = {sd // 2}; theory (d − k)/d")


# ------------------------------------------------------------------------------------------------- report figures


def _fig_curves(report: Report, part: str, d: int, title: str, name: str, caption: str) -> None:
    c = report.metrics[part]["curves"]
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    for i, (label, v) in enumerate(c.items()):
        ks = list(range(len(v["mean"])))
        style = "-" if label == "transformer" else "--"
        ax.plot(ks, v["mean"], style, marker="o", ms=3, color=f"C{i}", label=label, lw=2 if i == 0 else 1.3)
        ax.fill_between(ks, v["lo"], v["hi"], color=f"C{i}", alpha=0.18, lw=0)
    ax.axvline(d, color="0.6", lw=0.8, ls=":")
    ax.set(xlabel="in-context examples k", ylabel="normalised squared error", title=title, ylim=(-0.03, 1.6))
    ax.legend(fontsize=8)
    report.figure(fig, name, caption)


def _fig_training(report: Report) -> None:
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for i, part in enumerate(("linear", "sparse")):
        t = report.metrics[part]["training"]
        ax.plot(t["step"], t["eval_loss"], color=f"C{i}", label=part)
    ax.set(xlabel="training step", ylabel="held-out MSE (all prefixes, unnormalised)", yscale="log",
           title="training")
    ax.legend(fontsize=8)
    report.figure(fig, "training", "Held-out loss during training (full-size prompts; with the curriculum, training "
                  "prompts are smaller early on).")


def _table_at(report: Report, c: dict, ks: list[int], caption: str) -> None:
    report.table(["learner", *[f"k = {k}" for k in ks]], [[name, *(_at(v, k) for k in ks)] for name, v in c.items()],
                 caption)


def _garg_lasso_text(report: Report, s: Settings) -> None:
    sp = report.metrics["sparse"]
    g = sp.get("garg_lasso")
    if not g:
        return
    under = range(1, min(s.sparse_d, s.sparse_n))
    ours = g["ours_curve"]
    report.text(
        f"**Lasso: converged vs Garg et al.'s call** (α = {sp['lasso_alpha']:g}, the first {g['prompts']} held-out "
        f"prompts). Mean normalised error over k = 1…{under[-1]}: ours (KKT-converged, float64) "
        f"{sum(ours['mean'][k] for k in under) / len(under):.4f}, "
        f"scikit-learn as Garg et al. call it (float32, tol 1e-4) "
        f"{sum(g['curve']['mean'][k] for k in under) / len(under):.4f}; their predictions differ from ours by "
        f"{g['mean_abs_pred_diff']:.2e} on average and {g['max_abs_pred_diff']:.3g} at most; scikit-learn reported "
        f"{g['unconverged_fits']} of {g['fits']} fits as not converged.")


def render(report: Report) -> None:
    s = settings_io.load(Settings, report.settings)
    m, scale = report.metrics, report.meta.get("scale", "")
    report.text(what_was_run(s, scale))
    if scale != "paper":
        report.text(reduced_vs_paper(s))
    report.text(_cost(report, s))
    _claim_linear(report, s)
    _claim_sparse(report, s)
    _paper_rows(report, s)
    report.heading("Linear functions")
    _fig_curves(report, "linear", s.d, f"linear functions, d = {s.d}", "linear",
                f"Normalised squared error against the number of in-context examples (linear functions, d = {s.d}); "
                "the dotted line marks k = d. The paper's Fig. 2 shows the same comparison at d = 20.")
    _table_at(report, m["linear"]["curves"], sorted({1, s.d // 2, s.d - 1, s.d, min(2 * s.d, s.n - 1), s.n - 1}),
              "Normalised error at selected numbers of in-context examples (linear).")
    report.heading("Sparse linear functions")
    _fig_curves(report, "sparse", s.sparse_d, f"sparse linear functions, d = {s.sparse_d}, {s.sparse_k} nonzeros",
                "sparse", "Normalised squared error (divided by the sparsity) on sparse linear functions; dotted: "
                "k = d.")
    _table_at(report, m["sparse"]["curves"], sorted({1, s.sparse_k, s.sparse_d // 2, s.sparse_d - 1, s.sparse_d,
                                                     s.sparse_n - 1}),
              "Normalised error at selected numbers of in-context examples (sparse).")
    _garg_lasso_text(report, s)
    report.heading("Training")
    report.table(["model", "final held-out MSE", "steps run", "train s"],
                 [[part, m[part]["training"]["eval_loss"][-1], m[part]["steps_run"], m[part]["train_seconds"]]
                  for part in ("linear", "sparse")])
    _fig_training(report)
