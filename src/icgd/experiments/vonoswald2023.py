"""von Oswald et al. (ICML 2023), "Transformers learn in-context by gradient descent": trained linear
self-attention (LSA) against one step of GD (loss, model cos, preds diff, weights vs the Prop. 1 construction),
multi-layer LSA against multi-step GD and GD++, and out-of-distribution input scaling.

Setup (the paper's, via the ``lsa-*`` training presets): tokens ``(x_i, y_i)``, query ``(x_q, 0)``, ``x ~ U(−½, ½)^d``
(the official code's ``input_range = 1``, which its published losses match), ``W ~ N(0, I)``, noiseless,
d = N = 10, loss ½‖ŷ − y‖² (the code's convention). The GD baselines are line-searched on separate tasks.
"""

from __future__ import annotations

import copy
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from icgd.analysis import alignment_metrics, compare_lsa_weights
from icgd.constructions import linear_gd, von_oswald_weights
from icgd.experiments.icl_common import half_mse, heatmap, rel_gap, sample, to_list, train_run, verdict
from icgd.experiments.report import Report
from icgd.experiments.reproduce import RunContext
from icgd.learners import GD, GDPlusPlus
from icgd.tasks import make_task

TITLE = "von Oswald et al. 2023: linear self-attention learns in context by gradient descent"

_COMMON = {"d": 10, "n": 10, "x_scale": 0.5}
SCALES = {
    "smoke": {**_COMMON, "preset": "lsa-smoke", "steps": 150, "batch": 512, "lr": 1e-2, "chunks": 3,
              "deep": [{"layers": 2, "shared": True}], "deep_steps": 60, "deep_batch": 256, "deep_lr": 1e-2,
              "eval_tasks": 2000, "tune_tasks": 1000, "ood_alphas": [0.5, 1.0, 1.5, 2.0], "ood_tasks": 500,
              "trainer_eval": 1000},
    "cpu": {**_COMMON, "preset": "lsa-cpu", "steps": 4000, "batch": 2048, "lr": 1e-3, "chunks": 10,
            "deep": [{"layers": 2, "shared": True}, {"layers": 3, "shared": False}], "deep_steps": 3000,
            "deep_batch": 1024, "deep_lr": 2e-3, "eval_tasks": 10000, "tune_tasks": 4000,
            "ood_alphas": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], "ood_tasks": 4000,
            "trainer_eval": 4096},
    "paper": {**_COMMON, "preset": "lsa-cpu", "steps": 5000, "batch": 2048, "lr": 1e-3, "chunks": 20,
              "deep": [{"layers": 2, "shared": True}, {"layers": 5, "shared": False}], "deep_steps": 50000,
              "deep_batch": 2048, "deep_lr": 5e-4, "eval_tasks": 10000, "tune_tasks": 10000,
              "ood_alphas": [round(0.5 + 0.1 * i, 2) for i in range(16)], "ood_tasks": 10000,
              "trainer_eval": 10000},
}

# targets at cpu scale (the issue): 1-layer LSA loss within 3 % of GD, model cos ≥ 0.99
LOSS_TOL, COS_MIN = 0.03, 0.99


# ------------------------------------------------------------------------------------------------- computation


def _task(s: dict, alpha: float = 1.0):
    return make_task("linear", d=s["d"], x_dist="uniform", x_scale=s["x_scale"] * alpha)


def _split(p):
    """(X, Y, x_query, y_query) of a prompt sample with one query."""
    return p.X, p.Y, p.x_query, p.y_query


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a trained model for evaluation (training goes on with the original)."""
    return copy.deepcopy(model).double().eval()


def _loss(predictor, X, Y, xq, yq) -> float:
    with torch.no_grad():
        predict = getattr(predictor, "predict", predictor)
        return half_mse(predict(X, Y, xq), yq)


def gdpp_losses(X, Y, xq, yq, etas: torch.Tensor, gamma: float, steps: int) -> torch.Tensor:
    """½-MSE of `steps` GD++ steps (:class:`GDPlusPlus`'s recursion) for every step size in `etas` at one γ, all at
    once: the input transform ``A_t`` does not depend on η."""
    S, b = X.mT @ X, X.mT @ Y
    n = X.shape[1]
    eye = torch.eye(S.shape[-1], dtype=S.dtype)
    A = eye.expand_as(S)
    eta = etas.reshape(-1, 1, 1, 1).to(S.dtype)
    W = torch.zeros(len(etas), *b.shape, dtype=S.dtype)
    for _ in range(steps):
        At = A.mT
        W = W + (eta / n) * (At @ A @ (b - S @ W))
        A = (eye - (gamma / n) * (A @ S @ At)) @ A
    return 0.5 * ((xq @ W - yq) ** 2).sum(-1).mean(dim=(1, 2))


def tune_gd_plus_plus(X, Y, xq, yq, steps: int, eta_ref: float) -> GDPlusPlus:
    """GD++ with one (η, γ) for all `steps` (tied, as the paper's recurrent models), by grid search on the given
    tasks: a coarse grid (η around the one-step optimum `eta_ref`, γ in [0, 4] in icgd's normalised convention)
    refined once around its best cell."""
    def best(etas, gammas) -> tuple[float, float]:
        loss, eta, gamma = math.inf, float(etas[0]), float(gammas[0])
        for g in gammas:
            losses = gdpp_losses(X, Y, xq, yq, torch.as_tensor(etas), float(g), steps)
            losses = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, math.inf))
            i = int(torch.argmin(losses))
            if float(losses[i]) < loss:
                loss, eta, gamma = float(losses[i]), float(etas[i]), float(g)
        return eta, gamma

    etas = np.geomspace(0.05 * eta_ref, 2.0 * eta_ref, 24)
    r = etas[1] / etas[0]
    eta, gamma = best(etas, np.linspace(0.0, 4.0, 21))
    eta, gamma = best(np.geomspace(eta / r, eta * r, 9), np.clip(np.linspace(gamma - 0.2, gamma + 0.2, 9), 0, None))
    return GDPlusPlus(eta, gamma, steps)


def _overrides(s: dict, steps: int, batch: int, lr: float, layers: int, shared: bool) -> dict:
    """Training-config overrides of the ``lsa-*`` preset (which fixes the task, tokens, optimiser and schedule)."""
    return {"steps": steps, "batch_size": batch, "lr": lr, "d_in": s["d"], "n_points": s["n"], "n_layer": layers,
            "shared": shared, "eval_prompts": s["trainer_eval"], "log_every": max(10, steps // 25),
            "save_every": steps, "baselines": ["gd"]}


def _align(model, learner, X, Y, xq) -> dict[str, float]:
    return alignment_metrics(model, learner, X, Y, xq)


def _one_layer(ctx: RunContext, s: dict, tune, val) -> tuple[dict, dict, dict, GD, torch.nn.Module]:
    """Train the 1-layer LSA (alignment measured after every chunk) and compare it with one tuned GD step."""
    gd = GD.tune(*_split(tune), steps=1)
    Xv, Yv, qv, yv = _split(val)
    track = {"step": [], "loss": [], "model_cos": [], "preds_diff": []}
    small = slice(0, min(2000, Xv.shape[0]))

    def on_chunk(trainer) -> None:
        m = _frozen(trainer.module)
        a = _align(m, gd, Xv[small], Yv[small], qv[small])
        track["step"].append(int(trainer.step))
        track["loss"].append(_loss(m, Xv[small], Yv[small], qv[small], yv[small]))
        track["model_cos"].append(a["model_cos"])
        track["preds_diff"].append(a["preds_diff"])

    run = train_run(ctx, "lsa-1", s["preset"], _overrides(s, s["steps"], s["batch"], s["lr"], 1, False),
                    chunks=s["chunks"], on_chunk=on_chunk)
    model = _frozen(run.model)
    align = _align(model, gd, Xv, Yv, qv)
    cmp = compare_lsa_weights(model.weights(0), von_oswald_weights(s["d"], eta=gd.eta), d_x=s["d"])
    loss_lsa, loss_gd = _loss(model, Xv, Yv, qv, yv), _loss(gd, Xv, Yv, qv, yv)
    construction = linear_gd(s["d"], eta=gd.eta, steps=1)
    one = {
        "loss_lsa": loss_lsa, "loss_gd": loss_gd, "rel_gap": rel_gap(loss_lsa, loss_gd),
        "loss_construction": half_mse(construction.predict(Xv, Yv, qv), yv),
        "loss_zero": half_mse(torch.zeros_like(yv), yv),
        **align, "eta_gd": float(gd.eta), "eta_lsa": float(cmp["eta"]), "beta": float(cmp["beta"]),
        "kq_distance": float(cmp["kq_distance"]), "pv_distance": float(cmp["pv_distance"]),
        "train_seconds": run.seconds,
    }
    curve = {**run.curve(), "gd_loss": float(run.trainer.baselines["gd"]), "align": track}
    weights = {k: to_list(cmp[k], 5) for k in ("W_KQ", "W_PV", "W_KQ_constructed", "W_PV_constructed")}
    return one, curve, weights, gd, model


def _deep(ctx: RunContext, s: dict, spec: dict, tune, val, eta1: float) -> tuple[dict, torch.nn.Module, list]:
    """A K-layer LSA (recurrent or not) against K tuned GD steps and K tuned GD++ steps."""
    K, shared = int(spec["layers"]), bool(spec["shared"])
    name = f"lsa-{K}{'-recurrent' if shared else ''}"
    run = train_run(ctx, name, s["preset"], _overrides(s, s["deep_steps"], s["deep_batch"], s["deep_lr"], K, shared))
    model = _frozen(run.model)
    gdk = GD.tune(*_split(tune), steps=K)
    gdpp = tune_gd_plus_plus(*_split(tune), steps=K, eta_ref=eta1)
    Xv, Yv, qv, yv = _split(val)
    a_gd, a_pp = _align(model, gdk, Xv, Yv, qv), _align(model, gdpp, Xv, Yv, qv)
    out = {
        "layers": K, "shared": shared, "loss_lsa": _loss(model, Xv, Yv, qv, yv), "loss_gd": _loss(gdk, Xv, Yv, qv, yv),
        "loss_gdpp": _loss(gdpp, Xv, Yv, qv, yv), "eta_gd": float(gdk.eta), "eta_gdpp": float(gdpp.eta),
        "gamma_gdpp": float(gdpp.gamma), "model_cos_gd": a_gd["model_cos"], "model_cos_gdpp": a_pp["model_cos"],
        "preds_diff_gd": a_gd["preds_diff"], "preds_diff_gdpp": a_pp["preds_diff"],
        "curve": run.curve(), "train_seconds": run.seconds,
    }
    if shared:  # the γ of the trained recurrent layer: x-block of β·P W_V is −γ (icgd's normalised γ)
        cmp = compare_lsa_weights(model.weights(0), von_oswald_weights(s["d"], eta=gdpp.eta, gamma=1.0),
                                  d_x=s["d"])
        d = s["d"]
        out["gamma_lsa"] = -float(torch.diagonal(cmp["W_PV"][:d, :d]).mean())
        out["eta_lsa"] = float(cmp["eta"])
    return out, model, [gdk, gdpp]


def _ood(s: dict, models: dict, seed: int) -> dict:
    """½-MSE of every model at inputs scaled by α (x ~ U(−α/2, α/2)); the GD step sizes stay those tuned at α = 1."""
    out: dict = {"alpha": [float(a) for a in s["ood_alphas"]], **{k: [] for k in models}}
    for i, alpha in enumerate(s["ood_alphas"]):
        p = sample(_task(s, alpha), s["ood_tasks"], s["n"], seed=seed, step=100 + i)
        for k, predictor in models.items():
            out[k].append(_loss(predictor, *_split(p)))
    return out


def max_eig_xxt(X: torch.Tensor) -> float:
    """The largest eigenvalue of ``XXᵀ = Σ_i x_i x_iᵀ`` over all tasks (the paper's App. A.10 table)."""
    return float(torch.linalg.eigvalsh(X.mT @ X).max())


def run(ctx: RunContext) -> dict:
    s = ctx.settings
    task = _task(s)
    tune = sample(task, s["tune_tasks"], s["n"], seed=ctx.seed, step=1)
    val = sample(task, s["eval_tasks"], s["n"], seed=ctx.seed, step=2)
    ctx.log("vonoswald2023: 1-layer LSA vs one GD step")
    one, curve, weights, gd, lsa1 = _one_layer(ctx, s, tune, val)
    one["max_eig_xxt"] = max_eig_xxt(val.X)
    deep, ood_models = [], {"LSA 1 layer": lsa1, "GD 1 step": gd}
    for spec in s["deep"]:
        ctx.log(f"vonoswald2023: {spec['layers']}-layer LSA vs GD and GD++")
        row, model, (gdk, gdpp) = _deep(ctx, s, spec, tune, val, gd.eta)
        deep.append(row)
        tag = f"{row['layers']}{' rec.' if row['shared'] else ''}"
        ood_models.update({f"LSA {tag}": model, f"GD {row['layers']} steps": gdk,
                           f"GD++ {row['layers']} steps": gdpp})
    ctx.log("vonoswald2023: out-of-distribution input scales")
    ood = _ood(s, ood_models, ctx.seed)
    return {"one_layer": one, "curve": curve, "weights": weights, "deep": deep, "ood": ood}


# ------------------------------------------------------------------------------------------------- report


def _fig_curves(report: Report) -> None:
    m = report.metrics
    c, a = m["curve"], m["curve"]["align"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(c["step"], c["eval_loss"], color="C3", label="trained LSA (1 layer)")
    axes[0].axhline(c["gd_loss"], color="0.3", ls="--", label="1 step of GD (line-searched)")
    axes[0].set(xlabel="training step", ylabel="held-out ½-MSE", yscale="log", title="loss")
    axes[0].legend(fontsize=8)
    axes[1].plot(a["step"], a["model_cos"], "o-", color="C0")
    axes[1].axhline(1.0, color="0.6", lw=0.8)
    axes[1].set(xlabel="training step", ylabel="model cos (LSA vs GD)", title="model cos")
    axes[2].plot(a["step"], a["preds_diff"], "o-", color="C2")
    axes[2].set(xlabel="training step", ylabel="preds diff (LSA vs GD)", yscale="log", title="preds diff")
    report.figure(fig, "one_layer_training", "1-layer LSA during training: held-out loss against one line-searched "
                  "GD step, and the alignment metrics (model cos, preds diff) on held-out tasks.")


def _fig_weights(report: Report) -> None:
    w = report.metrics["weights"]
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 7.5))
    for row, key, label in ((0, "W_KQ", r"$W_K^\top W_Q$ / β"), (1, "W_PV", r"β · $P W_V$")):
        v = max(float(np.abs(np.asarray(w[key])).max()), float(np.abs(np.asarray(w[key + "_constructed"])).max()))
        heatmap(axes[row, 0], w[key], f"trained LSA: {label}", v)
        heatmap(axes[row, 1], w[key + "_constructed"], f"construction (Prop. 1): {label}", v)
    report.figure(fig, "weights", "Weights of the trained 1-layer LSA (left) beside the GD construction with the "
                  "line-searched η (right), both rescaled by β = mean diagonal of the x-block of W_KQ (the layer "
                  "is invariant under W_KQ/β, β·W_PV). Tokens are (x₁…x_d, y).")


def _fig_deep(report: Report) -> None:
    deep = report.metrics["deep"]
    if not deep:
        return
    fig, axes = plt.subplots(1, len(deep), figsize=(5.2 * len(deep), 3.6), squeeze=False)
    for ax, row in zip(axes[0], deep):
        c = row["curve"]
        ax.plot(c["step"], c["eval_loss"], color="C3", label="trained LSA")
        ax.axhline(row["loss_gd"], color="0.3", ls="--", label=f"GD, {row['layers']} steps")
        ax.axhline(row["loss_gdpp"], color="C1", ls=":", label=f"GD++, {row['layers']} steps")
        kind = "recurrent" if row["shared"] else "non-recurrent"
        ax.set(xlabel="training step", ylabel="held-out ½-MSE", yscale="log",
               title=f"{row['layers']}-layer LSA ({kind})")
        ax.legend(fontsize=8)
    report.figure(fig, "multi_layer", "Multi-layer LSA during training against as many line-searched GD steps and "
                  "GD++ steps (η, γ tied over steps, grid-searched). Baselines are on the validation tasks, the LSA "
                  "curve on the trainer's held-out tasks (same distribution).")


def _fig_ood(report: Report) -> None:
    o = report.metrics["ood"]
    fig, ax = plt.subplots(figsize=(6.2, 4))
    for i, (k, v) in enumerate((k, v) for k, v in o.items() if k != "alpha"):
        style = "-" if k.startswith("LSA") else "--"
        ax.plot(o["alpha"], v, style, marker="o", ms=3, color=f"C{i}", label=k)
    ax.axvline(1.0, color="0.7", lw=0.8)
    ax.set(xlabel="input scale α (x ~ U(−α/2, α/2)); training at α = 1", ylabel="½-MSE", yscale="log",
           title="out-of-distribution inputs")
    ax.legend(fontsize=7)
    report.figure(fig, "ood_scaling", "Loss when the inputs are scaled by α at test time. GD keeps the step sizes "
                  "line-searched at α = 1, as the trained models keep their weights.")


def _ood_gap(o: dict, a: str, b: str) -> float:
    return max(abs(rel_gap(x, y)) for x, y in zip(o[a], o[b]))


def render(report: Report) -> None:
    m, s = report.metrics, report.settings
    one, deep, ood = m["one_layer"], m["deep"], m["ood"]
    report.text(
        "**What was run.** A 1-layer linear self-attention model (one head, the paper's tokens and read-out) trained "
        f"on fresh linear-regression tasks (d = {s['d']}, N = {s['n']} context points, x ~ U(−½, ½), "
        f"W ~ N(0, I), noiseless) for {s['steps']} steps of batch {s['batch']}; then "
        + ", ".join(f"a {r['layers']}-layer {'recurrent' if r['shared'] else 'non-recurrent'} LSA" for r in deep)
        + f" ({s['deep_steps']} steps of batch {s['deep_batch']}). Baselines are line-searched on "
        f"{s['tune_tasks']} separate tasks and everything is scored on {s['eval_tasks']} held-out tasks with the "
        "paper's code's loss ½‖ŷ − y‖²."
    )
    if report.meta.get("scale") != "paper":
        report.text(
            "**Reduced vs the paper** (to fit a 2-core CPU): the deep models train for "
            f"{s['deep_steps']} steps with batch {s['deep_batch']} (paper: 5000 recurrent / 50 000 non-recurrent "
            "steps, batch 2048), the non-recurrent model has 3 layers (paper: 5), GD++ uses one (η, γ) for all "
            f"steps (paper: per layer for non-recurrent models), the 1-layer run has {s['steps']} steps (paper 5000),"
            f" and the OOD curves use {s['ood_tasks']} tasks per point. d and N are the paper's."
        )
    ok_loss, ok_cos = abs(one["rel_gap"]) <= LOSS_TOL, one["model_cos"] >= COS_MIN
    report.claim(
        "A trained 1-layer LSA matches one step of GD (cpu target: loss within 3 % of GD, model cos ≥ 0.99)",
        verdict([ok_loss, ok_cos]),
        f"loss {one['loss_lsa']:.4f} vs GD {one['loss_gd']:.4f} ({100 * one['rel_gap']:+.2f} %, "
        f"{'within' if ok_loss else 'outside'} 3 %); model cos {one['model_cos']:.4f} "
        f"({'≥' if ok_cos else '<'} 0.99); preds diff {one['preds_diff']:.4f}.")
    ok_kq, ok_pv = one["kq_distance"] <= 0.1, one["pv_distance"] <= 0.1
    ok_eta = abs(rel_gap(one["eta_lsa"], one["eta_gd"])) <= 0.1
    report.claim(
        "The trained weights are the GD construction (Prop. 1) up to the scale invariance",
        verdict([ok_kq, ok_pv, ok_eta]),
        f"relative distance after rescaling: W_KQ {one['kq_distance']:.3f}, W_PV {one['pv_distance']:.3f} "
        f"(threshold 0.1); learned step η = {one['eta_lsa']:.3f} vs line-searched {one['eta_gd']:.3f}.")
    if deep:
        checks, parts = [], []
        for r in deep:
            beats = r["loss_lsa"] < r["loss_gd"]
            near = abs(rel_gap(r["loss_lsa"], r["loss_gdpp"])) <= 0.1 or r["loss_lsa"] <= r["loss_gdpp"]
            checks += [beats, near]
            parts.append(f"{r['layers']} layers{' (recurrent)' if r['shared'] else ''}: LSA {r['loss_lsa']:.4f}, "
                         f"GD {r['loss_gd']:.4f}, GD++ {r['loss_gdpp']:.4f}, model cos to GD++ "
                         f"{r['model_cos_gdpp']:.3f} (to GD {r['model_cos_gd']:.3f})")
        last = [r["curve"]["eval_loss"] for r in deep]
        falling = any(len(c) > 4 and c[-1] < 0.99 * c[len(c) * 3 // 4] for c in last)
        why = (f" The deep models trained {s['deep_steps']} steps (paper: 5000 recurrent, 50 000 non-recurrent) and "
               "their held-out loss was still falling at the end, so the gap to GD++ is at least partly "
               "under-training." if falling and not all(checks) else "")
        report.claim("Multi-layer LSA beats as many plain GD steps and matches GD++ (loss within 10 % or better)",
                     verdict(checks), "; ".join(parts) + "." + why)
    gap = _ood_gap(ood, "LSA 1 layer", "GD 1 step")
    report.claim(
        "Out of distribution (inputs scaled by α), the trained 1-layer LSA keeps tracking GD",
        "reproduced" if gap <= 0.1 else ("partly" if gap <= 0.3 else "not"),
        f"largest relative loss gap LSA vs GD over α ∈ [{min(ood['alpha'])}, {max(ood['alpha'])}]: "
        f"{100 * gap:.1f} % (reproduced ≤ 10 %, partly ≤ 30 %); both degrade together as α grows.")

    report.paper_vs_ours("gd1_loss", one["loss_gd"], "line-searched on our tune tasks, scored on our held-out tasks")
    report.paper_vs_ours("lsa1_loss", one["loss_lsa"])
    report.paper_vs_ours("model_cos_1layer", one["model_cos"])
    report.paper_vs_ours("preds_diff_1layer", one["preds_diff"])
    report.paper_vs_ours("max_eig_xxt_n10", one["max_eig_xxt"], f"max over our {s['eval_tasks']} held-out tasks")
    rec = [r for r in deep if r["shared"] and r["layers"] == 2]
    if rec:
        report.paper_vs_ours("gamma_recurrent2_n10", rec[0]["gamma_lsa"] / s["n"],
                             "γ of our trained recurrent 2-layer LSA (x-block of β·P W_V), in the paper's "
                             f"un-normalised convention (icgd γ / N); grid-searched GD++ γ/N: "
                             f"{rec[0]['gamma_gdpp'] / s['n']:.3f}")
    for alpha, key in ((0.5, "ood_gd_loss_alpha0.5"), (2.0, "ood_gd_loss_alpha2")):
        if alpha in ood["alpha"]:
            report.paper_vs_ours(key, ood["GD 1 step"][ood["alpha"].index(alpha)], "our GD 1 step at this α")

    report.heading("One layer: trained LSA vs one GD step")
    report.table(["quantity", "value"], [
        ["½-MSE trained LSA", one["loss_lsa"]], ["½-MSE one GD step (line-searched)", one["loss_gd"]],
        ["½-MSE GD construction (LSA weights of Prop. 1)", one["loss_construction"]],
        ["½-MSE predicting 0", one["loss_zero"]], ["relative gap LSA − GD", one["rel_gap"]],
        ["model cos", one["model_cos"]], ["model diff", one["model_diff"]], ["preds diff", one["preds_diff"]],
        ["η line-searched", one["eta_gd"]], ["η read off the trained weights", one["eta_lsa"]],
        ["β (mean diag of trained W_KQ x-block)", one["beta"]],
        ["‖W_KQ/β − construction‖ / ‖construction‖", one["kq_distance"]],
        ["‖β W_PV − construction‖ / ‖construction‖", one["pv_distance"]],
        ["training time (s)", one["train_seconds"]],
    ], "All on the held-out tasks. η in icgd's convention (the layer divides by N; the paper's P = η/N).")
    _fig_curves(report)
    _fig_weights(report)
    if deep:
        report.heading("Several layers: LSA vs GD and GD++")
        rows = [[f"{r['layers']}{' (recurrent)' if r['shared'] else ''}", r["loss_lsa"], r["loss_gd"],
                 r["loss_gdpp"], r["model_cos_gd"], r["model_cos_gdpp"], r["preds_diff_gd"], r["preds_diff_gdpp"],
                 r["eta_gdpp"], r["gamma_gdpp"], r.get("gamma_lsa", "—"), r["train_seconds"]] for r in deep]
        report.table(["layers", "LSA loss", "GD loss", "GD++ loss", "cos GD", "cos GD++", "preds diff GD",
                      "preds diff GD++", "GD++ η", "GD++ γ", "LSA γ", "train s"], rows,
                     "γ in icgd's normalised convention (paper's γ × N). LSA γ: read off the trained recurrent "
                     "layer (−x-block of β·P W_V).")
        _fig_deep(report)
    report.heading("Out-of-distribution input scaling")
    keys = [k for k in ood if k != "alpha"]
    report.table(["α", *keys], [[a, *(ood[k][i] for k in keys)] for i, a in enumerate(ood["alpha"])],
                 "½-MSE at inputs x ~ U(−α/2, α/2).")
    _fig_ood(report)
