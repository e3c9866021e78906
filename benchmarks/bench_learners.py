"""Every reference learner of icgd.learners, batched over prompts vs a per-prompt Python loop.

    python benchmarks/bench_learners.py [--B 1280] [--d 20] [--n 40] [--repeats 3] [--device cpu] [--threads 2]
    python benchmarks/bench_learners.py --quick

For each learner and each mode (``predict`` with m = 1 query, ``prefix_predictions``) the batched call on all B
prompts is timed against a loop that calls the same learner on one prompt at a time. The loop may run on the first
`--loop-prompts` prompts only (then its time is scaled to B and the row is marked ``*``); the outputs of both are
compared on those prompts. Times are medians over `--repeats` rounds, both sides interleaved in each round, after a
warm-up call; the ratio is loop time / batched time.

The direct-training baseline (Wu et al.: width 200, 100 epochs) costs about 1 TFLOP per 1,000 networks; on a CPU
its rows use `--direct-B` prompts (predict) and `--direct-prefix-B` prompts (prefix_predictions: n − 1 networks
per prompt), shown in the "prompts" column.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from icgd.learners import (GD, KNN, SGD, Averaging, DirectTraining, GDPlusPlus, KernelRegression, Lasso, Learner,
                           LeastSquares, Newton, Ridge)


def learners(args: argparse.Namespace, device: str) -> dict[str, Learner]:
    """One representative configuration per baseline; η and γ keep GD and GD++ stable on every prefix of x ~ N(0, I)
    (a one-pair prefix has curvature ‖x‖² ≈ d)."""
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
        "kernel (rbf, λ=0.1)": KernelRegression("rbf", bandwidth=args.d ** 0.5, lam=0.1),
        "direct": DirectTraining(args.direct_depth, width=args.direct_width, epochs=args.direct_epochs,
                                 max_networks=args.direct_chunk or None),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    s = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - s, out


def bench(learner: Learner, mode: str, X, Y, q, loop_B: int, repeats: int, device: str) -> dict:
    """Median batched and loop times (loop scaled to all of X's prompts) and the largest output difference."""
    B = X.shape[0]
    if mode == "predict":
        def batched():
            return learner.predict(X, Y, q)

        def loop():
            return torch.stack([learner.predict(X[b], Y[b], q[b]) for b in range(loop_B)])
    else:
        def batched():
            return learner.prefix_predictions(X, Y)

        def loop():
            return torch.stack([learner.prefix_predictions(X[b], Y[b]) for b in range(loop_B)])
    learner.predict(X[:2], Y[:2], q[:2]), learner.prefix_predictions(X[:2], Y[:2])  # warm-up (lazy init, kernels)
    tb, tl = [], []
    out_b = out_l = None
    for _ in range(repeats):
        t, out_b = timed(batched, device)
        tb.append(t)
        t, out_l = timed(loop, device)
        tl.append(t * B / loop_B)
    assert out_b is not None and out_l is not None
    diff = float((out_b[:loop_B] - out_l).abs().max())
    scale = float(out_b[:loop_B].abs().max())
    return {"batched": statistics.median(tb), "loop": statistics.median(tl), "diff": diff, "scale": scale}


def fmt_time(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=1280, help="prompts")
    ap.add_argument("--d", type=int, default=20)
    ap.add_argument("--n", type=int, default=40, help="context pairs per prompt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-prompts", type=int, default=0, help="prompts timed in the loop (0: all), scaled to B")
    ap.add_argument("--direct-loop-prompts", type=int, default=64, help="the same for the direct baseline")
    ap.add_argument("--direct-depth", type=int, default=3)
    ap.add_argument("--direct-width", type=int, default=200)
    ap.add_argument("--direct-epochs", type=int, default=100)
    ap.add_argument("--direct-chunk", type=int, default=0, help="networks trained at once (0: the default)")
    ap.add_argument("--direct-repeats", type=int, default=1)
    ap.add_argument("--direct-B", type=int, default=0, help="prompts for direct predict (0: B)")
    ap.add_argument("--direct-prefix-B", type=int, default=32, help="prompts for direct prefix_predictions (0: B)")
    ap.add_argument("--only", default="", help="comma-separated learner names (prefixes of the table names)")
    ap.add_argument("--modes", default="predict,prefix")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    ap.add_argument("--quick", action="store_true", help="B=64, n=12, d=5, small direct network: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.B, args.n, args.d, args.repeats = 64, 12, 5, 1
        args.direct_width, args.direct_epochs, args.direct_loop_prompts, args.direct_prefix_B = 16, 10, 8, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, dtype = args.device, getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.B, args.n, args.d, generator=g, dtype=torch.float64)
    w = torch.randn(args.B, args.d, 1, generator=g, dtype=torch.float64)
    Y = X @ w + 0.1 * torch.randn(args.B, args.n, 1, generator=g, dtype=torch.float64)
    q = torch.randn(args.B, 1, args.d, generator=g, dtype=torch.float64)
    X, Y, q = (t.to(device=dev, dtype=dtype) for t in (X, Y, q))

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if dev.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name()} (host: {machine})"
    print(f"machine: {machine}; torch {torch.__version__}; device {dev}; {args.dtype}")
    print(f"B={args.B} prompts, d={args.d}, n={args.n}, m=1 query; median of {args.repeats} rounds "
          f"(direct: {args.direct_repeats}); direct = depth {args.direct_depth}, width {args.direct_width}, "
          f"{args.direct_epochs} full-batch Adam epochs\n")
    print("| learner | mode | prompts | batched | per-prompt loop | ratio | max abs diff (max abs output) |")
    print("|---|---|---|---|---|---|---|")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    ratios = []
    for name, learner in learners(args, dev).items():
        if only and not any(name.startswith(o) for o in only):
            continue
        is_direct = isinstance(learner, DirectTraining)
        for mode in args.modes.split(","):
            B = args.B
            if is_direct:
                B = (args.direct_B if mode == "predict" else args.direct_prefix_B) or args.B
                B = min(B, args.B)
            loop_B = args.direct_loop_prompts if is_direct else args.loop_prompts
            loop_B = B if loop_B <= 0 else min(loop_B, B)
            r = bench(learner, mode, X[:B], Y[:B], q[:B], loop_B, args.direct_repeats if is_direct else args.repeats,
                      dev)
            ratio = r["loop"] / r["batched"]
            ratios.append(ratio)
            mark = "*" if loop_B < B else ""
            print(f"| {name} | {mode} | {B} | {fmt_time(r['batched'])} | {fmt_time(r['loop'])}{mark} | "
                  f"**{ratio:.0f}×** | {r['diff']:.1e} ({r['scale']:.1e}) |", flush=True)
    if ratios:
        print(f"\nmedian ratio {statistics.median(ratios):.0f}×, smallest {min(ratios):.1f}×"
              + "; * = loop timed on fewer prompts and scaled to the row's prompts")


if __name__ == "__main__":
    main()
