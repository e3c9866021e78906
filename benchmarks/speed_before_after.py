"""Side-by-side timing of the deep-GD construction and the scikit-learn estimator before and after the [speed] change.

The code before the change is imported under another name, so that both versions and autograd GD run in one
process, interleaved round by round (each sees the same background load):

    git archive ca12fb4 src/icgd | tar -x -C /tmp/old && mv /tmp/old/src/icgd /tmp/old/icgd_old
    grep -rl icgd /tmp/old/icgd_old --include=*.py | xargs sed -i -E \\
        's/\\bicgd\\./icgd_old./g; s/from icgd import/from icgd_old import/g; s/^import icgd$/import icgd_old/'
    PYTHONPATH=src:/tmp/old python benchmarks/speed_before_after.py

Prints a markdown table: medians (and minima) over the rounds, ratios to autograd GD per round (median).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import icgd_old.bench.construction as old_bench
from icgd.bench.common import interleaved
from icgd.bench.construction import ConstructionBenchConfig, Point, runners

POINTS = [Point(), Point(n=400), Point(width=32), Point(knots=256), Point(steps=40)]


def row(label: str, times: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["gd"])) for k in ("old", "new")}
    return (f"| {label} | {med['old'] * 1e3:.1f} ms ({min(times['old']) * 1e3:.1f}) | "
            f"{med['new'] * 1e3:.1f} ms ({min(times['new']) * 1e3:.1f}) | {med['gd'] * 1e3:.1f} ms | "
            f"{ratio['old']:.2f}× | **{ratio['new']:.2f}×** | {ratio['old'] / ratio['new']:.2f}× |")


def estimator_rows(rounds: int) -> list[str]:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    from icgd.bench.estimator import _autograd_side
    from icgd.sklearn import InContextRegressor
    from icgd_old.sklearn import InContextRegressor as OldRegressor

    Xtr, Xte, ytr, yte = train_test_split(*load_diabetes(return_X_y=True), random_state=0)
    state = {}

    def fit_predict(cls, key):
        def run():
            est = cls(depth=2, width=8, steps=100, random_state=0).fit(Xtr, ytr)
            state[key] = (est, est.predict(Xte))
        return run

    fns = {"old": fit_predict(OldRegressor, "old"), "new": fit_predict(InContextRegressor, "new"),
           "gd": lambda: state.__setitem__("gd", _autograd_side(state["new"][0], Xte))}
    fns["new"]()
    times = interleaved(fns, rounds, warmup=0)
    dev = max(abs(a - b) for a, b in zip(state["new"][1], state["old"][1]))
    return [row("estimator fit + predict (diabetes, depth 2, width 8, 100 steps)", times),
            f"\nmax |ŷ_new − ŷ_old| on the test rows: {dev:.2g} (target units)"]


def main(rounds: int = 7) -> None:
    torch.set_num_threads(1)
    cfg = ConstructionBenchConfig()
    old_cfg = old_bench.ConstructionBenchConfig()
    print(f"load at start: {os.getloadavg()}")
    print("| point | before | after | autograd GD | before ÷ autograd | after ÷ autograd | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for p in POINTS:
        new_tf, gd, _ = runners(p, cfg, torch.device("cpu"))
        old_p = old_bench.Point(**{f: getattr(p, f) for f in ("depth", "width", "d", "n", "steps", "knots")})
        old_tf, _, _ = old_bench.runners(old_p, old_cfg, torch.device("cpu"))
        err = float((new_tf() - old_tf()).abs().max())
        times = interleaved({"old": old_tf, "new": new_tf, "gd": gd}, rounds, warmup=1)
        print(row(p.label(), times) + f" <!-- max |w_new − w_old| {err:.1e} -->", flush=True)
    print("\n".join(estimator_rows(max(3, rounds // 2))))
    print(f"load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
