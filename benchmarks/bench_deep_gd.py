"""Constructed transformer (Wu et al.) forward pass vs autograd GD, the same steps on the same prompt.

    python benchmarks/bench_deep_gd.py [--knots 64] [--repeats 30] [--device cpu] [--threads 2]

Both are timed in one process, interleaved (one run of each per round), after warm-up; the report gives the
medians and the median of the per-round ratios, plus nominal FLOPs per GD step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from icgd.constructions import deep_gd
from icgd.layers import EWML, MLP
from icgd.learners import gd_trajectory
from icgd.nets import NetSpec, forward, init_weights


def layer_flops(layer, T: int) -> int:
    """Nominal FLOPs of one layer on T tokens, counting what the implementation computes."""
    if isinstance(layer, MLP):
        return 2 * T * layer.num_params()  # one multiply-add per nonzero weight (sparse storage)
    hb = layer.heads
    G, H, nb = hb.alpha.shape
    rows = 2 * 2 * T * G * hb.q.rows  # query and key rows (one coordinate each)
    e = hb.v.src.shape[1]
    values = 2 * T * G * e
    if isinstance(layer, EWML):
        return rows + T * G * (2 * nb) + values
    return rows + T * G * H * (2 * nb + 3) + 2 * values  # scores, relu, weighted sum; value reads and weighting


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--knots", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    spec = NetSpec(args.d, args.width, args.depth, args.d)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.batch, args.n, args.d, generator=g, dtype=torch.float64)
    Y = forward(spec, init_weights(spec, args.batch, generator=g, scale=2.0), X)
    w0 = init_weights(spec, args.batch, generator=g).clamp(-1, 1)
    X, Y, w0 = X.to(dev), Y.to(dev), w0.to(dev)
    model = deep_gd(spec, eta=2.0, steps=args.steps, box=1.0, knots=args.knots,
                    x_bound=float(X.abs().max())).to(dev)

    def run_tf():
        with torch.inference_mode():
            out = model.trace(X, Y, w0)
        sync(dev)
        return out

    def run_gd():
        out = gd_trajectory(spec, X, Y, w0, 2.0, args.steps, box=1.0)
        sync(dev)
        return out

    err = float(((run_tf() - run_gd())[:, -1].norm(dim=-1)).max())
    for _ in range(3):
        run_tf(), run_gd()
    t_tf, t_gd, ratios = [], [], []
    for _ in range(args.repeats):
        s = time.perf_counter()
        run_tf()
        a = time.perf_counter() - s
        s = time.perf_counter()
        run_gd()
        b = time.perf_counter() - s
        t_tf.append(a), t_gd.append(b), ratios.append(a / b)

    T = args.n
    block = model.layers[: model.block_size]
    flops_tf = sum(layer_flops(layer, T) for layer in block) * args.batch
    flops_gd = 6 * args.n * spec.num_params * args.batch  # forward + backward of a dense net, per step
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if dev.startswith("cuda"):
        machine = torch.cuda.get_device_name()
    print(f"machine: {machine}; torch {torch.__version__}; device {dev}")
    print(f"spec: N={args.depth} K={args.width} d={args.d} n={args.n} steps={args.steps} knots={args.knots} "
          f"batch={args.batch}; float64")
    print(f"constructed forward: median {statistics.median(t_tf) * 1e3:.2f} ms")
    print(f"autograd GD:         median {statistics.median(t_gd) * 1e3:.2f} ms")
    print(f"ratio (median of per-round ratios): {statistics.median(ratios):.2f}x")
    print(f"nominal FLOPs per GD step: construction {flops_tf / 1e6:.2f} M, autograd {flops_gd / 1e6:.3f} M "
          f"({flops_tf / flops_gd:.0f}x)")
    print(f"max |w_tf - w_gd| at the last step: {err:.2e}")


if __name__ == "__main__":
    main()
