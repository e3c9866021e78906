"""von Oswald et al. (ICML 2023), "Transformers learn in-context by gradient descent": trained linear
self-attention (LSA) against one step of GD (loss, model cos, preds diff, weights vs the Prop. 1 construction),
multi-layer LSA against multi-step GD and GD++, and out-of-distribution input scaling.

Setup (the paper's, via the ``lsa-*`` training presets): tokens ``(x_i, y_i)``, query ``(x_q, 0)``, ``x ~ U(−½, ½)^d``
(the official code's ``input_range = 1``, which its published losses match), ``W ~ N(0, I)``, noiseless,
d = N = 10, loss ½‖ŷ − y‖² (the code's convention). The GD baselines are line-searched on separate tasks; every
number and curve of the report is scored on one set of held-out validation tasks (curves on its first
``track_tasks``), except the out-of-distribution study, which draws its own tasks at each input scale α.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from icgd.analysis import alignment_metrics, compare_lsa_weights
from icgd.constructions import linear_gd, von_oswald_weights
from icgd.experiments import settings as settings_io
from icgd.experiments.icl_common import half_mse, rel_gap, sample, to_list, train_run
from icgd.experiments import vonoswald2023_report as text
from icgd.experiments.report import Report
from icgd.experiments.reproduce import RunContext
from icgd.learners import GD, GDPlusPlus
from icgd.tasks import make_task

TITLE = "von Oswald et al. 2023: linear self-attention learns in context by gradient descent"


@dataclass(frozen=True)
class DeepSpec:
    """One multi-layer LSA: depth, recurrent (one layer applied `layers` times) or not, its training."""

    layers: int
    shared: bool
    steps: int
    lr: float
    batch: int = 2048
    warmup: int = 100


@dataclass(frozen=True)
class Settings:
    """One scale of the experiment (every field is reported; ``--set key=value`` overrides one)."""

    preset: str  # training preset of the 1-layer run (task, tokens, optimiser)
    steps: int  # 1-layer training
    batch: int
    lr: float
    chunks: int  # alignment measured after each of this many equal pieces of a run
    deep: tuple[DeepSpec, ...]
    eval_tasks: int  # held-out validation tasks: every number and curve of the report
    tune_tasks: int  # separate tasks for the GD / GD++ line searches
    ood_alphas: tuple[float, ...]
    ood_tasks: int
    trainer_eval: int  # the trainer's own held-out prompts (its logged curve)
    track_tasks: int = 2000  # the first this-many validation tasks score the chunk-wise curves
    gdpp_fit_steps: int = 300  # Adam steps fitting per-layer GD++ (η_l, γ_l) of non-recurrent models
    d: int = 10
    n: int = 10
    x_scale: float = 0.5


SETTINGS = {
    "smoke": Settings(preset="lsa-smoke", steps=150, batch=512, lr=1e-2, chunks=3,
                      deep=(DeepSpec(2, True, steps=60, lr=1e-2, batch=256, warmup=10),), eval_tasks=2000,
                      tune_tasks=1000, ood_alphas=(0.5, 1.0, 1.5, 2.0), ood_tasks=500, trainer_eval=1000,
                      track_tasks=1000, gdpp_fit_steps=20),
    "cpu": Settings(preset="lsa-cpu", steps=2000, batch=2048, lr=1e-3, chunks=10,
                    deep=(DeepSpec(2, True, steps=1500, lr=5e-3), DeepSpec(3, False, steps=3000, lr=5e-3)),
                    eval_tasks=10000, tune_tasks=4000, ood_alphas=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
                    ood_tasks=4000, trainer_eval=4096),
    "paper": Settings(preset="lsa-cpu", steps=5000, batch=2048, lr=1e-3, chunks=20,
                      deep=(DeepSpec(2, True, steps=5000, lr=1e-3, warmup=0),
                            DeepSpec(5, False, steps=50000, lr=5e-4, warmup=0)),
                      eval_tasks=10000, tune_tasks=10000, ood_alphas=tuple(round(0.5 + 0.1 * i, 2) for i in range(16)),
                      ood_tasks=10000, trainer_eval=10000, track_tasks=10000, gdpp_fit_steps=3000),
}
SCALES = settings_io.as_scales(SETTINGS)  # the JSON form `icgd reproduce` works with

# ------------------------------------------------------------------------------------------------- computation


def _task(s: Settings, alpha: float = 1.0):
    return make_task("linear", d=s.d, x_dist="uniform", x_scale=s.x_scale * alpha)


def _split(p):
    """(X, Y, x_query, y_query) of a prompt sample with one query."""
    return p.X, p.Y, p.x_query, p.y_query


def _head(p, k: int):
    """The first k tasks of a prompt sample as (X, Y, x_query, y_query)."""
    return p.X[:k], p.Y[:k], p.x_query[:k], p.y_query[:k]


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a trained model for evaluation (training goes on with the original)."""
    return copy.deepcopy(model).double().eval()


def _predict(predictor, X, Y, xq) -> torch.Tensor:
    with torch.no_grad():
        return getattr(predictor, "predict", predictor)(X, Y, xq)


def _loss(predictor, X, Y, xq, yq) -> float:
    return half_mse(_predict(predictor, X, Y, xq), yq)


def _task_losses(predictor, X, Y, xq, yq) -> torch.Tensor:
    return 0.5 * ((_predict(predictor, X, Y, xq) - yq) ** 2).sum(-1).mean(-1)


def paired_gap(a, b, X, Y, xq, yq) -> dict[str, float]:
    """``loss(a) − loss(b)`` on the same tasks with the standard error of the per-task differences."""
    diff = _task_losses(a, X, Y, xq, yq) - _task_losses(b, X, Y, xq, yq)
    return {"mean": float(diff.mean()), "se": float(diff.std() / math.sqrt(len(diff)))}


class LayerwiseGDPP:
    """GD++ with its own (η_t, γ_t) at every step (the paper's GD++ for non-recurrent models), the recursion of
    :class:`icgd.learners.GDPlusPlus` (icgd's normalised γ): ``W ← W + (η_t/n) AᵀA (b − S W)``,
    ``A ← (I − (γ_t/n) A S Aᵀ) A``, prediction ``x_qᵀ W``. Differentiable in η, γ and the query."""

    def __init__(self, etas, gammas):
        self.etas = torch.as_tensor(etas, dtype=torch.float64)
        self.gammas = torch.as_tensor(gammas, dtype=torch.float64)

    def predict(self, X, Y, xq) -> torch.Tensor:
        S, b = X.mT @ X, X.mT @ Y
        n = X.shape[1]
        eye = torch.eye(S.shape[-1], dtype=S.dtype)
        A, W = eye.expand_as(S), torch.zeros_like(b)
        for eta, gamma in zip(self.etas.to(S.dtype), self.gammas.to(S.dtype)):
            At = A.mT
            W = W + (eta / n) * (At @ A @ (b - S @ W))
            A = (eye - (gamma / n) * (A @ S @ At)) @ A
        return xq @ W


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


def fit_layerwise_gdpp(X, Y, xq, yq, tied: GDPlusPlus, steps: int) -> LayerwiseGDPP:
    """Per-step (η_t, γ_t) fitted by full-batch Adam on the given tasks from the tied grid optimum (as the paper fits
    GD++ for non-recurrent models: Adam on the step sizes)."""
    K = tied.steps
    log_eta = torch.full((K,), math.log(tied.eta), dtype=torch.float64, requires_grad=True)
    gamma = torch.full((K,), float(tied.gamma), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_eta, gamma], lr=0.01)
    for _ in range(steps):
        loss = 0.5 * ((LayerwiseGDPP(log_eta.exp(), gamma).predict(X, Y, xq) - yq) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return LayerwiseGDPP(log_eta.detach().exp(), gamma.detach())


def _overrides(s: Settings, steps: int, batch: int, lr: float, layers: int, shared: bool, warmup: int = 0) -> dict:
    """Training-config overrides of the ``lsa-*`` preset (which fixes the task, tokens, optimiser and schedule)."""
    return {"steps": steps, "batch_size": batch, "lr": lr, "warmup": warmup, "d_in": s.d, "n_points": s.n,
            "n_layer": layers, "shared": shared, "eval_prompts": s.trainer_eval, "log_every": max(10, steps // 25),
            "save_every": steps, "baselines": ["gd"]}


def _tracker(refs: dict, tasks) -> tuple[dict, callable]:
    """A chunk callback recording the model's loss and its preds diff to each reference on `tasks`."""
    X, Y, xq, yq = tasks
    preds = {k: _predict(r, X, Y, xq) for k, r in refs.items()}
    track: dict = {"step": [], "loss": [], **{f"preds_diff_{k}": [] for k in refs}}

    def on_chunk(trainer) -> None:
        pred = _predict(_frozen(trainer.module), X, Y, xq)
        track["step"].append(int(trainer.step))
        track["loss"].append(half_mse(pred, yq))
        for k, p in preds.items():
            track[f"preds_diff_{k}"].append(float((pred - p).norm(dim=-1).mean()))
    return track, on_chunk


def _one_layer(ctx: RunContext, s: Settings, tune, val) -> tuple[dict, dict, dict, GD, torch.nn.Module]:
    """Train the 1-layer LSA (alignment measured after every chunk) and compare it with one tuned GD step."""
    gd = GD.tune(*_split(tune), steps=1)
    Xv, Yv, qv, yv = _split(val)
    small = _head(val, s.track_tasks)
    track, on_chunk = _tracker({"gd": gd}, small)

    def on_chunk_cos(trainer) -> None:
        on_chunk(trainer)
        cos = alignment_metrics(_frozen(trainer.module), gd, *small[:3])["model_cos"]
        track.setdefault("model_cos", []).append(cos)

    cpu0 = time.process_time()
    run = train_run(ctx, "lsa-1", s.preset, _overrides(s, s.steps, s.batch, s.lr, 1, False),
                    chunks=s.chunks, on_chunk=on_chunk_cos)
    model = _frozen(run.model)
    align = alignment_metrics(model, gd, Xv, Yv, qv)
    cmp = compare_lsa_weights(model.weights(0), von_oswald_weights(s.d, eta=gd.eta), d_x=s.d)
    loss_lsa, loss_gd = _loss(model, Xv, Yv, qv, yv), _loss(gd, Xv, Yv, qv, yv)
    one = {
        "loss_lsa": loss_lsa, "loss_gd": loss_gd, "rel_gap": rel_gap(loss_lsa, loss_gd),
        "loss_construction": _loss(linear_gd(s.d, eta=gd.eta, steps=1), Xv, Yv, qv, yv),
        "loss_zero": half_mse(torch.zeros_like(yv), yv), "gd_loss_track_tasks": _loss(gd, *small),
        **align, "eta_gd": float(gd.eta), "eta_lsa": float(cmp["eta"]), "beta": float(cmp["beta"]),
        "kq_distance": float(cmp["kq_distance"]), "pv_distance": float(cmp["pv_distance"]),
        "train_seconds": run.seconds, "seconds_per_step": run.seconds / s.steps,
        "cpu_seconds_per_step": (time.process_time() - cpu0) / s.steps,
    }
    curve = {**run.curve(), "trainer_gd_loss": float(run.trainer.baselines["gd"]), "align": track}
    weights = {k: to_list(cmp[k], 5) for k in ("W_KQ", "W_PV", "W_KQ_constructed", "W_PV_constructed")}
    return one, curve, weights, gd, model


def _deep(ctx: RunContext, s: Settings, spec: DeepSpec, tune, val, eta1: float) -> tuple[dict, torch.nn.Module, list]:
    """A K-layer LSA (recurrent or not) against K tuned GD steps and K GD++ steps (tied η, γ for a recurrent model,
    per-layer for a non-recurrent one, as the paper compares them)."""
    K = spec.layers
    gdk = GD.tune(*_split(tune), steps=K)
    tied = tune_gd_plus_plus(*_split(tune), steps=K, eta_ref=eta1)
    gdpp = tied if spec.shared else fit_layerwise_gdpp(*_split(tune), tied, s.gdpp_fit_steps)
    track, on_chunk = _tracker({"gd": gdk, "gdpp": gdpp}, _head(val, s.track_tasks))
    name = f"lsa-{K}{'-recurrent' if spec.shared else ''}"
    cpu0 = time.process_time()
    run = train_run(ctx, name, s.preset, _overrides(s, spec.steps, spec.batch, spec.lr, K, spec.shared, spec.warmup),
                    chunks=s.chunks, on_chunk=on_chunk)
    model = _frozen(run.model)
    Xv, Yv, qv, yv = _split(val)
    a_gd, a_pp = alignment_metrics(model, gdk, Xv, Yv, qv), alignment_metrics(model, gdpp, Xv, Yv, qv)
    out = {
        "layers": K, "shared": spec.shared, "steps": spec.steps, "batch": spec.batch,
        "loss_lsa": _loss(model, Xv, Yv, qv, yv),
        "loss_gd": _loss(gdk, Xv, Yv, qv, yv), "loss_gdpp": _loss(gdpp, Xv, Yv, qv, yv),
        "loss_gdpp_tied": _loss(tied, Xv, Yv, qv, yv), "eta_gd": float(gdk.eta),
        "eta_gdpp": [float(v) for v in getattr(gdpp, "etas", [tied.eta] * K)],
        "gamma_gdpp": [float(v) for v in getattr(gdpp, "gammas", [tied.gamma] * K)],
        "model_cos_gd": a_gd["model_cos"], "model_cos_gdpp": a_pp["model_cos"],
        "preds_diff_gd": a_gd["preds_diff"], "preds_diff_gdpp": a_pp["preds_diff"],
        "beats_gd": paired_gap(model, gdk, Xv, Yv, qv, yv), "track": track, "curve": run.curve(),
        "train_seconds": run.seconds, "seconds_per_step": run.seconds / spec.steps,
        "cpu_seconds_per_step": (time.process_time() - cpu0) / spec.steps,
    }
    out["closer_to_gdpp"] = out["preds_diff_gdpp"] < out["preds_diff_gd"]
    out["steps_needed"] = None if out["closer_to_gdpp"] else steps_to_cross(track)
    if spec.shared:  # the γ of the trained recurrent layer: x-block of β·P W_V is −γ (icgd's normalised γ)
        cmp = compare_lsa_weights(model.weights(0), von_oswald_weights(s.d, eta=tied.eta, gamma=1.0), d_x=s.d)
        out["gamma_lsa"] = -float(torch.diagonal(cmp["W_PV"][:s.d, :s.d]).mean())
        out["eta_lsa"] = float(cmp["eta"])
    return out, model, [gdk, gdpp]


def steps_to_cross(track: dict) -> dict | None:
    """When would the model's preds diff to GD++ fall below its preds diff to GD? A straight line in log(step)
    fitted by least squares to the gap ``preds_diff_gdpp − preds_diff_gd`` over the last half of the chunk-wise
    curve, solved for gap = 0. None when the gap is not shrinking (no crossing can be predicted)."""
    steps = np.asarray(track["step"], dtype=float)
    gap = np.asarray(track["preds_diff_gdpp"]) - np.asarray(track["preds_diff_gd"])
    half = slice(len(steps) // 2, None)
    if len(steps[half]) < 3:
        return None
    slope, icpt = np.polyfit(np.log(steps[half]), gap[half], 1)
    if slope >= 0:
        return {"steps": None, "slope": float(slope), "points": int(len(steps[half]))}
    return {"steps": float(math.exp(-icpt / slope)), "slope": float(slope), "points": int(len(steps[half]))}


def _ood(s: Settings, models: dict, seed: int) -> dict:
    """½-MSE of every model at inputs scaled by α (x ~ U(−α/2, α/2)), on tasks drawn per α (not the validation
    tasks); the GD step sizes stay those tuned at α = 1. ``gaps``: paired loss gaps (with standard errors) of each
    deep LSA against its GD."""
    out: dict = {"alpha": [float(a) for a in s.ood_alphas], **{k: [] for k in models}, "gaps": {}}
    pairs = [(k, k.replace("LSA", "GD").split(" rec")[0] + " steps") for k in models
             if k.startswith("LSA") and "1 layer" not in k]
    for i, alpha in enumerate(s.ood_alphas):
        p = _split(sample(_task(s, alpha), s.ood_tasks, s.n, seed=seed, step=100 + i))
        for k, predictor in models.items():
            out[k].append(_loss(predictor, *p))
        for lsa, gd in pairs:
            out["gaps"].setdefault(lsa, []).append(paired_gap(models[lsa], models[gd], *p))
    return out


def max_eig_xxt(X: torch.Tensor) -> float:
    """The largest eigenvalue of ``XXᵀ = Σ_i x_i x_iᵀ`` over all tasks (the paper's App. A.10 table)."""
    return float(torch.linalg.eigvalsh(X.mT @ X).max())


def run(ctx: RunContext) -> dict:
    s = settings_io.load(Settings, ctx.settings)
    task = _task(s)
    tune = sample(task, s.tune_tasks, s.n, seed=ctx.seed, step=1)
    val = sample(task, s.eval_tasks, s.n, seed=ctx.seed, step=2)
    ctx.log("vonoswald2023: 1-layer LSA vs one GD step")
    one, curve, weights, gd, lsa1 = _one_layer(ctx, s, tune, val)
    one["max_eig_xxt"] = max_eig_xxt(val.X)
    deep, ood_models = [], {"LSA 1 layer": lsa1, "GD 1 step": gd}
    for spec in s.deep:
        ctx.log(f"vonoswald2023: {spec.layers}-layer LSA vs GD and GD++")
        row, model, (gdk, gdpp) = _deep(ctx, s, spec, tune, val, gd.eta)
        deep.append(row)
        tag = f"{row['layers']}{' rec.' if row['shared'] else ''}"
        ood_models.update({f"LSA {tag}": model, f"GD {row['layers']} steps": gdk,
                           f"GD++ {row['layers']} steps": gdpp})
    ctx.log("vonoswald2023: out-of-distribution input scales")
    ood = _ood(s, ood_models, ctx.seed)
    metrics = {"one_layer": one, "curve": curve, "weights": weights, "deep": deep, "ood": ood}
    metrics["headline"] = headline(metrics)
    return metrics


def headline(m: dict) -> dict:
    """The numbers the README's verdict table quotes."""
    one = m["one_layer"]
    out = {"lsa1_loss": one["loss_lsa"], "gd1_loss": one["loss_gd"], "lsa1_model_cos": one["model_cos"]}
    for r in m["deep"]:
        tag = f"lsa{r['layers']}{'_recurrent' if r['shared'] else ''}"
        out[f"{tag}_loss"] = r["loss_lsa"]
        out[f"{tag}_preds_diff_to_gdpp"] = r["preds_diff_gdpp"]
        out[f"{tag}_preds_diff_to_gd"] = r["preds_diff_gd"]
        out[f"{tag}_closer_to_gdpp"] = r["closer_to_gdpp"]
        gaps = m["ood"]["gaps"].get(_ood_key(r), [])
        if 1.0 in m["ood"]["alpha"] and gaps:
            out[f"{tag}_minus_gd_loss_ood_alpha1"] = gaps[m["ood"]["alpha"].index(1.0)]["mean"]
    if m["deep"]:
        deepest = max(m["deep"], key=lambda r: r["layers"])
        out["deepest_layers"] = deepest["layers"]
        out["deepest_preds_diff_to_gdpp"] = deepest["preds_diff_gdpp"]
        out["deepest_preds_diff_to_gd"] = deepest["preds_diff_gd"]
    return out


def _ood_key(r: dict) -> str:
    return f"LSA {r['layers']}{' rec.' if r['shared'] else ''}"


# ------------------------------------------------------------------------------------------------- report


def render(report: Report) -> None:
    """The report (text, verdicts, tables, figures) from a run's metrics; see :mod:`vonoswald2023_report`."""
    text.render(report, settings_io.load(Settings, report.settings), SETTINGS["paper"])


def what_was_run(settings: Settings, scale: str) -> str:
    """The "what was run" paragraph for `settings` at `scale`."""
    return text.what_was_run(settings, scale)
