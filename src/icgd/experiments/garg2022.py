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

import matplotlib.pyplot as plt
import torch

from icgd.analysis import bootstrap_ci
from icgd.experiments.icl_common import sample, train_run, verdict
from icgd.experiments.report import Report
from icgd.experiments.reproduce import RunContext
from icgd.learners import KNN, Averaging, Lasso, LeastSquares
from icgd.tasks import Prompt, Task, make_task

TITLE = "Garg et al. 2022: what can transformers learn in-context? (linear and sparse linear functions)"

SCALES = {
    "smoke": {"d": 4, "n": 9, "sparse_d": 6, "sparse_k": 2, "sparse_n": 9, "n_layer": 2, "n_head": 2, "n_embd": 32,
              "steps": 40, "batch": 64, "lr": 1e-3, "warmup": 5, "curriculum": False, "curriculum_interval": 100,
              "eval_prompts": 300, "tune_prompts": 200, "lasso_alphas": [0.01, 0.1], "n_boot": 200},
    "cpu": {"d": 6, "n": 15, "sparse_d": 10, "sparse_k": 2, "sparse_n": 16, "n_layer": 3, "n_head": 2,
            "n_embd": 64, "steps": 6000, "batch": 64, "lr": 1e-3, "warmup": 200, "curriculum": True,
            "curriculum_interval": 200, "eval_prompts": 2000, "tune_prompts": 1000,
            "lasso_alphas": [0.001, 0.01, 0.1], "n_boot": 1000},
    "paper": {"d": 20, "n": 41, "sparse_d": 20, "sparse_k": 3, "sparse_n": 41, "n_layer": 12, "n_head": 8,
              "n_embd": 256, "steps": 500000, "batch": 64, "lr": 1e-4, "warmup": 0, "curriculum": True,
              "curriculum_interval": 2000, "eval_prompts": 1280, "tune_prompts": 1280,
              "lasso_alphas": [0.0001, 0.001, 0.01, 0.1, 1.0], "n_boot": 1000},
}
TRACK = 0.05  # "tracks OLS": mean |error gap| over positions at most this (normalised error units)
NEAR_ZERO = 0.05  # "≈ 0 error"


# ------------------------------------------------------------------------------------------------- computation


def linear_task(s: dict) -> Task:
    return make_task("linear", d=s["d"])


def sparse_task(s: dict) -> Task:
    return make_task("sparse_linear", d=s["sparse_d"], k=s["sparse_k"])


def curriculum(s: dict, d: int, n: int) -> dict:
    """Garg's curriculum scaled to (d, n): dims from ⌈d/4⌉ (≥ 1) up by 1, points from that + 1 up by 2 (Garg:
    dims 5 → 20, points 11 → 41), each every `curriculum_interval` steps; {} when switched off."""
    if not s["curriculum"]:
        return {}
    d0 = max(1, -(-d // 4))
    return {"dims_start": d0, "dims_end": d, "points_start": min(n, 2 * d0 + 1), "points_end": n,
            "dims_inc": 1, "points_inc": 2, "interval": int(s["curriculum_interval"])}


def _train(ctx: RunContext, s: dict, name: str, task: str, task_kwargs: dict, d: int, n: int):
    over = {"task": task, "task_kwargs": task_kwargs, "d_in": d, "n_points": n, "n_layer": s["n_layer"],
            "n_head": s["n_head"], "n_embd": s["n_embd"], "steps": s["steps"], "batch_size": s["batch"],
            "lr": s["lr"], "warmup": s["warmup"], "curriculum": curriculum(s, d, n), "eval_prompts": 256,
            "log_every": max(10, s["steps"] // 30), "save_every": s["steps"], "baselines": []}
    return train_run(ctx, name, "garg-linear-smoke", over)


def eval_prompts(task: Task, s: dict, n: int, seed: int, step: int) -> Prompt:
    """Held-out float64 prompts of n pairs (every prefix is scored)."""
    return sample(task, s["eval_prompts"], n, m=0, seed=seed, step=step)


def per_prompt_errors(pred: torch.Tensor, Y: torch.Tensor, norm: float) -> torch.Tensor:
    """``(ŷ − y)² / norm`` per prompt and position, ``(B, n)``."""
    return ((pred - Y) ** 2).sum(-1) / norm


def tune_lasso(task: Task, s: dict, n: int, seed: int) -> float:
    """The lasso α of `lasso_alphas` with the lowest mean prefix error on tuning prompts."""
    p = sample(task, s["tune_prompts"], n, m=0, seed=seed, step=11)
    errs = {a: float(per_prompt_errors(Lasso(a).prefix_predictions(p.X, p.Y), p.Y, 1.0).mean())
            for a in s["lasso_alphas"]}
    return float(min(errs, key=errs.get))


def curves(preds: dict[str, torch.Tensor], Y: torch.Tensor, norm: float, n_boot: int, seed: int) -> dict:
    """Per learner: normalised error per number of in-context examples (mean, 95 % bootstrap band)."""
    out = {}
    for i, (name, pred) in enumerate(preds.items()):
        e = per_prompt_errors(pred, Y, norm)
        lo, hi = bootstrap_ci(e, n_boot=n_boot, generator=torch.Generator().manual_seed(seed + i))
        out[name] = {"mean": [float(v) for v in e.mean(0)], "lo": [float(v) for v in lo],
                     "hi": [float(v) for v in hi]}
    return out


def evaluate(ctx: RunContext, s: dict, run, task: Task, n: int, norm: float, learners: dict, step: int) -> dict:
    p = eval_prompts(task, s, n, ctx.seed, step)
    model = copy.deepcopy(run.model).double().eval()
    with torch.no_grad():
        preds = {"transformer": model(p.X, p.Y)}
    preds.update({name: l.prefix_predictions(p.X, p.Y) for name, l in learners.items()})
    return {"curves": curves(preds, p.Y, norm, s["n_boot"], ctx.seed), "training": run.curve(),
            "train_seconds": run.seconds}


def run(ctx: RunContext) -> dict:
    s = ctx.settings
    ctx.log("garg2022: linear regression")
    lin = _train(ctx, s, "linear", "linear", {}, s["d"], s["n"])
    linear = evaluate(ctx, s, lin, linear_task(s), s["n"], float(s["d"]),
                      {"OLS": LeastSquares(), "averaging": Averaging(), "3-NN": KNN(3)}, step=1)
    ctx.log("garg2022: sparse linear regression")
    stask = sparse_task(s)
    alpha = tune_lasso(stask, s, s["sparse_n"], ctx.seed)
    sp = _train(ctx, s, "sparse", "sparse_linear", {"k": s["sparse_k"]}, s["sparse_d"], s["sparse_n"])
    sparse = evaluate(ctx, s, sp, stask, s["sparse_n"], float(s["sparse_k"]),
                      {"OLS": LeastSquares(), f"lasso (α={alpha:g})": Lasso(alpha), "averaging": Averaging()},
                      step=2)
    sparse["lasso_alpha"] = alpha
    return {"linear": linear, "sparse": sparse}


# ------------------------------------------------------------------------------------------------- report


def _at(curve: dict, k: int) -> float:
    """Mean normalised error with k in-context examples (clipped to the prompt)."""
    return curve["mean"][min(k, len(curve["mean"]) - 1)]


def _lasso_key(c: dict) -> str:
    return next(k for k in c if k.startswith("lasso"))


def _gap(a: dict, b: dict, ks: range) -> float:
    return sum(abs(a["mean"][k] - b["mean"][k]) for k in ks) / max(1, len(ks))


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


def _trend(training: dict) -> str:
    """How the held-out training loss moved over the second half of training, as a phrase."""
    steps, loss = training["step"], training["eval_loss"]
    mid = min(range(len(steps)), key=lambda i: abs(steps[i] - steps[-1] / 2))
    change = loss[-1] / loss[mid] - 1
    return (f"held-out training loss {loss[mid]:.3g} at step {steps[mid]} → {loss[-1]:.3g} at step {steps[-1]} "
            f"({100 * change:+.0f} %)")


def _why(report: Report, part: str, zero_level: float) -> str:
    """A short reason for a missed target: still improving (undertrained) or stuck at the predict-0 level."""
    t = report.metrics[part]["training"]
    stuck = t["eval_loss"][-1] >= 0.9 * zero_level
    state = ("it has not left the predict-0 plateau" if stuck else "the model is still improving, i.e. undertrained")
    return f" Why: {state} after {report.settings['steps']} steps (paper 500 000): {_trend(t)}."


def _claims(report: Report) -> None:
    m, s = report.metrics, report.settings
    d, n = s["d"], s["n"]
    c = m["linear"]["curves"]
    T, O, A, K = c["transformer"], c["OLS"], c["averaging"], c["3-NN"]
    gap = _gap(T, O, range(1, n))
    beats = all(T["mean"][k] < min(A["mean"][k], K["mean"][k]) for k in range(d, n))
    why_lin = _why(report, "linear", float(d))
    report.claim(
        "Linear functions: the trained transformer's error tracks least squares at every number of examples and is "
        "far below averaging and 3-NN",
        "reproduced" if gap <= TRACK and beats else ("partly" if beats else "not"),
        f"mean |transformer − OLS| over k = 1…{n - 1}: {gap:.4f} (threshold {TRACK}); at k = {d // 2}: transformer "
        f"{_at(T, d // 2):.3f}, OLS {_at(O, d // 2):.3f}; at k = {n - 1}: transformer {_at(T, n - 1):.4f}, averaging "
        f"{_at(A, n - 1):.3f}, 3-NN {_at(K, n - 1):.3f}; below both baselines for all k ≥ d: {beats}." + ("" if gap <= TRACK else why_lin))
    after = [T["mean"][k] for k in range(d, n)]
    report.claim(
        f"Linear functions: once k ≥ d (= {d}) examples are given the transformer's error is ≈ 0, like OLS",
        "reproduced" if max(after) <= NEAR_ZERO else ("partly" if after[-1] <= NEAR_ZERO or
                                                        after[-1] < 0.25 * _at(T, d // 2) else "not"),
        f"transformer at k = d: {_at(T, d):.4f}, at k = {n - 1}: {_at(T, n - 1):.4f}, max over k ≥ d: "
        f"{max(after):.4f} (threshold {NEAR_ZERO}); OLS at k = d: {_at(O, d):.2e}."
        + ("" if max(after) <= NEAR_ZERO else why_lin))
    sc = m["sparse"]["curves"]
    sd, sn, sk = s["sparse_d"], s["sparse_n"], s["sparse_k"]
    ST, SO, SL = sc["transformer"], sc["OLS"], sc[_lasso_key(sc)]
    under = range(1, min(sd, sn))
    t_mean = sum(ST["mean"][k] for k in under) / len(under)
    o_mean = sum(SO["mean"][k] for k in under) / len(under)
    l_mean = sum(SL["mean"][k] for k in under) / len(under)
    beats_ols = t_mean < 0.9 * o_mean
    near_lasso = t_mean <= l_mean + TRACK
    report.claim(
        f"Sparse linear functions (d = {sd}, {sk} nonzeros): the transformer beats least squares when k < d and "
        "approaches the lasso", verdict([beats_ols, near_lasso]),
        f"mean error over k = 1…{min(sd, sn) - 1}: transformer {t_mean:.3f}, lasso {l_mean:.3f}, OLS {o_mean:.3f}; "
        f"at k = {sd // 2}: transformer {_at(ST, sd // 2):.3f}, lasso {_at(SL, sd // 2):.3f}, OLS "
        f"{_at(SO, sd // 2):.3f}." + ("" if beats_ols and near_lasso else _why(report, "sparse", float(sk))))


def render(report: Report) -> None:
    m, s = report.metrics, report.settings
    d, n, sd, sk, sn = s["d"], s["n"], s["sparse_d"], s["sparse_k"], s["sparse_n"]
    cur = curriculum(s, d, n)
    report.text(
        f"**What was run.** Two GPT-2 style transformers (`icgd.models.ICLTransformer`: pre-LayerNorm, "
        f"{s['n_layer']} layers, {s['n_head']} heads, width {s['n_embd']}, MLP, learned positions, causal, "
        f"interleaved x/y tokens), trained from scratch to predict every y_i from the pairs before it, for "
        f"{s['steps']} steps of batch {s['batch']} (AdamW lr {s['lr']:g}, warm-up {s['warmup']}, cosine decay"
        + (f", curriculum dims {cur['dims_start']}→{cur['dims_end']} and points {cur['points_start']}→"
           f"{cur['points_end']} (+2) every {cur['interval']} steps" if cur else "")
        + f"): one on linear functions (d = {d}, {n} examples per prompt), one on sparse linear functions "
        f"(d = {sd}, {sk} nonzeros, {sn} examples). Errors on {s['eval_prompts']} held-out prompts per number of "
        "examples k, normalised by d (linear) or by the sparsity (sparse) so that predicting 0 scores 1; bands are "
        f"95 % bootstrap intervals ({s['n_boot']} resamples). Baselines (`icgd.learners`): min-norm least squares, "
        "averaging ŵ = (1/k) Σ y_i x_i, 3-NN, and the lasso (α chosen from "
        f"{s['lasso_alphas']} on {s['tune_prompts']} other prompts: α = {m['sparse']['lasso_alpha']:g}).")
    if report.meta.get("scale") != "paper":
        report.text(
            f"**Reduced vs the paper** (2-core CPU): d = {d} (paper 20) with {n} examples (paper 41) for linear, "
            f"d = {sd} with {sk} nonzeros (paper d = 20, 3 nonzeros) for sparse; {s['n_layer']} layers × "
            f"{s['n_embd']} wide (paper 12 × 256, 8 heads); {s['steps']} steps (paper 500 000). The paper's "
            "values are compared at the same *relative* positions (k = d/2, k = d, k = 2d); its curves are plots, "
            "so the published numbers are read off the figures (approximate) or follow from theory where noted.")
    _claims(report)
    c, sc = m["linear"]["curves"], m["sparse"]["curves"]
    report.paper_vs_ours("lr_transformer_half_d", _at(c["transformer"], d // 2), f"k = {d // 2} = d/2 (d = {d})")
    report.paper_vs_ours("lr_ols_half_d", _at(c["OLS"], d // 2), f"k = {d // 2}; theory (d − k)/d")
    report.paper_vs_ours("lr_transformer_at_d", _at(c["transformer"], d), f"k = d = {d}")
    report.paper_vs_ours("lr_averaging_at_2d", _at(c["averaging"], 2 * d),
                         f"k = {min(2 * d, n - 1)}; theory (d + 1)/k = {(d + 1) / min(2 * d, n - 1):.3f}")
    report.paper_vs_ours("sparse_transformer_at_d", _at(sc["transformer"], sd), f"k = d = {sd}, {sk} nonzeros")
    report.paper_vs_ours("sparse_ols_half_d", _at(sc["OLS"], sd // 2), f"k = {sd // 2}; theory (d − k)/d")

    report.heading("Linear functions")
    _fig_curves(report, "linear", d, f"linear functions, d = {d}", "linear",
                f"Normalised squared error against the number of in-context examples (linear functions, d = {d}); "
                "the dotted line marks k = d. The paper's Fig. 2 shows the same comparison at d = 20.")
    ks = sorted({1, d // 2, d - 1, d, min(2 * d, n - 1), n - 1})
    report.table(["learner", *[f"k = {k}" for k in ks]],
                 [[name, *(_at(v, k) for k in ks)] for name, v in c.items()],
                 "Normalised error at selected numbers of in-context examples (linear).")
    report.heading("Sparse linear functions")
    _fig_curves(report, "sparse", sd, f"sparse linear functions, d = {sd}, {sk} nonzeros", "sparse",
                "Normalised squared error (divided by the sparsity) on sparse linear functions; dotted: k = d.")
    ks = sorted({1, sk, sd // 2, sd - 1, sd, sn - 1})
    report.table(["learner", *[f"k = {k}" for k in ks]],
                 [[name, *(_at(v, k) for k in ks)] for name, v in sc.items()],
                 "Normalised error at selected numbers of in-context examples (sparse).")
    report.heading("Training")
    report.table(["model", "final held-out MSE", "train s"],
                 [[part, m[part]["training"]["eval_loss"][-1], m[part]["train_seconds"]]
                  for part in ("linear", "sparse")])
    _fig_training(report)
