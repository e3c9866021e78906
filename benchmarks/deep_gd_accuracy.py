"""Accuracy of Wu et al.'s construction vs knots, depth and activation; writes docs/deep_gd_accuracy.{md,png}.

    python benchmarks/deep_gd_accuracy.py
"""

from __future__ import annotations

from pathlib import Path

from icgd.experiments.wu_construction import ConstructionConfig, knots_sweep
from icgd.plots import plt, _save

KNOTS = [16, 32, 64, 128, 256, 1024]
ROWS = [("sigmoid", 2.0, d) for d in (2, 3, 4)] + [("tanh", 0.5, d) for d in (2, 3, 4)]


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "docs"
    lines = ["# deep_gd: final relative weight error vs knots", "",
             "‖w̄_L − w_L‖ / ‖w_L − w_0‖ after L = 10 steps against autograd GD; d_in = d_out = 3, width 8, n = 50, "
             "box 1, float64, seed 0; intervals a priori from the box and max|x|. Made by "
             "`python benchmarks/deep_gd_accuracy.py`.", "",
             "| activation | η | N | " + " | ".join(f"knots {k}" for k in KNOTS) + " | slope |",
             "|---|---|---|" + "---|" * len(KNOTS) + "---|"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for act, eta, depth in ROWS:
        cfg = ConstructionConfig(depth=depth, activation=act, eta=eta, steps=10)
        errors, slope = knots_sweep(cfg, KNOTS)
        lines.append(f"| {act} | {eta} | {depth} | " + " | ".join(f"{e:.1e}" for e in errors) + f" | {slope:.2f} |")
        ax.loglog(KNOTS, errors, "o-" if act == "sigmoid" else "s--", label=f"{act}, N={depth}")
        print(lines[-1], flush=True)
    ax.set(xlabel="knots (ReLU units per fit)", ylabel="final relative error", title="deep_gd error vs knots")
    ax.legend(fontsize=8)
    _save(fig, out / "deep_gd_accuracy.png")
    (out / "deep_gd_accuracy.md").write_text("\n".join(lines + ["", "![error vs knots](deep_gd_accuracy.png)", ""]))


if __name__ == "__main__":
    main()
