"""Section 2: the cost of the constructed deep-GD transformer (Wu et al.) against autograd GD on the same prompt, and
how its forward time and memory grow with the prompt size n, the GD steps, the network width and the fit knots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import chain

import torch

from icgd.bench.common import Stats, interleaved, loglog_slope, paired_ratio, peak_tensor_bytes
from icgd.constructions import deep_gd
from icgd.layers import EWML, MLP
from icgd.learners import gd_trajectory
from icgd.nets import NetSpec, forward, init_weights

SWEPT = ("n", "steps", "width", "knots")


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
    error: float  # max |w_tf − w_gd| at the last step
    layers: int
    flops: tuple[int, int]  # nominal FLOPs per GD step: construction, autograd
    sweeps: dict[str, list[SweepPoint]]
    time_slopes: dict[str, float]
    memory_slopes: dict[str, float]


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


def measure_point(point: Point, cfg: ConstructionBenchConfig, device: torch.device, rounds: int) -> SweepPoint:
    tf, gd, model = runners(point, cfg, device)
    times = interleaved({"tf": tf, "gd": gd}, rounds, device)
    return SweepPoint(0, Stats.of(times["tf"]), Stats.of(times["gd"]), peak_tensor_bytes(tf, device),
                      model_bytes(model))


def run(cfg: ConstructionBenchConfig, device: torch.device, log: Callable[[str], None] = print) -> ConstructionResult:
    log(f"[construction] {cfg.base.label()}: {cfg.rounds} rounds")
    tf, gd, model = runners(cfg.base, cfg, device)
    error = float((tf() - gd())[:, -1].abs().max())
    times = interleaved({"tf": tf, "gd": gd}, cfg.rounds, device, warmup=2)
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
    return ConstructionResult(cfg, Stats.of(times["tf"]), Stats.of(times["gd"]),
                              paired_ratio(times["tf"], times["gd"]), error, len(model.layers),
                              step_flops(model, cfg.base), sweeps,
                              time_slopes, memory_slopes)
