"""Section 2: the cost of the constructed deep-GD transformer (Wu et al.) against autograd GD on the same prompt, and
how its forward time and memory grow with the prompt size n, the GD steps, the network width and the fit knots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import chain

import torch

import icgd.layers.heads as heads_mod
from icgd.bench import estimator as estimator_bench
from icgd.bench.common import Stats, interleaved, loglog_slope, paired_ratio, peak_tensor_bytes
from icgd.constructions import deep_gd
from icgd.layers import EWML, MLP
from icgd.learners import gd_trajectory
from icgd.nets import NetSpec, forward, init_weights

SWEPT = ("n", "steps", "width", "knots")

# The figures of the previous benchmarks/RESULTS.md (2026-11-23, before the fused head banks), shown beside the new
# ones: the base point's median ratio and times, each sweep row's median ratio, and the fitted time exponents.
PREVIOUS = {
    "date": "2026-11-23",
    "base": {"tf": 34.6e-3, "gd": 5.8e-3, "ratio": 5.97},
    "ratios": {"n": {25: 5.4, 50: 6.3, 100: 5.7, 200: 9.1, 400: 15.0}, "steps": {5: 5.8, 10: 6.0, 20: 6.6, 40: 6.1},
               "width": {4: 4.8, 8: 5.9, 16: 9.5, 32: 16.2}, "knots": {16: 5.8, 32: 6.5, 64: 6.1, 128: 6.8, 256: 6.7}},
    "time_slopes": {"n": 0.36, "steps": 1.11, "width": 0.57, "knots": 0.23},
}


@dataclass(frozen=True)
class Point:
    """One construction: Wu's N-layer network of width K on d-dimensional inputs, n context points."""

    depth: int = 3
    width: int = 8
    d: int = 3
    n: int = 50
    steps: int = 10
    knots: int = 64

    def label(self) -> str:
        return f"N={self.depth}, K={self.width}, d={self.d}, n={self.n}, steps={self.steps}, knots={self.knots}"


@dataclass(frozen=True)
class ConstructionBenchConfig:
    base: Point = Point()
    rounds: int = 20  # interleaved rounds at the base point
    sweep_repeats: int = 5
    sweeps: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "n": (25, 50, 100, 200, 400), "steps": (5, 10, 20, 40), "width": (4, 8, 16, 32),
        "knots": (16, 32, 64, 128, 256)})
    seed: int = 0
    eta: float = 2.0
    box: float = 1.0
    estimator_repeats: int = 5  # rounds of the scikit-learn estimator's fit + predict (0: skip it)


@dataclass
class SweepPoint:
    value: int
    time: Stats  # seconds per constructed forward pass
    autograd: Stats  # seconds per autograd GD run
    memory: int  # peak bytes during the forward pass
    weights: int  # bytes of the constructed model's parameters and buffers


@dataclass
class ConstructionResult:
    config: ConstructionBenchConfig
    base_tf: Stats
    base_gd: Stats
    ratio: Stats
    per_head: Stats  # the same forward pass with every ReLU head evaluated one by one (no sector form)
    per_head_ratio: Stats
    error: float  # max |w_tf − w_gd| at the last step
    layers: int
    flops: tuple[int, int]  # nominal FLOPs per GD step: construction, autograd
    sweeps: dict[str, list[SweepPoint]]
    time_slopes: dict[str, float]
    memory_slopes: dict[str, float]
    autograd_slopes: dict[str, float]  # fitted time exponents of autograd GD over the same sweeps
    estimator: estimator_bench.EstimatorResult | None = None


def layer_flops(layer: torch.nn.Module, T: int) -> int:
    """Nominal FLOPs of one layer of the construction on T tokens, counting what the implementation computes."""
    if isinstance(layer, MLP):
        return 2 * T * layer.num_params()  # one multiply-add per stored (nonzero) weight
    hb = layer.heads
    G, H, nb = hb.alpha.shape
    rows = 2 * 2 * T * G * hb.q.rows  # query and key rows (one coordinate each)
    values = 2 * T * G * hb.v.src.shape[1]
    if isinstance(layer, EWML):
        return rows + T * G * (2 * nb) + values
    return rows + T * G * H * (2 * nb + 3) + 2 * values  # scores, relu, weighted sum; value reads and weighting


def step_flops(model, point: Point) -> tuple[int, int]:
    """Nominal FLOPs of one GD step: the construction's block of layers, and autograd (forward + backward of the
    dense network on n points, ≈ 6·n·D_w)."""
    spec = NetSpec(point.d, point.width, point.depth, point.d)
    block = model.layers[: model.block_size]
    return sum(layer_flops(layer, point.n) for layer in block), 6 * point.n * spec.num_params


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the parameters and buffers (sparse tensors by their stored values and indices)."""
    total = 0
    for t in chain(model.parameters(), model.buffers()):
        if t.is_sparse:
            total += t._values().nbytes + t._indices().nbytes
        elif t.layout == torch.strided:
            total += t.untyped_storage().nbytes()
    return total


def runners(point: Point, cfg: ConstructionBenchConfig, device: torch.device
            ) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor], torch.nn.Module]:
    """The constructed forward pass and autograd GD on one seeded prompt (float64, as in the exactness tests)."""
    spec = NetSpec(point.d, point.width, point.depth, point.d)
    g = torch.Generator().manual_seed(cfg.seed)
    X = torch.randn(1, point.n, point.d, generator=g, dtype=torch.float64)
    Y = forward(spec, init_weights(spec, 1, generator=g, scale=2.0), X)
    w0 = init_weights(spec, 1, generator=g).clamp(-cfg.box, cfg.box)
    X, Y, w0 = X.to(device), Y.to(device), w0.to(device)
    model = deep_gd(spec, eta=cfg.eta, steps=point.steps, box=cfg.box, knots=point.knots,
                    x_bound=float(X.abs().max())).to(device)

    def construction() -> torch.Tensor:
        with torch.inference_mode():
            return model.trace(X, Y, w0)

    def autograd() -> torch.Tensor:
        return gd_trajectory(spec, X, Y, w0, cfg.eta, point.steps, box=cfg.box)

    return construction, autograd, model


def per_head(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`fn` with the sector form of the ReLU head sums switched off: every head evaluated one by one."""
    def run() -> torch.Tensor:
        saved = heads_mod.SECTOR_MIN_HEADS
        heads_mod.SECTOR_MIN_HEADS = 1 << 62
        try:
            return fn()
        finally:
            heads_mod.SECTOR_MIN_HEADS = saved
    return run


def measure_point(point: Point, cfg: ConstructionBenchConfig, device: torch.device, rounds: int) -> SweepPoint:
    tf, gd, model = runners(point, cfg, device)
    times = interleaved({"tf": tf, "gd": gd}, rounds, device)
    return SweepPoint(0, Stats.of(times["tf"]), Stats.of(times["gd"]), peak_tensor_bytes(tf, device),
                      model_bytes(model))


def run(cfg: ConstructionBenchConfig, device: torch.device, log: Callable[[str], None] = print) -> ConstructionResult:
    log(f"[construction] {cfg.base.label()}: {cfg.rounds} rounds")
    tf, gd, model = runners(cfg.base, cfg, device)
    error = float((tf() - gd())[:, -1].abs().max())
    times = interleaved({"tf": tf, "gd": gd, "per_head": per_head(tf)}, cfg.rounds, device, warmup=2)
    sweeps: dict[str, list[SweepPoint]] = {}
    for name in SWEPT:
        values = cfg.sweeps.get(name, ())
        if not values:
            continue
        log(f"[construction] sweep {name}: {', '.join(map(str, values))}")
        sweeps[name] = []
        for v in values:
            p = measure_point(replace(cfg.base, **{name: v}), cfg, device, cfg.sweep_repeats)
            p.value = v
            sweeps[name].append(p)
    time_slopes = {k: loglog_slope([p.value for p in ps], [p.time.min for p in ps])  # the least disturbed run
                   for k, ps in sweeps.items() if len(ps) > 1}
    memory_slopes = {k: loglog_slope([p.value for p in ps], [max(p.memory, 1) for p in ps])
                     for k, ps in sweeps.items() if len(ps) > 1}
    autograd_slopes = {k: loglog_slope([p.value for p in ps], [p.autograd.min for p in ps])
                       for k, ps in sweeps.items() if len(ps) > 1}
    est = None
    if cfg.estimator_repeats and device.type == "cpu":
        log(f"[construction] scikit-learn estimator: {cfg.estimator_repeats} rounds")
        est = estimator_bench.run(cfg.estimator_repeats, torch.get_num_threads())
    return ConstructionResult(cfg, Stats.of(times["tf"]), Stats.of(times["gd"]),
                              paired_ratio(times["tf"], times["gd"]), Stats.of(times["per_head"]),
                              paired_ratio(times["per_head"], times["gd"]), error, len(model.layers),
                              step_flops(model, cfg.base), sweeps,
                              time_slopes, memory_slopes, autograd_slopes, est)
