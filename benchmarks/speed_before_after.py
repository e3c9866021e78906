"""Side-by-side timing of the deep-GD construction and the scikit-learn estimator before and after a [speed] change.

The code before the change is imported under another name (``icgd_old``), so that both versions and autograd GD run
in one process, interleaved round by round (each sees the same background load), with one torch thread:

    git worktree add --detach /tmp/old 7cb45c1       # the commit before the change
    PYTHONPATH=src python benchmarks/speed_before_after.py [rounds] [--old-src /tmp/old/src]

The old ``src/icgd`` is copied to a temporary folder as ``icgd_old`` (its imports renamed) before it is imported.
Prints markdown tables: per point the medians (and minima) of wall time and of this thread's CPU time
(``time.thread_time``), the per-round ratios to autograd GD (medians) and the speed-up; then the estimator's fit and
predict separately, its held-out R² and the largest change of its predictions; the load average at start and end.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def import_old(src: Path):
    """``src/icgd`` of the old tree as the package ``icgd_old`` (a renamed copy in a temporary folder)."""
    root = Path(tempfile.mkdtemp(prefix="icgd_old_"))
    shutil.copytree(src / "icgd", root / "icgd_old")
    for path in (root / "icgd_old").rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bicgd\.", "icgd_old.", text)
        text = re.sub(r"from icgd import", "from icgd_old import", text)
        text = re.sub(r"^import icgd$", "import icgd_old", text, flags=re.M)
        path.write_text(text)
    sys.path.insert(0, str(root))
    importlib.import_module("icgd_old")

    return root


def timed(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> tuple[dict, dict]:
    """Wall and CPU seconds per call of every function, round-robin (A B C, then C B A, …)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.thread_time()
            fns[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return wall, cpu


def _ratio(times: dict, key: str) -> float:
    return statistics.median(a / b for a, b in zip(times[key], times["gd"]))


def row(label: str, wall: dict, cpu: dict) -> str:
    med = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
    cmed = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    r_old, r_new = _ratio(wall, "old"), _ratio(wall, "new")
    return (f"| {label} | {med['old']:.1f} ms ({min(wall['old']) * 1e3:.1f}) | {med['new']:.1f} ms "
            f"({min(wall['new']) * 1e3:.1f}) | {med['gd']:.1f} ms | {r_old:.2f}× | **{r_new:.2f}×** | "
            f"{r_old / r_new:.2f}× | {cmed['old']:.1f} / {cmed['new']:.1f} / {cmed['gd']:.1f} ms | "
            f"{_ratio(cpu, 'old'):.2f}× / {_ratio(cpu, 'new'):.2f}× |")


def construction_rows(rounds: int) -> list[str]:
    import icgd_old.bench.construction as old_bench
    from icgd.bench.construction import ConstructionBenchConfig, Point, runners

    points = [Point(), Point(n=400), Point(width=32), Point(knots=256), Point(steps=40)]
    cfg, old_cfg = ConstructionBenchConfig(), old_bench.ConstructionBenchConfig()
    out = ["| point | before | after | autograd GD | before ÷ autograd | after ÷ autograd | speed-up | "
           "CPU before / after / autograd | CPU ratios before / after |", "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        new_tf, gd, _ = runners(p, cfg, torch.device("cpu"))
        old_p = old_bench.Point(**{f: getattr(p, f) for f in ("depth", "width", "d", "n", "steps", "knots")})
        old_tf, _, _ = old_bench.runners(old_p, old_cfg, torch.device("cpu"))
        err = float((new_tf() - old_tf()).abs().max())
        wall, cpu = timed({"old": old_tf, "new": new_tf, "gd": gd}, rounds)
        out.append(row(p.label(), wall, cpu) + f" <!-- max |w_new − w_old| {err:.1e} -->")
        print(out[-1], flush=True)
    return out


def estimator_rows(rounds: int) -> list[str]:
    import numpy as np
    from sklearn.datasets import load_diabetes
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split

    from icgd.bench.estimator import _autograd_side
    from icgd.sklearn import InContextRegressor
    from icgd_old.sklearn import InContextRegressor as OldRegressor

    Xtr, Xte, ytr, yte = train_test_split(*load_diabetes(return_X_y=True), random_state=0)
    state: dict = {}
    parts: dict[str, dict[str, list[float]]] = {k: {"fit": [], "predict": [], "fit_cpu": [], "predict_cpu": []}
                                                 for k in ("old", "new")}

    def fit_predict(cls, key):
        def run():
            t0, c0 = time.perf_counter(), time.thread_time()
            est = cls(depth=2, width=8, steps=100, random_state=0).fit(Xtr, ytr)
            t1, c1 = time.perf_counter(), time.thread_time()
            y = est.predict(Xte)
            t2, c2 = time.perf_counter(), time.thread_time()
            p = parts[key]
            p["fit"].append(t1 - t0), p["predict"].append(t2 - t1)
            p["fit_cpu"].append(c1 - c0), p["predict_cpu"].append(c2 - c1)
            state[key] = (est, y)
        return run

    fns = {"old": fit_predict(OldRegressor, "old"), "new": fit_predict(InContextRegressor, "new"),
           "gd": lambda: state.__setitem__("gd", _autograd_side(state["new"][0], Xte))}
    fns["new"]()
    wall, cpu = timed(fns, rounds, warmup=0)
    med = lambda v: statistics.median(v) * 1e3  # noqa: E731
    out = [row("estimator fit + predict (diabetes, depth 2, width 8, 100 steps)", wall, cpu), "",
           "| version | fit (wall / CPU) | predict (wall / CPU) | held-out R² |", "|---|---|---|---|"]
    for k in ("old", "new"):
        p = parts[k]
        out.append(f"| {'before' if k == 'old' else 'after'} | {med(p['fit'][1:]):.0f} / {med(p['fit_cpu'][1:]):.0f} ms"
                   f" | {med(p['predict'][1:]):.0f} / {med(p['predict_cpu'][1:]):.0f} ms | "
                   f"{r2_score(yte, state[k][1]):.4f} |")
    y_gd, y_w0 = state["gd"]
    y_new = state["new"][1]
    out += ["", f"max |ŷ_new − ŷ_old| on the test rows: {float(np.abs(y_new - state['old'][1]).max()):.2g} "
            f"(target units); autograd GD on the same network: R² {r2_score(yte, y_gd):.4f}, max |ŷ_new − ŷ_GD| "
            f"{float(np.abs(y_new - y_gd).max()):.3g}, ‖ŷ_new − ŷ_GD‖ / ‖ŷ_GD − ŷ(w0)‖ "
            f"{float(np.linalg.norm(y_new - y_gd) / np.linalg.norm(y_gd - y_w0)):.2g}"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", nargs="?", type=int, default=7)
    parser.add_argument("--old-src", default="/tmp/old/src", help="the src folder of the old tree")
    parser.add_argument("--skip-estimator", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import_old(Path(args.old_src))
    print(f"load at start: {os.getloadavg()}\n")
    construction_rows(args.rounds)
    if not args.skip_estimator:
        print("\n" + "\n".join(estimator_rows(max(3, args.rounds // 2))))
    print(f"\nload at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
