"""Section 3: the batched reference learners of :mod:`icgd.learners` on many prompts at once against a Python loop
that calls the same learner on one prompt at a time, and Wu et al.'s direct-training baseline vectorised across
prompts against one prompt at a time. Both sides give the same numbers (the table shows the largest difference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from icgd.bench.common import Stats, interleaved
from icgd.learners import (GD, KNN, SGD, Averaging, DirectTraining, GDPlusPlus, KernelRegression, Lasso, Learner,
                           LeastSquares, Newton, Ridge)

MODES = ("predict", "prefix")


@dataclass(frozen=True)
class LearnersBenchConfig:
    """B prompts of n pairs in d dimensions (float64); the direct baseline on fewer prompts (it trains one network
    per prompt, or per prefix in ``prefix`` mode)."""

    B: int = 1280
    d: int = 20
    n: int = 40
    repeats: int = 3
    loop_prompts: int = 256  # prompts timed in the per-prompt loop (0: all), the time scaled to B
    direct_depth: int = 3
    direct_width: int = 200
    direct_epochs: int = 100
    direct_B: int = 128  # prompts for the direct baseline, predict mode
    direct_prefix_B: int = 8  # prompts for the direct baseline, prefix mode (n − 1 networks each)
    direct_loop_prompts: int = 16
    direct_repeats: int = 1
    only: tuple[str, ...] = ()  # learner names to run (prefixes); empty: all
    seed: int = 0


@dataclass
class LearnerRow:
    name: str
    mode: str
    prompts: int
    loop_prompts: int
    batched: Stats  # seconds for all `prompts`
    loop: Stats  # seconds for all `prompts` (scaled when loop_prompts < prompts)
    ratio: Stats
    diff: float
    scale: float


@dataclass
class LearnersResult:
    config: LearnersBenchConfig
    rows: list[LearnerRow]


def learners(cfg: LearnersBenchConfig) -> dict[str, Learner]:
    """One representative configuration per baseline; η and γ keep GD and GD++ stable on every prefix of
    x ~ N(0, I) (a one-pair prefix has curvature ‖x‖² ≈ d)."""
    return {
        "ols": LeastSquares(),
        "ridge": Ridge(0.1),
        "lasso": Lasso(0.1, iters=500),
        "gd (10 steps)": GD(0.04, steps=10),
        "gdpp (10 steps)": GDPlusPlus(0.04, 0.01, steps=10),
        "newton (20 steps)": Newton(20),
        "sgd (window 1)": SGD(0.01, window=1),
        "knn (k=3, distance)": KNN(3, "distance"),
        "averaging": Averaging(),
        "kernel (rbf, λ=0.1)": KernelRegression("rbf", bandwidth=cfg.d ** 0.5, lam=0.1),
        "direct": DirectTraining(cfg.direct_depth, width=cfg.direct_width, epochs=cfg.direct_epochs),
    }


def prompts(cfg: LearnersBenchConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    X = torch.randn(cfg.B, cfg.n, cfg.d, generator=g, dtype=torch.float64)
    w = torch.randn(cfg.B, cfg.d, 1, generator=g, dtype=torch.float64)
    Y = X @ w + 0.1 * torch.randn(cfg.B, cfg.n, 1, generator=g, dtype=torch.float64)
    q = torch.randn(cfg.B, 1, cfg.d, generator=g, dtype=torch.float64)
    return X.to(device), Y.to(device), q.to(device)


def bench_one(learner: Learner, mode: str, X, Y, q, loop_B: int, repeats: int, device: torch.device
              ) -> tuple[Stats, Stats, Stats, float, float]:
    """Batched and loop times (the loop's scaled to all of X's prompts), their ratio and the largest difference."""
    B = X.shape[0]
    out: dict[str, torch.Tensor] = {}

    def call(x, y, qq):
        return learner.predict(x, y, qq) if mode == "predict" else learner.prefix_predictions(x, y)

    def batched() -> None:
        out["batched"] = call(X, Y, q)

    def loop() -> None:
        out["loop"] = torch.stack([call(X[b], Y[b], q[b]) for b in range(loop_B)])

    call(X[:2], Y[:2], q[:2])  # warm-up (lazy initialisation, kernels)
    times = interleaved({"batched": batched, "loop": loop}, repeats, device, warmup=0)
    tb, tl = times["batched"], [t * B / loop_B for t in times["loop"]]
    diff = float((out["batched"][:loop_B] - out["loop"]).abs().max())
    scale = float(out["batched"][:loop_B].abs().max())
    return Stats.of(tb), Stats.of(tl), Stats.of([a / b for a, b in zip(tl, tb)]), diff, scale


def run(cfg: LearnersBenchConfig, device: torch.device, log: Callable[[str], None] = print) -> LearnersResult:
    X, Y, q = prompts(cfg, device)
    rows = []
    for name, learner in learners(cfg).items():
        if cfg.only and not any(name.startswith(o) for o in cfg.only):
            continue
        direct = isinstance(learner, DirectTraining)
        for mode in MODES:
            B = cfg.B
            if direct:
                B = min(cfg.direct_B if mode == "predict" else cfg.direct_prefix_B, cfg.B)
            loop_B = cfg.direct_loop_prompts if direct else cfg.loop_prompts
            loop_B = B if loop_B <= 0 else min(loop_B, B)
            log(f"[learners] {name} {mode}: {B} prompts")
            tb, tl, ratio, diff, scale = bench_one(learner, mode, X[:B], Y[:B], q[:B], loop_B,
                                                   cfg.direct_repeats if direct else cfg.repeats, device)
            rows.append(LearnerRow(name, mode, B, loop_B, tb, tl, ratio, diff, scale))
    return LearnersResult(cfg, rows)
