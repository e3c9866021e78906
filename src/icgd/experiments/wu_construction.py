"""Run Wu et al.'s construction on a random teacher-network task and compare it with autograd GD."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from icgd.constructions import deep_gd, fit_ranges_from_data
from icgd.constructions.wu import ConstructedICGD
from icgd.errors import SpecError
from icgd.learners import empirical_risk, gd_trajectory
from icgd.nets import NetSpec, forward, init_weights
from icgd.tasks import Prompt, network_regression


@dataclass(frozen=True)
class ConstructionConfig:
    depth: int = 3
    width: int = 8
    d_in: int = 3
    d_out: int = 3
    activation: str = "sigmoid"
    steps: int = 10
    eta: float = 2.0
    knots: int = 64
    box: float | None = 1.0
    n: int = 50
    m: int = 16  # held-out queries
    seed: int = 0
    device: str = "cpu"

    @property
    def spec(self) -> NetSpec:
        return NetSpec(self.d_in, self.width, self.depth, self.d_out, self.activation)


@dataclass
class ConstructionResult:
    config: ConstructionConfig
    rel_error: list[float]  # ‖w̄_l − w_l‖ / ‖w_L − w_0‖ per step l = 0 … L
    loss_tf: list[float]  # L_n(w̄_l), transformer trajectory
    loss_gd: list[float]  # L_n(w_l), autograd GD
    pred_tf: torch.Tensor  # (m, d_out) read out of the transformer
    pred_gd: torch.Tensor  # f(w_L, x_query)
    y_query: torch.Tensor
    pred_error: float  # max |pred_tf − pred_gd|
    summary: list[dict]
    fit_ranges: list[float]
    seconds_tf: float
    seconds_gd: float

    @property
    def final_error(self) -> float:
        return self.rel_error[-1]


def make_problem(cfg: ConstructionConfig) -> tuple[Prompt, torch.Tensor]:
    """The task and a seeded random w0 (clipped to the box)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt = network_regression(cfg.spec, cfg.n, cfg.m, generator=gen)
    w0 = init_weights(cfg.spec, 1, generator=gen)
    if cfg.box is not None:
        w0 = w0.clamp(-cfg.box, cfg.box)
    return prompt, w0


NO_BOX_MARGIN = 3.0  # without a box: intervals = this × the largest |pre-activation| of w⁰ on the prompt's inputs


def build(cfg: ConstructionConfig, prompt: Prompt, w0: torch.Tensor, knots: int | None = None) -> ConstructedICGD:
    """The construction for `cfg`, with fit intervals from the prompt's inputs, w⁰ and the box only (never from the
    GD trajectory it is then compared with): a priori from the box and the data's max |x|, or, without a box,
    :data:`NO_BOX_MARGIN` × the pre-activations of w⁰ (outside its intervals a fit continues linearly)."""
    knots = knots or cfg.knots
    xs = torch.cat([prompt.X, prompt.x_query], dim=1)
    if cfg.box is not None:
        model = deep_gd(cfg.spec, eta=cfg.eta, steps=cfg.steps, box=cfg.box, knots=knots,
                        x_bound=float(xs.abs().max()))
    else:
        model = deep_gd(cfg.spec, eta=cfg.eta, steps=cfg.steps, knots=knots,
                        fit_range=fit_ranges_from_data(cfg.spec, xs, w0.cpu(), margin=NO_BOX_MARGIN))
    return model.to(cfg.device)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def check_construction_config(cfg: ConstructionConfig, knots: int | None = None) -> None:
    """Everything that can be refused before any work: the box, eta, steps, knots and seed, and the memory and time
    of the run (:func:`icgd.memory.deep_run_memory`)."""
    from icgd._checks import positive_float, positive_int
    from icgd.memory import deep_run_memory

    if cfg.box is not None:
        positive_float(cfg.box, "box")
    positive_float(cfg.eta, "eta")
    positive_int(cfg.seed, "seed", minimum=0)
    k = positive_int(knots or cfg.knots, "knots", minimum=2)
    deep_run_memory(cfg.spec, knots=k, box=cfg.box, tokens=cfg.n + cfg.m, steps=positive_int(cfg.steps, "steps", 0),
                    what=f"deep_gd(width={cfg.width}, depth={cfg.depth}, knots={k}, steps={cfg.steps})"
                    ).check(cfg.device)


def run_construction(cfg: ConstructionConfig, knots: int | None = None) -> ConstructionResult:
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    check_construction_config(cfg, knots)
    spec, dev = cfg.spec, cfg.device
    prompt, w0 = make_problem(cfg)
    X, Y, xq = (t.to(dev) for t in (prompt.X, prompt.Y, prompt.x_query))
    w0 = w0.to(dev)
    ref, t_gd = _timed(lambda: gd_trajectory(spec, X, Y, w0, cfg.eta, cfg.steps, box=cfg.box))
    model = build(cfg, prompt, w0, knots)
    with torch.inference_mode():
        tr, t_tf = _timed(lambda: model.trace(X, Y, w0))
        pred_tf = model.predict(X, Y, xq, w0)
    pred_gd = forward(spec, ref[:, -1], xq)
    denom = (ref[:, -1] - ref[:, 0]).norm(dim=-1).clamp(min=1e-300)
    rel = ((tr - ref).norm(dim=-1) / denom[:, None]).amax(0)
    loss = lambda W: empirical_risk(spec, W[0], X.expand(W.shape[1], -1, -1), Y.expand(W.shape[1], -1, -1))
    return ConstructionResult(
        config=cfg, rel_error=rel.tolist(), loss_tf=loss(tr).tolist(), loss_gd=loss(ref).tolist(),
        pred_tf=pred_tf[0].cpu(), pred_gd=pred_gd[0].cpu(), y_query=prompt.y_query[0],
        pred_error=float((pred_tf - pred_gd).abs().max()), summary=model.summary(),
        fit_ranges=list(model.fit_ranges), seconds_tf=t_tf, seconds_gd=t_gd)


def knots_sweep(cfg: ConstructionConfig, knots: list[int]) -> tuple[list[float], float]:
    """Final relative error for each number of knots and the least-squares slope of log error vs log knots."""
    errors = [run_construction(cfg, k).final_error for k in knots]
    xs = [math.log(k) for k in knots]
    ys = [math.log(max(e, 1e-300)) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else float("nan")
    return errors, slope
