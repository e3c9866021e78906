"""Cheng, Chen & Sra (ICML 2024), "Transformers implement functional gradient descent to learn non-linear functions
in context": kernel-attention transformers (activation h ∈ {linear, ReLU, exp}, no softmax normalisation) trained
on Gaussian-process data whose kernel is each of the three; the activation that matches the data's kernel wins.

Setup (:class:`icgd.tasks.GaussianProcess`, task ``gp``): ``x`` uniform on the unit sphere of R^d, d = 5; labels of
the n context points and the query drawn jointly, ``y ~ N(0, K(X))`` with ``K_ij = κ(x_i, x_j)`` (for ReLU the PSD
``K₊ = U|Λ|Uᵀ``); the loss is ``E(ŷ − y_q)²`` at the query.

The trained model (:class:`KernelTransformer`) is the paper's parameterisation (related.md §C.1/C.7): tokens are the
columns ``z_j = (x_j, y_j)`` (the query has y = 0) and each layer l has ``A_l, B_l, C_l`` (d × d) and a scalar r_l::

    x_j ← x_j + (1/n) Σ_{i≤n} A_l x_i · h(⟨B_l x_i, C_l x_j⟩)
    y_j ← y_j + (r_l/n) Σ_{i≤n} y_i · h(⟨B_l x_i, C_l x_j⟩)

(keys and values from the n context tokens only); the prediction is ``−y`` at the query. With ``A = 0``, ``B = C = I``
and ``r = −η`` this is :func:`icgd.constructions.functional_gd`, the functional-GD reference (η line-searched).
The Bayes predictor is the GP posterior mean ``k_qᵀ K⁺ y`` under the data's own covariance (K₊ for ReLU).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from icgd.constructions import functional_gd
from icgd.errors import ConfigError
from icgd.experiments.icl_common import sample, verdict
from icgd.experiments.report import Report
from icgd.experiments.reproduce import RunContext
from icgd.learners import KernelRegression
from icgd.tasks import GaussianProcess, Prompt, make_task

TITLE = "Cheng, Chen & Sra 2024: kernel attention implements functional GD; the matching activation wins"

KINDS = ("linear", "relu", "exp")
NEAR_BAYES = 0.95  # "approaches Bayes": closes ≥ 95 % of the predict-0 → Bayes gap
CLEAR_WIN = 0.03  # a win by less than 3 % of the loss (one training seed) is reported as narrow
_COMMON = {"d": 5, "kernels": list(KINDS), "resample_every": 10, "clip": 1.0, "init_std": 0.01}
SCALES = {
    "smoke": {**_COMMON, "ns": [6], "layers": 2, "steps": 30, "batch": 200, "lr": 0.02,
              "eval_prompts": 600, "tune_prompts": 300, "eta_grid": 10},
    "cpu": {**_COMMON, "ns": [6, 14], "layers": 3, "steps": 800, "batch": 1000, "lr": 0.02,
            "eval_prompts": 10000, "tune_prompts": 3000, "eta_grid": 40},
    "paper": {**_COMMON, "ns": [2, 4, 6, 8, 10, 12, 14], "layers": 3, "steps": 20000, "batch": 30000, "lr": 0.001,
              "eval_prompts": 30000, "tune_prompts": 10000, "eta_grid": 60},
}


# ------------------------------------------------------------------------------------------------- the model


class KernelTransformer(nn.Module):
    """`layers` kernel-attention layers in Cheng et al.'s sparse-value parameterisation (see the module docstring).

    ``forward(X, Y, x_query)``: ``X (B, n, d)``, ``Y (B, n)``, ``x_query (B, d)`` → predictions ``(B,)``."""

    def __init__(self, d: int, layers: int, activation: str, *, init_std: float = 0.01,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if activation not in KINDS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(KINDS)}")
        self.d, self.activation = d, activation

        def noise(*shape: int) -> torch.Tensor:
            return init_std * torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

        eye = torch.eye(d, dtype=dtype).expand(layers, d, d)
        self.A = nn.Parameter(noise(layers, d, d))
        self.B = nn.Parameter(eye + noise(layers, d, d))
        self.C = nn.Parameter(eye + noise(layers, d, d))
        self.r = nn.Parameter(noise(layers))

    @property
    def n_layers(self) -> int:
        return self.r.shape[0]

    def h(self, G: torch.Tensor) -> torch.Tensor:
        return _act(self.activation, G)

    def forward(self, X: torch.Tensor, Y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        n = X.shape[1]
        Z = torch.cat([X, x_query[:, None]], dim=1)  # (B, n+1, d)
        y = torch.cat([Y, Y.new_zeros(Y.shape[0], 1)], dim=1)  # (B, n+1)
        for l in range(self.n_layers):
            keys = Z[:, :n] @ self.B[l].T  # B_l x_i, context tokens only
            qrys = Z @ self.C[l].T  # C_l x_j, every token
            H = self.h(keys @ qrys.transpose(1, 2))  # (B, n, n+1): h(⟨B x_i, C x_j⟩)
            dZ = torch.einsum("bij,bik->bjk", H, Z[:, :n] @ self.A[l].T) / n
            dy = self.r[l] * torch.einsum("bij,bi->bj", H, y[:, :n]) / n
            Z, y = Z + dZ, y + dy
        return -y[:, -1]


def _act(name: str, G: torch.Tensor) -> torch.Tensor:
    return {"linear": lambda t: t, "relu": torch.relu, "exp": torch.exp}[name](G)


# ------------------------------------------------------------------------------------------------- computation


def gp_task(s: dict, kernel: str) -> GaussianProcess:
    return make_task("gp", d=s["d"], kernel=kernel)


def prompts(task: GaussianProcess, batch: int, n: int, *, seed: int, step: int) -> Prompt:
    """Held-out float64 prompts of n context pairs and one query (a stream training never draws from)."""
    return sample(task, batch, n, m=1, seed=seed, step=step)


def query_loss(pred: torch.Tensor, p: Prompt) -> float:
    """``mean (ŷ − y_q)²`` over prompts (one query each, one output)."""
    return float(((pred.reshape(-1) - p.y_query.reshape(-1)) ** 2).mean())


def bayes_predictions(task: GaussianProcess, p: Prompt) -> torch.Tensor:
    """The GP posterior mean ``K[q, ctx] K[ctx, ctx]⁺ y`` under the data's own covariance (K₊ for ReLU), and so
    the Bayes-optimal prediction; ``(B,)``."""
    x = torch.cat([p.X, p.x_query], dim=1)
    K = task.covariance(x)
    n = p.X.shape[1]
    w = torch.linalg.pinv(K[:, :n, :n], hermitian=True, rtol=1e-10) @ p.Y[..., 0:1]
    return (K[:, n:, :n] @ w)[:, 0, 0]


def bayes_risk(task: GaussianProcess, p: Prompt) -> float:
    """``E[K_qq − k_qᵀ K⁺ k_q]``, the posterior variance at the query averaged over the prompts."""
    x = torch.cat([p.X, p.x_query], dim=1)
    K = task.covariance(x)
    n = p.X.shape[1]
    kq = K[:, :n, n:]
    v = K[:, n, n] - (kq.transpose(1, 2) @ torch.linalg.pinv(K[:, :n, :n], hermitian=True, rtol=1e-10) @ kq)[:, 0, 0]
    return float(v.mean())


def kernel_regression_loss(kernel: str, p: Prompt) -> float | None:
    """Loss of ``KernelRegression(kernel, λ = 0)``; None for ReLU, whose raw kernel matrix is indefinite (the data
    use K₊, so the raw-kernel interpolant is not the Bayes predictor and its pseudo-inverse is unstable)."""
    if kernel == "relu":
        return None
    pred = KernelRegression(kernel=kernel, lam=0.0).predict(p.X, p.Y, p.x_query)[:, 0, 0]
    return query_loss(pred, p)


def fgd_predictions(d: int, kernel: str, eta: float, steps: int, p: Prompt) -> torch.Tensor:
    """The functional-GD construction's predictions ``(B,)`` (float64)."""
    model = functional_gd(d, kernel=kernel, eta=eta, steps=steps)
    return model.predict(p.X, p.Y, p.x_query)[:, 0, 0]


def eta_grid(size: int) -> list[float]:
    """Step sizes for the FGD line search: geometric from 0.01 to 20."""
    return [float(v) for v in np.geomspace(0.01, 20.0, size)]


def tune_fgd(d: int, kernel: str, steps: int, p: Prompt, grid: list[float]) -> tuple[float, float]:
    """(η, loss) of the best step size on the tuning prompts (diverging steps score inf)."""
    best = (grid[0], math.inf)
    for eta in grid:
        loss = query_loss(fgd_predictions(d, kernel, eta, steps, p), p)
        if math.isfinite(loss) and loss < best[1]:
            best = (eta, loss)
    return best


def train_model(ctx: RunContext, s: dict, data: str, act: str, n: int, offset: int) -> tuple[KernelTransformer, dict]:
    """Adam with global-norm clipping, cosine decay to 10 %, a fresh batch every `resample_every` steps."""
    task = gp_task(s, data)
    model = KernelTransformer(s["d"], s["layers"], act, init_std=s["init_std"], generator=ctx.generator(offset))
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    steps = int(s["steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t / max(1, steps)))))
    curve = {"step": [], "loss": []}
    p = None
    for t in range(steps):
        if t % s["resample_every"] == 0:
            p = task.sample(s["batch"], n, m=1, seed=ctx.seed * 1000 + offset, step=t // s["resample_every"])
        pred = model(p.X, p.Y[..., 0], p.x_query[:, 0])
        loss = ((pred - p.y_query[:, 0, 0]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if s["clip"]:
            nn.utils.clip_grad_norm_(model.parameters(), s["clip"])
        if torch.isfinite(loss):
            opt.step()
        sched.step()
        if t % max(1, steps // 30) == 0 or t == steps - 1:
            curve["step"].append(t)
            curve["loss"].append(float(loss.detach()))
    return model, curve


def model_predictions(model: KernelTransformer, p: Prompt) -> torch.Tensor:
    m = model.double().eval()
    with torch.no_grad():
        out = m(p.X, p.Y[..., 0], p.x_query[:, 0])
    model.float()
    return out


def _learned(model: KernelTransformer) -> dict:
    """Summary of the learned weights: r_l, ‖A_l‖, and B_lᵀC_l's distance to a multiple of I."""
    with torch.no_grad():
        BC = model.B.transpose(1, 2) @ model.C  # the kernel's preconditioner ⟨B x, C x'⟩ = xᵀ BᵀC x'
        d = BC.shape[-1]
        scale = torch.diagonal(BC, dim1=1, dim2=2).mean(-1)
        off = (BC - scale[:, None, None] * torch.eye(d)).norm(dim=(1, 2)) / BC.norm(dim=(1, 2))
        return {"r": [float(v) for v in model.r], "A_norm": [float(v) for v in model.A.norm(dim=(1, 2))],
                "BC_scale": [float(v) for v in scale], "BC_rel_offdiag": [float(v) for v in off]}


def run_one_n(ctx: RunContext, s: dict, n: int, slot: int) -> dict:
    """The 3 × 3 table (data kernel × activation) of trained and FGD losses at context length n."""
    out = {"n": n, "data": {}}
    for i, data in enumerate(s["kernels"]):
        task = gp_task(s, data)
        evalp = prompts(task, s["eval_prompts"], n, seed=ctx.seed, step=100 * slot + i)
        tunep = prompts(task, s["tune_prompts"], n, seed=ctx.seed, step=100 * slot + 50 + i)
        row = {"bayes_loss": query_loss(bayes_predictions(task, evalp), evalp),
               "bayes_risk": bayes_risk(task, evalp), "kernel_regression_loss": kernel_regression_loss(data, evalp),
               "zero_loss": query_loss(torch.zeros(s["eval_prompts"], dtype=torch.float64), evalp),
               "trained": {}, "fgd": {}}
        for j, act in enumerate(s["kernels"]):
            ctx.log(f"cheng2024: n = {n}, data {data}, attention {act}")
            model, curve = train_model(ctx, s, data, act, n, offset=1000 * slot + 10 * i + j)
            eta, tune_loss = tune_fgd(s["d"], act, s["layers"], tunep, eta_grid(s["eta_grid"]))
            row["trained"][act] = {"loss": query_loss(model_predictions(model, evalp), evalp), "curve": curve,
                                   "weights": _learned(model)}
            row["fgd"][act] = {"eta": eta, "tune_loss": tune_loss,
                               "loss": query_loss(fgd_predictions(s["d"], act, eta, s["layers"], evalp), evalp)}
        out["data"][data] = row
    return out


def run(ctx: RunContext) -> dict:
    s = ctx.settings
    return {"tables": [run_one_n(ctx, s, int(n), slot) for slot, n in enumerate(s["ns"])]}


# ------------------------------------------------------------------------------------------------- report


def _winner(row: dict, which: str) -> str:
    return min(row[which], key=lambda a: row[which][a]["loss"])


def _matrix(table: dict, which: str) -> list[list[float]]:
    kinds = list(table["data"])
    return [[table["data"][dk][which][a]["loss"] for a in kinds] for dk in kinds]


def _fig_table(report: Report) -> None:
    tables = report.metrics["tables"]
    fig, axes = plt.subplots(len(tables), 3, figsize=(11, 3.3 * len(tables)), squeeze=False)
    for r, table in enumerate(tables):
        kinds = list(table["data"])
        for c, dk in enumerate(kinds):
            ax, row = axes[r][c], table["data"][dk]
            x = np.arange(len(kinds))
            ax.bar(x - 0.2, [row["trained"][a]["loss"] for a in kinds], 0.4, label="trained", color="C0")
            ax.bar(x + 0.2, [row["fgd"][a]["loss"] for a in kinds], 0.4, label="functional GD (tuned η)",
                   color="C1")
            bars = [row[w][a]["loss"] for w in ("trained", "fgd") for a in kinds]
            if row["bayes_loss"] > 1e-3 * min(bars):
                ax.axhline(row["bayes_loss"], color="k", ls="--", lw=1, label="Bayes (GP posterior mean)")
                low = min(bars + [row["bayes_loss"]]) / 1.5
            else:  # e.g. linear data with n ≥ d: the Bayes loss is ~1e-16 and would squash the bars
                ax.text(0.02, 0.03, f"Bayes ≈ {row['bayes_loss']:.0e}", transform=ax.transAxes, fontsize=8)
                low = min(bars) / 1.5
            ax.set_xticks(x, [f"{a}{' ✓' if a == dk else ''}" for a in kinds])
            ax.set(yscale="log", title=f"{dk} data, n = {table['n']}", xlabel="attention activation",
                   ylabel="test loss E(ŷ − y)²", ylim=(low, max(bars) * (5 if c == 0 else 1.5)))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    axes[0][0].legend(handles, labels, loc="upper left", fontsize=7)
    report.figure(fig, "kernel_table", "Test loss of each attention activation (✓ = matches the data kernel), "
                  f"{report.settings['layers']} layers: trained transformers (blue) and the functional-GD "
                  "construction with line-searched η (orange); dashed: the Bayes-optimal loss.")


def _fig_training(report: Report) -> None:
    tables = report.metrics["tables"]
    table = tables[-1]
    kinds = list(table["data"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(11, 3.2), squeeze=False)
    for ax, dk in zip(axes[0], kinds):
        row = table["data"][dk]
        for i, a in enumerate(kinds):
            c = row["trained"][a]["curve"]
            ax.plot(c["step"], c["loss"], color=f"C{i}", label=f"{a} attention")
        ax.axhline(row["bayes_loss"], color="k", ls="--", lw=1, label="Bayes")
        ax.set(yscale="log", xlabel="training step", ylabel="training-batch loss", title=f"{dk} data, "
               f"n = {table['n']}")
        ax.legend(fontsize=7)
    report.figure(fig, "training", "Training loss (one batch, resampled every "
                  f"{report.settings['resample_every']} steps) of the nine models at the largest n.")


def gap_closed(loss: float, zero: float, bayes: float) -> float:
    """Share of the gap between predicting 0 and the Bayes predictor that `loss` closes (1 = Bayes-optimal)."""
    return (zero - loss) / (zero - bayes) if zero > bayes else float("nan")


def _or_dash(x):
    return "—" if x is None else x


def render(report: Report) -> None:
    m, s = report.metrics, report.settings
    tables = m["tables"]
    kinds = list(tables[0]["data"])
    report.text(
        f"**What was run.** For each context length n ∈ {{{', '.join(str(t['n']) for t in tables)}}} and each of the "
        f"{len(kinds)} × {len(kinds)} (data kernel, attention activation) pairs, a {s['layers']}-layer kernel-"
        f"attention transformer in the paper's parameterisation (per layer A, B, C ∈ R^{s['d']}×{s['d']} and a "
        f"scalar r; keys/values from the context only, no softmax, 1/n normalisation; B = C = I + N(0, "
        f"{s['init_std']}²), A, r ~ N(0, {s['init_std']}²)) was trained with Adam (lr {s['lr']:g}, cosine decay "
        f"to 10 %, gradient-norm clip {s['clip']}) for {s['steps']} steps on batches of {s['batch']} GP prompts "
        f"(d = {s['d']}, x uniform on the unit sphere, resampled every {s['resample_every']} steps). Test loss "
        f"E(ŷ − y_q)² on {s['eval_prompts']} held-out prompts. Reference: the functional-GD construction "
        f"(`icgd.constructions.functional_gd`, {s['layers']} steps of the attention's kernel, η line-searched "
        f"over {s['eta_grid']} values on {s['tune_prompts']} other prompts) and the Bayes-optimal GP posterior "
        "mean under the data's covariance (K₊ for ReLU).")
    if report.meta.get("scale") != "paper":
        report.text(
            f"**Reduced vs the paper** (2-core CPU): batches of {s['batch']} (paper 30 000), {s['steps']} steps, "
            f"n ∈ {{{', '.join(str(t['n']) for t in tables)}}} only (paper: n = 2 … 14), one run per cell with "
            "isotropic inputs (the paper averages 3 runs over random input covariances Σ; we use Σ = I). The "
            "paper's exact lr, step count and initialisation are not known to us (the full text was not "
            "available; see `/work/shared/research/related.md` §C); ours are stated above.")
    # claim 1: the matching activation wins (trained)
    checks, clear, parts = [], [], []
    for t in tables:
        for dk in kinds:
            row = t["data"][dk]["trained"]
            w = _winner(t["data"][dk], "trained")
            second = min((a for a in row if a != w), key=lambda a: row[a]["loss"])
            margin = row[second]["loss"] / row[w]["loss"] - 1
            checks.append(w == dk)
            clear.append(w == dk and margin >= CLEAR_WIN)
            parts.append(f"n = {t['n']}, {dk} data → best {w} (runner-up {second}: +{100 * margin:.1f} %)")
    v = "reproduced" if all(clear) else ("partly" if any(checks) else "not")
    narrow = sum(checks) - sum(clear)
    report.claim("Trained: for each data kernel the attention activation that matches it has the lowest test loss "
                 "(the diagonal of the 3 × 3 table wins)", v,
                 "; ".join(parts) + f". The matching activation wins {sum(checks)} of {len(checks)} cells"
                 + (f"; {narrow} of those by less than {100 * CLEAR_WIN:.0f} %, which one training seed does not "
                    "establish" if narrow else "") + ".")
    # claim 2: the same for the construction
    fchecks, fparts = [], []
    for t in tables:
        for dk in kinds:
            w = _winner(t["data"][dk], "fgd")
            fchecks.append(w == dk)
            fparts.append(f"n = {t['n']}, {dk} → {w}")
    report.claim("Functional GD (the construction, tuned η): the kernel that matches the data is the best of the "
                 "three", verdict(fchecks), "; ".join(fparts) + f" ({sum(fchecks)} of {len(fchecks)})."
                 + ("" if all(fchecks) else f" Likely why: with {s['layers']} steps of one constant η, a kernel "
                    "whose matrix has one dominant eigenvalue (exp⟨x, x'⟩ has a large near-constant part) must take "
                    "a small η, so the other directions barely move; the paper's optimality statement is for many "
                    "layers (learned per-layer steps help — the trained models do better)."))
    # claim 3: the trained matching model is at least as good as the FGD construction and approaches Bayes
    c3, p3 = [], []
    for t in tables:
        for dk in kinds:
            row = t["data"][dk]
            tr, fg, by = row["trained"][dk]["loss"], row["fgd"][dk]["loss"], row["bayes_loss"]
            c3.append(tr <= fg * 1.02)
            p3.append(f"n = {t['n']}, {dk}: trained {tr:.4f} vs FGD {fg:.4f} vs Bayes {by:.4f}")
    report.claim("Trained matching-activation transformers do at least as well as the functional-GD construction "
                 "with the same kernel and depth (within 2 %)", verdict(c3), "; ".join(p3) + ".")
    c4, p4 = [], []
    for t in tables:
        for dk in kinds:
            row = t["data"][dk]
            closed = gap_closed(row["trained"][dk]["loss"], row["zero_loss"], row["bayes_loss"])
            c4.append(closed >= NEAR_BAYES)
            p4.append(f"n = {t['n']}, {dk}: {100 * closed:.1f} %")
    report.claim("The matching activation approaches the Bayes-optimal loss (it closes at least "
                 f"{100 * NEAR_BAYES:.0f} % of the gap between predicting 0 and the Bayes predictor)", verdict(c4),
                 "share of the gap closed by the trained matching model: " + "; ".join(p4) + f". With "
                 f"{s['layers']} layers even the construction stays above Bayes (the paper's convergence to Bayes "
                 "is as the number of layers grows), and our training is short.")

    last = tables[-1]
    for dk in kinds:
        row = last["data"][dk]
        report.paper_vs_ours(f"excess_over_bayes_{dk}", row["trained"][dk]["loss"] - row["bayes_loss"],
                             f"our trained {dk}-attention model on {dk} data, n = {last['n']}: loss − Bayes loss")
    wins = sum(_winner(last["data"][dk], "trained") == dk for dk in kinds)
    report.paper_vs_ours("matching_wins", float(wins), f"n = {last['n']}, trained models")

    for t in tables:
        report.heading(f"Test losses at n = {t['n']}")
        rows = []
        for dk in kinds:
            row = t["data"][dk]
            rows.append([dk, *(f"{row['trained'][a]['loss']:.4f}" + (" ★" if a == _winner(row, "trained") else "")
                               for a in kinds),
                         *(f"{row['fgd'][a]['loss']:.4f}" + (" ★" if a == _winner(row, "fgd") else "")
                           for a in kinds),
                         row["bayes_loss"], _or_dash(row["kernel_regression_loss"]), row["zero_loss"]])
        report.table(["data kernel", *[f"trained {a}" for a in kinds], *[f"FGD {a}" for a in kinds],
                      "Bayes", "kernel regr. (λ=0)", "predict 0"], rows,
                     "Rows: the data's kernel; columns: the attention activation (★ = lowest of its group). "
                     "'kernel regr.' is `KernelRegression(kernel=data, λ=0)` on the raw kernel (equal to Bayes "
                     "for linear and exp; not computed for ReLU, whose raw kernel is indefinite — the data use K₊).")
    _fig_table(report)
    report.heading("Learned parameters")
    rows = []
    for t in tables:
        for dk in kinds:
            for a in kinds:
                w = t["data"][dk]["trained"][a]["weights"]
                rows.append([t["n"], dk, a, ", ".join(f"{v:.3f}" for v in w["r"]),
                             ", ".join(f"{v:.3f}" for v in w["A_norm"]),
                             ", ".join(f"{v:.2f}" for v in w["BC_scale"]),
                             ", ".join(f"{v:.2f}" for v in w["BC_rel_offdiag"]),
                             t["data"][dk]["fgd"][a]["eta"]])
    report.table(["n", "data", "activation", "r_l", "‖A_l‖", "BᵀC scale", "BᵀC off-I (rel.)", "FGD η"], rows,
                 "Per layer: the value scalar r_l (FGD: −η), the norm of the X-update A_l (FGD: 0), and BᵀC as "
                 "c·I + rest: its scale c and the relative size of the rest (FGD: 1 and 0).")
    report.heading("Training")
    _fig_training(report)
