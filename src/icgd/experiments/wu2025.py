"""Wu et al. (ICML 2025), §5 and App. F: ReLU- and softmax-attention transformers meta-trained on N-layer network
teachers, against training the network directly on the prompt, ridge regression, and the explicit construction.

What is measured (all on the same seeded test prompts, R² over the batch at each number k of in-context examples,
:func:`icgd.analysis.r2_per_position`, with percentile-bootstrap intervals over prompts):

* the teacher, :data:`icgd.tasks.WU_DEEP_TEACHER` (tanh units with gain 2, so that a linear fit loses clearly
  to a deep network trained on the prompt; see :class:`WuSettings` and the report for the measured gap);
* the trained ICLTransformers (ReLU and softmax attention, task ``wu_network``), on prompts longer than in training
  (the learned position table is extended with freshly initialised, never-trained rows: what GPT-2's unused
  positions hold in Garg et al.'s code), under the input mixtures :data:`icgd.tasks.TEST_MIXTURES` and the
  teacher-parameter shifts :data:`icgd.tasks.PARAM_SHIFTS` (applied with the ``mean_field`` rule, which keeps the
  labels on the training scale);
* Wu's direct-training baseline (:class:`icgd.learners.DirectTraining`: a network of the teacher's depth and width
  200 trained on each prompt's k pairs, best R² over epochs as in the paper, and the last epoch's), and ridge,
  least squares and k-NN;
* the explicit construction :func:`icgd.constructions.deep_gd` (Theorem 1): a (2N+4)L-layer ReLU-attention/EWML
  transformer that runs L GD steps on a small tanh student network in its forward pass, with fit intervals taken
  from the prompt's inputs and the box only, cross-checked against :func:`icgd.learners.gd_trajectory` (autograd);
* the depth study (Fig. 7): R² against the number of transformer blocks, with intervals.

Settings are one frozen :class:`WuSettings` per scale (:data:`SETTINGS`); the report is written by
:mod:`icgd.experiments.wu2025_report`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass

import torch

from icgd.analysis import bootstrap_ci, r2_from_sums, r2_per_position
from icgd.constructions import deep_gd, fit_ranges_from_box, fit_ranges_from_data
from icgd.errors import ConfigError
from icgd.experiments import settings as settings_io
from icgd.experiments.reproduce import RunContext
from icgd.learners import DirectTraining, gd_trajectory, make_learner
from icgd.models import ICLTransformer
from icgd.nets import NetSpec, forward, init_weights
from icgd.tasks import PARAM_SHIFTS, TEST_MIXTURES, WU_DEEP_TEACHER, Prompt, make_task

TITLE = "Wu et al. 2025: trained, constructed and directly trained networks on N-layer network teachers"


@dataclass(frozen=True)
class WuSettings:
    """Everything one scale of the reproduction depends on. Positions k count in-context examples (0-based
    prompt index of the query). ``SETTINGS[scale]``; ``icgd reproduce wu2025 --set key=value`` overrides a field."""

    d: int  # input dimension (the paper: 20)
    n_points: int  # pairs per training prompt (the paper: 51)
    n_test: int  # pairs per test prompt, longer than in training (the paper: 76)
    # teacher (icgd.tasks.WuNetwork); the paper leaves width, activation and scaling open
    teacher_depth: int = WU_DEEP_TEACHER["depth"]
    teacher_width: int = WU_DEEP_TEACHER["width"]
    teacher_activation: str = WU_DEEP_TEACHER["activation"]
    teacher_gain: float = WU_DEEP_TEACHER["gain"]
    shift_rule: str = WU_DEEP_TEACHER["shift_rule"]
    # trained transformers
    attentions: tuple[str, ...] = ("relu", "softmax")
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    steps: int = 2000
    lr: float = 1e-3
    warmup: int = 100
    batch_size: int = 64
    checks: int = 10  # held-out loss looked at this many times during training
    stop_tol: float = 0.005  # stop once 3 successive checks improved the held-out loss by less than this fraction
    depth_attention: str = "softmax"  # the depth study trains this attention at every depth in depth_layers
    depth_layers: tuple[int, ...] = (1, 2, 4)
    depth_examples: int = 15
    # evaluation
    eval_prompts: int = 512
    n_boot: int = 200
    plateau_from: int = 10  # headline plateau: mean R² over k = plateau_from … plateau_to
    plateau_to: int = 30
    baselines: tuple[str, ...] = ("ridge", "ols", "knn")
    # Wu's direct-training baseline
    direct_width: int = 200
    direct_epochs: int = 100
    direct_lr: float = 3e-3
    direct_activation: str = "tanh"
    direct_prompts: int = 24
    direct_positions: tuple[int, ...] = (5, 10, 15, 20, 25, 30, 40)
    ood_positions: tuple[int, ...] = (15, 25)
    # the construction (Theorem 1)
    con_width: int = 8
    con_depth: int = 4
    con_activation: str = "tanh"
    con_box: float = 1.0
    con_steps: int = 20
    con_knots: int = 128
    con_knots_sweep: tuple[int, ...] = (128, 256, 512, 1024)
    con_etas: tuple[float, ...] = (0.1, 0.3, 1.0, 2.0)
    con_prompts: int = 64
    con_positions: tuple[int, ...] = (1, 2, 5, 10, 15, 20, 30, 45)

    def __post_init__(self) -> None:
        for name in ("direct_positions", "ood_positions", "con_positions", "depth_layers", "attentions",
                     "baselines", "con_knots_sweep", "con_etas"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        top = max(self.direct_positions + self.con_positions + self.ood_positions + (self.depth_examples,))
        if top >= self.n_test:
            raise ConfigError(f"wu2025: every position must be below n_test={self.n_test}, got {top}")
        if not 0 <= self.plateau_from <= self.plateau_to < self.n_points:
            raise ConfigError(f"wu2025: need 0 ≤ plateau_from ≤ plateau_to < n_points={self.n_points}, got "
                              f"{self.plateau_from}, {self.plateau_to}")
        if self.depth_attention not in self.attentions or self.n_layer not in self.depth_layers:
            raise ConfigError(f"wu2025: depth_attention must be one of attentions {self.attentions} and n_layer="
                              f"{self.n_layer} one of depth_layers {self.depth_layers} (the main model is reused)")
        if "ridge" not in self.baselines:
            raise ConfigError("wu2025: baselines must include 'ridge' (the headline compares with it)")


SETTINGS: dict[str, WuSettings] = {
    "smoke": WuSettings(d=3, n_points=12, n_test=16, teacher_depth=3, n_layer=1, n_embd=32, n_head=2, steps=30,
                        lr=1e-3, warmup=5, checks=2, depth_layers=(1, 2), depth_examples=8, eval_prompts=64,
                        n_boot=50, plateau_from=4, plateau_to=11, direct_width=32, direct_epochs=20,
                        direct_prompts=16, direct_positions=(4, 11), ood_positions=(11,), con_width=3, con_depth=2,
                        con_steps=3, con_knots=32, con_knots_sweep=(32, 64), con_etas=(0.3, 1.0), con_prompts=32,
                        con_positions=(4, 11, 15)),
    "cpu": WuSettings(d=2, n_points=31, n_test=46, n_layer=2, n_embd=64, n_head=4, steps=1000, lr=3e-3,
                      warmup=50, depth_layers=(1, 2, 3), con_knots=1024),
    "paper": WuSettings(d=20, n_points=51, n_test=76, n_layer=12, n_embd=256, n_head=8, steps=500000, lr=1e-4,
                        warmup=5000, checks=50, depth_layers=(4, 6, 8, 10, 12), eval_prompts=6400, n_boot=1000,
                        plateau_from=10, plateau_to=30, direct_prompts=640,
                        direct_positions=(5, 10, 15, 20, 25, 30, 40, 50, 60, 75), ood_positions=(15, 30, 45, 60, 75),
                        con_width=16, con_steps=50, con_knots=256, con_knots_sweep=(256, 512, 1024, 2048),
                        con_prompts=640, con_positions=(1, 2, 5, 10, 15, 20, 30, 45, 60, 75)),
}
SCALES = settings_io.as_scales(SETTINGS)  # the JSON form `icgd reproduce` works with

TEST_STEP = 1 << 41  # test prompts use step numbers that neither training (0 …) nor the trainer's eval (2^40) reach
TUNE_STEP = TEST_STEP + 1000  # the construction's η is tuned on other prompts


@dataclass(frozen=True)
class Setting:
    """One test distribution: input mixture (w₁, w₂) and teacher-parameter mean μ."""

    key: str
    label: str
    mixture: tuple[float, float] = (1.0, 0.0)
    mu: float = 0.0


def settings_list() -> list[Setting]:
    out = [Setting("in_dist", "in-distribution: N(−2, I), θ ~ N(0, I)")]
    out += [Setting(f"mix_{round(100 * a)}_{round(100 * b)}", f"mixture ({a:g}, {b:g})", (a, b))
            for a, b in TEST_MIXTURES if b > 0]
    out += [Setting(f"mu_{m:+g}".replace(".", "p"), f"parameters N({m:+g}, I)", mu=m) for m in PARAM_SHIFTS if m != 0]
    return out


# ------------------------------------------------------------------------------------------------ statistics


def _r2_resampled(t: torch.Tensor, dim: int) -> torch.Tensor:
    """R² per position and column of resampled ``(R, B, n, C + 1)`` [predictions…, target] → ``(R, n, C)``."""
    p, target = t[..., :-1], t[..., -1:]
    res = ((p - target) ** 2).sum(dim)
    tot = ((target - target.mean(dim, keepdim=True)) ** 2).sum(dim)
    return r2_from_sums(res, tot)


def r2_ci(pred: torch.Tensor, y: torch.Tensor, n_boot: int, gen: torch.Generator) -> tuple[list, list]:
    """95% percentile-bootstrap interval (over prompts) of the R² at every position; pred, y ``(B, n, 1)``."""
    pairs = torch.cat([pred, y], dim=-1).double()  # (B, n, 2)
    lo, hi = bootstrap_ci(pairs, lambda t, dim: _r2_resampled(t, dim).expand(-1, -1, 2), n_boot=n_boot,
                          generator=gen)
    return lo[..., 0].tolist(), hi[..., 0].tolist()


def plateau_ci(preds: list[torch.Tensor], y: torch.Tensor, k0: int, k1: int, n_boot: int, gen: torch.Generator,
               weights: tuple[float, ...] | None = None) -> tuple[float, float, float]:
    """Estimate and 95% bootstrap interval (prompts resampled jointly) of ``Σ_c weights[c] · mean_{k0 ≤ k ≤ k1}
    R²_c(k)`` for predictions ``preds[c] (B, n, 1)``; weights default to (1,) — e.g. (1, −1) for a paired
    difference between two learners on the same prompts."""
    w = torch.tensor(weights or (1.0,) * len(preds), dtype=torch.float64)
    cols = torch.cat([p.double() for p in preds] + [y.double()], dim=-1)[:, k0:k1 + 1]  # (B, m, C + 1)

    def stat(t: torch.Tensor, dim: int) -> torch.Tensor:
        value = (_r2_resampled(t, dim).mean(-2) * w).sum(-1)  # (R,)
        return value[:, None, None].expand(-1, *t.shape[-2:])

    lo, hi = bootstrap_ci(cols, stat, n_boot=n_boot, generator=gen)
    est = float((r2_per_position_cols(cols).mean(0) * w).sum())
    return est, float(lo[0, 0]), float(hi[0, 0])


def r2_per_position_cols(cols: torch.Tensor) -> torch.Tensor:
    """R² per position of every prediction column of ``(B, m, C + 1)`` → ``(m, C)``."""
    return _r2_resampled(cols[None], 1)[0]


def _curve(pred: torch.Tensor, y: torch.Tensor, n_boot: int, gen: torch.Generator) -> dict:
    lo, hi = r2_ci(pred, y, n_boot, gen)
    return {"r2": r2_per_position(pred.double(), y.double()).tolist(), "lo": lo, "hi": hi}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


# ------------------------------------------------------------------------------------------------ prompts


def make_test_task(s: WuSettings, setting: Setting):
    return make_task("wu_network", d=s.d, depth=s.teacher_depth, width=s.teacher_width,
                     activation=s.teacher_activation, gain=s.teacher_gain, shift_rule=s.shift_rule,
                     mixture=setting.mixture, mu=setting.mu)


def test_prompts(s: WuSettings, setting: Setting, index: int, seed: int, count: int | None = None,
                 step: int = TEST_STEP) -> Prompt:
    """The seeded test prompts of a setting (float64, n_test points each)."""
    return make_test_task(s, setting).sample(count or s.eval_prompts, s.n_test, seed=seed, step=step + index,
                                             dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ transformers


def train_config(s: WuSettings, attention: str, n_layer: int, device: str, seed: int):
    from icgd.train import build_config

    over = {"attention": attention, "d_in": s.d, "n_points": s.n_points, "n_layer": n_layer,
            "n_embd": s.n_embd, "n_head": s.n_head, "steps": s.steps, "lr": s.lr, "warmup": s.warmup,
            "batch_size": s.batch_size, "eval_prompts": min(256, s.eval_prompts),
            "log_every": max(1, s.steps // s.checks), "save_every": max(1, s.steps // s.checks), "baselines": [],
            "seed": seed, "device": device,
            "task_kwargs": {"depth": s.teacher_depth, "width": s.teacher_width, "activation": s.teacher_activation,
                            "gain": s.teacher_gain, "shift_rule": s.shift_rule}}
    return build_config(f"wu-nn-{attention}-cpu", None, [f"{k}={json.dumps(v)}" for k, v in over.items()])


def plateaued(losses: list[float], tol: float, window: int = 3) -> bool:
    """True when each of the last `window` held-out losses improved on the best before it by less than `tol`
    (relative)."""
    if len(losses) <= window:
        return False
    best = min(losses[:-window])
    return all(x > best * (1 - tol) for x in losses[-window:])


def train_model(ctx: RunContext, s: WuSettings, attention: str, n_layer: int) -> tuple[ICLTransformer, dict]:
    """Train in `s.checks` chunks under ``ctx.runs_dir`` and stop early on a plateau of the held-out loss; the
    model and its log."""
    from icgd.train import train

    cfg = train_config(s, attention, n_layer, ctx.device, ctx.seed)
    out = ctx.runs_dir / f"{attention}-L{n_layer}"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    ends = [round(s.steps * (i + 1) / s.checks) for i in range(s.checks)]
    trainer = train(cfg, out, steps=ends[0], progress=False)
    for end in ends[1:]:
        if plateaued([float(r["eval_loss"]) for r in trainer.metrics.read()], s.stop_tol):
            break
        trainer.run(end)
    seconds = time.perf_counter() - t0
    log = trainer.metrics.read()
    ctx.log(f"  {attention} attention, {n_layer} blocks: {log[-1]['step']} steps in {seconds:.0f} s, "
            f"eval loss {log[-1]['eval_loss']:.4g}")
    record = {"steps": [r["step"] for r in log], "train_loss": [float(r["train_loss"]) for r in log],
              "eval_loss": [float(r["eval_loss"]) for r in log], "seconds": float(seconds),
              "params": int(trainer.module.num_params()), "stopped_early": int(log[-1]["step"]) < s.steps}
    return trainer.module, record


def extend_positions(model: ICLTransformer, max_points: int, gen: torch.Generator) -> ICLTransformer:
    """A copy of `model` that accepts prompts of up to `max_points` points: trained weights everywhere, and the
    position rows the training never reached drawn fresh from GPT-2's N(0, 0.02²) (they would hold exactly that in
    a model built with the larger table, since unused rows get no gradient). ``models.py`` is left untouched."""
    cfg = model.to_dict()
    if max_points <= cfg["max_points"]:
        return model
    big = ICLTransformer(**{**cfg, "max_points": max_points}, generator=gen)
    state = model.state_dict()
    old = state["wpe.weight"]
    new = torch.randn(big.wpe.weight.shape, generator=gen, dtype=torch.float64) * 0.02
    new[: old.shape[0]] = old.double()
    state["wpe.weight"] = new.to(old.dtype)
    big.load_state_dict(state)
    return big.to(dtype=old.dtype, device=old.device).eval()


@torch.no_grad()
def transformer_predictions(model: ICLTransformer, p: Prompt, batch: int = 256) -> torch.Tensor:
    """Prefix predictions ``(B, n, 1)`` in float64."""
    w = model.read_in.weight
    out = [model(p.X[i:i + batch].to(w), p.Y[i:i + batch].to(w)).double().cpu() for i in range(0, len(p.X), batch)]
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ direct training


def _best_epoch_stat(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Best-over-epochs R² of resampled ``(R, P, E + 1)`` [epoch predictions…, target] → ``(R, E + 1)``."""
    pr, tg = t[..., :-1], t[..., -1:]
    res = ((pr - tg) ** 2).sum(dim)
    tot = ((tg - tg.mean(dim, keepdim=True)) ** 2).sum(dim)
    return r2_from_sums(res, tot).amax(-1, keepdim=True).expand(*res.shape[:-1], t.shape[-1])


def direct_scores(s: WuSettings, p: Prompt, positions: tuple[int, ...], gen: torch.Generator,
                  device: str = "cpu") -> dict:
    """Wu's baseline at each position k: one network per prompt trained on its first k pairs (on `device`), scored
    on pair k."""
    learner = DirectTraining(depth=s.teacher_depth, width=s.direct_width, epochs=s.direct_epochs, lr=s.direct_lr,
                             activation=s.direct_activation)
    X, Y = p.X[:s.direct_prompts].to(device), p.Y[:s.direct_prompts].to(device)
    out: dict = {"positions": list(positions), "best": [], "final": [], "lo": [], "hi": [], "best_epoch": []}
    for k in positions:
        preds = learner.epoch_predictions(X[:, :k], Y[:, :k], X[:, k:k + 1]).cpu()  # (E, P, 1, 1)
        target = Y[:, k:k + 1].cpu()
        scores = r2_per_position(preds, target)[:, 0]  # (E,)
        e = int(scores.argmax())
        # interval of the best-over-epochs R²: resample prompts, recompute every epoch's R², take the max
        pairs = torch.cat([preds[:, :, 0, 0].T, target[:, 0]], dim=-1)  # (P, E + 1)
        lo, hi = bootstrap_ci(pairs, _best_epoch_stat, n_boot=s.n_boot, generator=gen)
        for key, value in (("best", scores[e]), ("final", scores[-1]), ("best_epoch", e + 1), ("lo", lo[0]),
                           ("hi", hi[0])):
            out[key].append(float(value) if key != "best_epoch" else int(value))
    return out


# ------------------------------------------------------------------------------------------------ construction


def student_spec(s: WuSettings) -> NetSpec:
    """The network the construction trains in context: tanh hidden units (smooth, as Theorem 1 needs), linear
    output, the teacher's depth, small width."""
    return NetSpec(s.d, s.con_width, s.con_depth, 1, s.con_activation, False)


def student_init(s: WuSettings, seed: int) -> torch.Tensor:
    """One shared w⁰ (LeCun-normal, clipped to the box); the paper's w⁰ = 0 would keep all hidden units equal."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 77)
    return init_weights(student_spec(s), generator=g).clamp(-s.con_box, s.con_box)


def prompt_fit_ranges(s: WuSettings, X: torch.Tensor) -> list[float]:
    """Fit intervals from the prompts' inputs and the box alone (no labels, no GD trajectory): every weight stays
    in [−B, B], so |v₁ₖ·x| ≤ B‖x‖₁ and |vⱼₖ·p| ≤ B·Σ|p| ≤ B·K·max|r| for the hidden layers
    (:func:`icgd.constructions.fit_ranges_from_box` with the largest ‖x‖₁ / d as its per-coordinate bound)."""
    l1 = float(X.abs().sum(-1).max())
    return fit_ranges_from_box(student_spec(s), s.con_box, l1 / s.d)


def tune_eta(s: WuSettings, seed: int) -> tuple[float, list[float]]:
    """η of the in-context GD: the grid value with the best R² after L autograd steps at k = n_points − 1, on
    in-distribution prompts that are not the test prompts."""
    spec, w0 = student_spec(s), student_init(s, seed)
    p = test_prompts(s, settings_list()[0], 0, seed, count=s.con_prompts, step=TUNE_STEP)
    k = s.n_points - 1
    scores = []
    for eta in s.con_etas:
        traj = gd_trajectory(spec, p.X[:, :k], p.Y[:, :k], w0.expand(len(p.X), -1), eta, s.con_steps, box=s.con_box)
        r2 = float(r2_per_position(forward(spec, traj[:, -1], p.X[:, k:k + 1]), p.Y[:, k:k + 1])[0])
        scores.append(r2 if math.isfinite(r2) else -1e9)
    best = max(range(len(scores)), key=lambda i: scores[i])
    return float(s.con_etas[best]), scores


def _construct_at(s: WuSettings, p: Prompt, k: int, eta: float, w0: torch.Tensor, knots: int,
                  traj: torch.Tensor, leaky: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Predictions at pair k of the construction built with a-priori (or, `leaky`, trajectory) fit intervals."""
    spec = student_spec(s)
    xs = p.X[:, :k + 1]
    ranges = fit_ranges_from_data(spec, xs, traj) if leaky else prompt_fit_ranges(s, xs)
    model = deep_gd(spec, eta=eta, steps=s.con_steps, box=s.con_box, knots=knots, fit_range=ranges)
    t0 = time.perf_counter()
    with torch.inference_mode():
        pred = model.predict(p.X[:, :k], p.Y[:, :k], p.X[:, k:k + 1], w0)
    return pred, model, time.perf_counter() - t0


def construction_scores(s: WuSettings, p: Prompt, positions: tuple[int, ...], eta: float, seed: int) -> dict:
    """R² of the constructed transformer (L in-context GD steps, a-priori fit intervals) and of autograd GD at each
    position k, and their largest prediction difference."""
    spec = student_spec(s)
    sub = Prompt(p.X[:s.con_prompts], p.Y[:s.con_prompts], p.x_query, p.y_query)
    W0 = student_init(s, seed).expand(len(sub.X), -1)
    out: dict = {"positions": list(positions), "r2": [], "gd_r2": [], "max_abs_diff": [], "layers": 0,
                 "seconds": 0.0}
    for k in positions:
        traj = gd_trajectory(spec, sub.X[:, :k], sub.Y[:, :k], W0, eta, s.con_steps, box=s.con_box)
        pred, model, sec = _construct_at(s, sub, k, eta, W0, s.con_knots, traj)
        ref, target = forward(spec, traj[:, -1], sub.X[:, k:k + 1]), sub.Y[:, k:k + 1]
        out["r2"].append(float(r2_per_position(pred, target)[0]))
        out["gd_r2"].append(float(r2_per_position(ref, target)[0]))
        out["max_abs_diff"].append(float((pred - ref).abs().max()))
        out["layers"], out["seconds"] = len(model.summary()), out["seconds"] + sec
    return out


def construction_study(s: WuSettings, p: Prompt, eta: float, seed: int) -> dict:
    """At k = n_points − 1 on the in-distribution prompts: the (leaky) intervals read off the autograd trajectory
    at the sweep's smallest knot count, the knots sweep of the a-priori version, and R² after every in-context GD
    step read from the construction's tokens (at `con_knots`)."""
    spec, k = student_spec(s), s.n_points - 1
    sub = Prompt(p.X[:s.con_prompts], p.Y[:s.con_prompts], p.x_query, p.y_query)
    W0 = student_init(s, seed).expand(len(sub.X), -1)
    traj = gd_trajectory(spec, sub.X[:, :k], sub.Y[:, :k], W0, eta, s.con_steps, box=s.con_box)
    ref, target = forward(spec, traj[:, -1], sub.X[:, k:k + 1]), sub.Y[:, k:k + 1]

    def score(pred: torch.Tensor) -> dict:
        return {"max_abs_diff": float((pred - ref).abs().max()),
                "r2_diff": abs(float(r2_per_position(pred, target)[0] - r2_per_position(ref, target)[0]))}

    leaky, _, _ = _construct_at(s, sub, k, eta, W0, s.con_knots_sweep[0], traj, leaky=True)
    sweep = [score(_construct_at(s, sub, k, eta, W0, m, traj)[0]) for m in s.con_knots_sweep]
    _, model, _ = _construct_at(s, sub, k, eta, W0, s.con_knots, traj)
    with torch.inference_mode():
        ws = model.trace(sub.X[:, :k], sub.Y[:, :k], W0)
    r2_of = lambda W: float(r2_per_position(forward(spec, W, sub.X[:, k:k + 1]), target)[0])  # noqa: E731
    return {"position": k, "ranges_prior": prompt_fit_ranges(s, sub.X[:, :k + 1]),
            "ranges_trajectory": fit_ranges_from_data(spec, sub.X[:, :k + 1], traj),
            "trajectory_ranges": score(leaky), "knots": list(s.con_knots_sweep), "sweep": sweep,
            "trace": {"r2": [r2_of(ws[:, i]) for i in range(ws.shape[1])],
                      "gd_r2": [r2_of(traj[:, i]) for i in range(traj.shape[1])]}}


# ------------------------------------------------------------------------------------------------ run


def _setting_eval(s: WuSettings, models: dict, p: Prompt, gen: torch.Generator) -> tuple[dict, dict]:
    """Curves (R² per position with bands) of the transformers and baselines, and plateau estimates with
    intervals, including each transformer's paired difference to ridge."""
    preds = {name: transformer_predictions(model, p) for name, model in models.items()}
    preds.update({name: make_learner(name).prefix_predictions(p.X, p.Y) for name in s.baselines})
    preds["affine"] = affine_predictions(p)
    curves = {name: _curve(pred, p.Y, s.n_boot, gen) for name, pred in preds.items()}
    k0, k1 = s.plateau_from, s.plateau_to
    plateaus = {name: plateau_ci([preds[name]], p.Y, k0, k1, s.n_boot, gen) for name in preds}
    for name in models:
        plateaus[f"{name}_minus_ridge"] = plateau_ci([preds[name], preds["ridge"]], p.Y, k0, k1, s.n_boot, gen,
                                                     (1.0, -1.0))
    return curves, {name: list(v) for name, v in plateaus.items()}


def affine_predictions(p: Prompt) -> torch.Tensor:
    """Ridge on ``[x, 1]``: a linear fit with an intercept (the learners' ridge has none, and Wu's inputs sit
    around −2·1, where an intercept and the slope along 1 cannot be told apart)."""
    ones = torch.ones_like(p.X[..., :1])
    return make_learner("ridge").prefix_predictions(torch.cat([p.X, ones], -1), p.Y)


def _on_direct_prompts(s: WuSettings, preds_of, p: Prompt, positions: tuple[int, ...]) -> dict:
    """R² of each learner at the direct-training positions on the same (first direct_prompts) prompts."""
    P = s.direct_prompts
    sub = Prompt(p.X[:P], p.Y[:P], p.x_query[:P], p.y_query[:P])
    out = {}
    for name, fn in preds_of.items():
        r2 = r2_per_position(fn(sub), sub.Y)
        out[name] = [float(r2[k]) for k in positions]
    return out


def _train_all(ctx: RunContext, s: WuSettings, metrics: dict) -> tuple[dict, dict]:
    """The main models (one per attention at n_layer blocks) and the depth study's models, trained once each."""
    models, depth_models = {}, {}
    jobs = [(a, s.n_layer) for a in s.attentions]
    jobs += [(s.depth_attention, L) for L in s.depth_layers if L != s.n_layer]
    for attention, n_layer in jobs:
        model, record = train_model(ctx, s, attention, n_layer)
        model = extend_positions(model, s.n_test, ctx.generator(11 + n_layer))
        metrics["training"][f"{attention}_L{n_layer}"] = record
        if n_layer == s.n_layer:
            models[attention] = model
        if attention == s.depth_attention:
            depth_models[n_layer] = model
    return models, depth_models


def depth_study(s: WuSettings, depth_models: dict, p: Prompt, gen: torch.Generator) -> dict:
    """R² at depth_examples and the plateau, each with a 95% interval, for every depth (same test prompts)."""
    out: dict = {"attention": s.depth_attention, "n_layer": [], "examples": s.depth_examples, "at_k": [],
                 "plateau": []}
    for L in sorted(depth_models):
        pred = transformer_predictions(depth_models[L], p)
        k = s.depth_examples
        out["n_layer"].append(L)
        out["at_k"].append(list(plateau_ci([pred], p.Y, k, k, s.n_boot, gen)))
        out["plateau"].append(list(plateau_ci([pred], p.Y, s.plateau_from, s.plateau_to, s.n_boot, gen)))
    return out


def _label_stats(p: Prompt) -> dict:
    y = p.Y[:, :, 0]
    return {"mean": float(y.mean()), "std": float(y.std(0).mean()), "within_std": float(y.std(1).mean())}


def run(ctx: RunContext) -> dict:
    s = settings_io.load(WuSettings, ctx.settings)
    metrics: dict = {"training": {}, "settings_order": [st.key for st in settings_list()]}
    ctx.log("training the transformers")
    models, depth_models = _train_all(ctx, s, metrics)
    metrics["depth"] = depth_study(s, depth_models, test_prompts(s, settings_list()[0], 0, ctx.seed),
                                   ctx.generator(50))
    eta, eta_scores = tune_eta(s, ctx.seed)
    metrics["construction_setup"] = {"eta": eta, "eta_grid_r2": eta_scores, "num_params": student_spec(s).num_params}
    ctx.log(f"construction: η = {eta} (grid R² {[round(v, 3) for v in eta_scores]})")
    out = {key: {} for key in ("curves", "plateaus", "direct", "construction", "on_direct_prompts", "labels")}
    for i, setting in enumerate(settings_list()):
        ctx.log(f"evaluating {setting.key}")
        p, gen = test_prompts(s, setting, i, ctx.seed), ctx.generator(100 + i)
        out["curves"][setting.key], out["plateaus"][setting.key] = _setting_eval(s, models, p, gen)
        out["labels"][setting.key] = _label_stats(p)
        positions = s.direct_positions if setting.key == "in_dist" else s.ood_positions
        out["direct"][setting.key] = direct_scores(s, p, positions, gen, ctx.device)
        preds_of = {name: (lambda q, m=m: transformer_predictions(m, q)) for name, m in models.items()}
        preds_of["ridge"] = lambda q: make_learner("ridge").prefix_predictions(q.X, q.Y)
        preds_of["affine"] = affine_predictions
        out["on_direct_prompts"][setting.key] = _on_direct_prompts(s, preds_of, p, positions)
        con_pos = s.con_positions if setting.key == "in_dist" else s.ood_positions
        out["construction"][setting.key] = construction_scores(s, p, con_pos, eta, ctx.seed)
        if i == 0:
            metrics["construction_study"] = construction_study(s, p, eta, ctx.seed)
    metrics.update(out)
    metrics["headline"] = headline(s, metrics)
    return metrics


def plateau(curve: list[float], start: int, stop: int) -> float:
    """Mean R² over k = start … stop in-context examples (both included)."""
    return _mean(curve[start:stop + 1])


def _inside(s: WuSettings, positions: list[int], values: list[float]) -> list[float]:
    return [v for k, v in zip(positions, values) if s.plateau_from <= k <= s.plateau_to]


def headline(s: WuSettings, m: dict) -> dict:
    """The numbers the verdicts rest on (scalars only; ``_lo``/``_hi`` are 95% bootstrap intervals)."""
    h: dict = {}
    for key, plateaus in m["plateaus"].items():
        for name in list(s.attentions) + ["ridge", "affine"]:
            est, lo, hi = plateaus[name]
            h[f"{name}_{key}_plateau"], h[f"{name}_{key}_plateau_lo"], h[f"{name}_{key}_plateau_hi"] = est, lo, hi
        for name in s.attentions:
            est, lo, hi = plateaus[f"{name}_minus_ridge"]
            h[f"{name}_minus_ridge_{key}"], h[f"{name}_minus_ridge_{key}_lo"], h[f"{name}_minus_ridge_{key}_hi"] = \
                est, lo, hi
        d = m["direct"][key]
        h[f"direct_{key}"] = _mean(_inside(s, d["positions"], d["best"]))
        h[f"ridge_on_direct_prompts_{key}"] = _mean(_inside(s, d["positions"], m["on_direct_prompts"][key]["ridge"]))
    h["direct_in_dist_lo"] = _mean(_inside(s, m["direct"]["in_dist"]["positions"], m["direct"]["in_dist"]["lo"]))
    h["direct_in_dist_hi"] = _mean(_inside(s, m["direct"]["in_dist"]["positions"], m["direct"]["in_dist"]["hi"]))
    h["direct_minus_ridge_in_dist"] = h["direct_in_dist"] - h["ridge_in_dist_plateau"]
    h["direct_minus_affine_in_dist"] = h["direct_in_dist"] - h["affine_in_dist_plateau"]
    for name in s.attentions:
        c = m["curves"]["in_dist"][name]["r2"]
        h[f"{name}_beyond"] = plateau(c, s.n_points, s.n_test - 1)
        d, tf = m["direct"]["in_dist"], m["on_direct_prompts"]["in_dist"][name]
        gaps = [b - t for b, t in zip(_inside(s, d["positions"], d["best"]), _inside(s, d["positions"], tf))]
        h[f"{name}_gap_to_direct"] = max(gaps) if gaps else float("nan")
        h[f"{name}_mean_gap_to_direct"] = _mean(gaps)
    con = m["construction"]["in_dist"]
    h["construction_in_dist"] = _mean(_inside(s, con["positions"], con["r2"]))
    h["construction_gd_in_dist"] = _mean(_inside(s, con["positions"], con["gd_r2"]))
    h["construction_max_abs_diff"] = max(max(c["max_abs_diff"]) for c in m["construction"].values())
    h["construction_in_dist_max_abs_diff"] = max(con["max_abs_diff"])
    base = m["labels"]["in_dist"]["std"]  # relative to the larger of the setting's and the training label scale
    h["construction_max_rel_diff"] = max(max(c["max_abs_diff"]) / max(m["labels"][key]["std"], base, 1e-12)
                                         for key, c in m["construction"].items())
    return h


def render(report) -> None:
    """Write the report (see :mod:`icgd.experiments.wu2025_report`)."""
    from icgd.experiments.wu2025_report import render as _render

    _render(report)


def smoke_note(report) -> str:
    """What a smoke-scale run of this experiment actually ran (for the report's smoke banner)."""
    from icgd.experiments.wu2025_report import smoke_note as _note

    return _note(report)
