"""The report of :mod:`icgd.experiments.vonoswald2023`: prose, verdicts, tables and figures, from a run's saved
metrics (nothing here trains or samples). Split from the experiment so that each function stays short; it does not
import the experiment module (which imports this one)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np

from icgd.experiments.icl_common import heatmap, rel_gap, verdict
from icgd.experiments.report import DATA_DIR, Report

# targets at cpu scale: 1-layer LSA loss within 3 % of GD, model cos ≥ 0.99
LOSS_TOL, COS_MIN = 0.03, 0.99
PAPER_KINDS = ("text", "table", "figure-annotation", "plot-reading")  # printed in (or read off) the paper itself
GPU_MS_PER_STEP = (2.0, 6.0)  # assumed launch-bound step time of these tiny models on one GPU (see estimate text)


def sources() -> list[dict]:
    """The stored reference values, each with its ``kind`` (one of :data:`PAPER_KINDS` or ``authors-code``), its
    ``source`` and, for readings off a plot, its ``tolerance``."""
    return json.loads((DATA_DIR / "vonoswald2023.json").read_text())["values"]


def what_was_run(s, scale: str) -> str:
    """What this run trained and measured, from its settings."""
    deep = ", ".join(f"a {d.layers}-layer {'recurrent' if d.shared else 'non-recurrent'} LSA ({d.steps} steps of "
                     f"batch {d.batch}, Adam lr {d.lr:g} after {d.warmup} warm-up steps, cosine decay to 10 %)"
                     for d in s.deep)
    text = (
        f"**What was run** (scale `{scale}`). A 1-layer linear self-attention model (one head, the paper's tokens "
        f"and read-out) trained on fresh linear-regression tasks (d = {s.d}, N = {s.n} context points, "
        f"x ~ U(−½, ½), W ~ N(0, I), noiseless) for {s.steps} steps of batch {s.batch} (Adam lr {s.lr:g}); then "
        f"{deep or 'no deeper model'}. GD and GD++ baselines are fitted on {s.tune_tasks} separate tasks (GD: line "
        "search; GD++: grid search of one (η, γ) for recurrent models, then per-layer (η_l, γ_l) by Adam for "
        f"non-recurrent ones). Every number and curve is scored on the same {s.eval_tasks} held-out tasks (the "
        f"curves on their first {min(s.track_tasks, s.eval_tasks)}), with the paper's code's loss ½‖ŷ − y‖²; the "
        f"out-of-distribution study draws {s.ood_tasks} new tasks at each input scale α.")
    if scale == "smoke":
        text += (" Smoke scale checks the pipeline only: the models are trained for a few dozen steps and no number "
                 "here says anything about the paper.")
    return text


def reduced_vs_paper(s, paper) -> str:
    ours = "; ".join(f"{d.layers} layers{' (recurrent)' if d.shared else ''}: {d.steps} steps, batch {d.batch}, "
                     f"lr {d.lr:g}" for d in s.deep)
    theirs = "; ".join(f"{d.layers} layers{' (recurrent)' if d.shared else ''}: {d.steps} steps, batch {d.batch}, "
                       f"lr {d.lr:g}" for d in paper.deep)
    return (f"**Reduced vs the paper** (to fit a 2-core CPU): deep models {ours} (paper: {theirs}); the 1-layer run "
            f"has {s.steps} steps (paper {paper.steps}); the OOD curves use {s.ood_tasks} tasks per α (paper "
            f"{paper.ood_tasks}). We use a higher lr with a short warm-up than the paper's 1e-3 / 5e-4 for the deep "
            "models, which reach the same loss in fewer steps. d and N are the paper's.")


def paper_scale_estimate(meta: dict, s, paper, m: dict) -> str:
    """Estimated time of ``--scale paper`` from this run's measured per-step CPU times."""
    one, deep = m["one_layer"], m["deep"]
    per_step = [r.get("cpu_seconds_per_step", r["seconds_per_step"]) / r["layers"] * 2048 / r["batch"]
                for r in deep] or [one.get("cpu_seconds_per_step", one["seconds_per_step"]) * 2048 / s.batch]
    rate = float(np.mean(per_step))  # CPU seconds per training step per layer at batch 2048
    steps = paper.steps + sum(d.steps for d in paper.deep)
    layer_steps = paper.steps + sum(d.steps * d.layers for d in paper.deep)
    cpu_h = layer_steps * rate / 3600
    lo, hi = (steps * ms / 1000 / 60 for ms in GPU_MS_PER_STEP)
    return (f"**Paper scale, estimated.** Measured here: {rate * 1000:.0f} ms of CPU time per training step per "
            f"layer at batch 2048 on one thread (process time, mean over the deep runs, including the chunk-wise "
            f"evaluations). `--scale paper` trains {steps} steps ({layer_steps} layer-steps): ≈ {cpu_h:.1f} "
            "CPU-hours on one thread. On a GPU these models (11-dimensional tokens, 11 tokens, batch 2048) are far "
            "too small to fill the device, so a step costs about its kernel launches: assuming "
            f"{GPU_MS_PER_STEP[0]:g}–{GPU_MS_PER_STEP[1]:g} ms per step (an assumption, not measured: no GPU was "
            f"available), ≈ {lo:.0f}–{hi:.0f} GPU-minutes plus evaluation.")


# ------------------------------------------------------------------------------------------------- verdicts


def claim_one_layer(report: Report) -> None:
    one = report.metrics["one_layer"]
    ok_loss, ok_cos = abs(one["rel_gap"]) <= LOSS_TOL, one["model_cos"] >= COS_MIN
    report.claim(
        "A trained 1-layer LSA matches one step of GD (cpu target: loss within 3 % of GD, model cos ≥ 0.99)",
        verdict([ok_loss, ok_cos]),
        f"loss {one['loss_lsa']:.4f} vs GD {one['loss_gd']:.4f} ({100 * one['rel_gap']:+.2f} %, "
        f"{'within' if ok_loss else 'outside'} 3 %); model cos {one['model_cos']:.4f} "
        f"({'≥' if ok_cos else '<'} 0.99); preds diff {one['preds_diff']:.4f}.")
    ok_kq, ok_pv = one["kq_distance"] <= 0.1, one["pv_distance"] <= 0.1
    ok_eta = abs(rel_gap(one["eta_lsa"], one["eta_gd"])) <= 0.1
    report.claim(
        "The trained weights are the GD construction (Prop. 1) up to the scale invariance",
        verdict([ok_kq, ok_pv, ok_eta]),
        f"relative distance after rescaling: W_KQ {one['kq_distance']:.3f}, W_PV {one['pv_distance']:.3f} "
        f"(threshold 0.1); learned step η = {one['eta_lsa']:.3f} vs line-searched {one['eta_gd']:.3f}.")


def _crossing_text(r: dict) -> str:
    if r["closer_to_gdpp"]:
        return "closer to GD++"
    x = r.get("steps_needed")
    if not x or x.get("steps") is None:
        return "closer to GD; the gap to GD++ was not shrinking over the last half of training, so no step count " \
               "can be extrapolated"
    return (f"closer to GD; a straight line in log(step) through the last {x['points']} points of the preds-diff "
            f"gap (GD++ − GD) crosses zero at ≈ {x['steps']:.3g} steps (this run: {r['steps']})")


def claim_deep(report: Report) -> None:
    deep = report.metrics["deep"]
    if not deep:
        return
    checks, parts = [], []
    for r in deep:
        g = r["beats_gd"]
        beats = g["mean"] + 2 * g["se"] < 0
        checks += [beats, r["closer_to_gdpp"]]
        parts.append(f"{r['layers']} layers{' (recurrent)' if r['shared'] else ''}: LSA {r['loss_lsa']:.4f}, GD "
                     f"{r['loss_gd']:.4f} (LSA − GD {g['mean']:+.4f} ± {2 * g['se']:.4f}), GD++ {r['loss_gdpp']:.4f}; "
                     f"preds diff to GD++ {r['preds_diff_gdpp']:.4f} vs to GD {r['preds_diff_gd']:.4f}: "
                     + _crossing_text(r))
    report.claim("Multi-layer LSA beats as many plain GD steps (paired loss gap below 0 by more than two standard "
                 "errors) and is closer to GD++ than to GD (preds diff on the validation tasks)", verdict(checks),
                 "; ".join(parts) + ".")


def claim_ood(report: Report) -> None:
    ood, deep = report.metrics["ood"], report.metrics["deep"]
    gap = max(abs(rel_gap(x, y)) for x, y in zip(ood["LSA 1 layer"], ood["GD 1 step"]))
    report.claim(
        "Out of distribution (inputs scaled by α), the trained 1-layer LSA keeps tracking GD",
        "reproduced" if gap <= 0.1 else ("partly" if gap <= 0.3 else "not"),
        f"largest relative loss gap LSA vs GD over α ∈ [{min(ood['alpha'])}, {max(ood['alpha'])}]: "
        f"{100 * gap:.1f} % (reproduced ≤ 10 %, partly ≤ 30 %); both degrade together as α grows.")
    if not deep or 1.0 not in ood["alpha"]:
        return
    i, checks, parts = ood["alpha"].index(1.0), [], []
    for r in deep:
        key = f"LSA {r['layers']}{' rec.' if r['shared'] else ''}"
        g = ood["gaps"][key][i]
        checks.append(g["mean"] + 2 * g["se"] < 0)
        parts.append(f"{key}: LSA − GD {g['mean']:+.4f} ± {2 * g['se']:.4f} (validation tasks: "
                     f"{r['beats_gd']['mean']:+.4f} ± {2 * r['beats_gd']['se']:.4f})")
    report.claim("The deep LSAs beat GD also on the out-of-distribution study's own α = 1 tasks (an independent "
                 "draw from the training distribution)", verdict(checks),
                 "; ".join(parts) + "; ± is two standard errors of the paired per-task difference.")


# ------------------------------------------------------------------------------------------------- paper values


def paper_rows(report: Report, s) -> None:
    """The paper's own numbers (text, tables, figure annotations, plot readings) beside ours."""
    one, deep = report.metrics["one_layer"], report.metrics["deep"]
    kinds = {v["key"]: v["kind"] for v in sources()}
    ours = {"gd1_loss": (one["loss_gd"], "line-searched on our tune tasks, scored on our held-out tasks"),
            "lsa1_loss": (one["loss_lsa"], "within the reading's ±0.02" if abs(one["loss_lsa"] - 0.2) <= 0.02
                          else "outside the reading's ±0.02"),
            "max_eig_xxt_n10": (one["max_eig_xxt"], f"max over our {s.eval_tasks} held-out tasks")}
    rec = [r for r in deep if r["shared"] and r["layers"] == 2]
    if rec:
        ours["gamma_recurrent2_n10"] = (
            rec[0]["gamma_lsa"] / s.n, "γ of our trained recurrent 2-layer LSA (x-block of β·P W_V), in the paper's "
            f"un-normalised convention (icgd γ / N); grid-searched GD++ γ/N: {rec[0]['gamma_gdpp'][0] / s.n:.3f}")
    for key, (value, note) in ours.items():
        if kinds.get(key) in PAPER_KINDS:
            report.paper_vs_ours(key, value, note)


def code_table(report: Report) -> None:
    """Values from the authors' released code (not the paper's) beside ours, in their own table."""
    m = report.metrics
    one, ood = m["one_layer"], m["ood"]
    ours = {"gd1_loss_notebook": one["loss_gd"], "model_cos_1layer": one["model_cos"],
            "preds_diff_1layer": one["preds_diff"]}
    for alpha, key in ((0.5, "ood_gd_loss_alpha0.5"), (2.0, "ood_gd_loss_alpha2")):
        if alpha in ood["alpha"]:
            ours[key] = ood["GD 1 step"][ood["alpha"].index(alpha)]
    rows = [[v["quantity"], v["source"], v["value"], v.get("tolerance", "—"), ours[v["key"]]]
            for v in sources() if v["kind"] == "authors-code" and v["key"] in ours]
    report.table(["quantity", "source (authors' released code, not the paper)", "value", "± reading", "icgd"], rows,
                 "Constants and plot outputs of the authors' notebooks (google-research/self-organising-systems, "
                 "transformers_learn_icl_by_gd). They are not numbers of the paper, so they stand here and not in "
                 "the paper table above. Ours are on our own tasks (different draws from the same distribution).")


# ------------------------------------------------------------------------------------------------- figures


def fig_curves(report: Report) -> None:
    m, s = report.metrics, report.settings
    c, a, one = m["curve"], m["curve"]["align"], m["one_layer"]
    k = min(s["track_tasks"], s["eval_tasks"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(c["step"], c["eval_loss"], color="C3", alpha=0.5, label="LSA, trainer's held-out tasks")
    axes[0].axhline(c["trainer_gd_loss"], color="C3", ls=":", lw=1, label="GD, trainer's held-out tasks")
    axes[0].plot(a["step"], a["loss"], "o-", color="C0", label=f"LSA, validation tasks (first {k})")
    axes[0].axhline(one["gd_loss_track_tasks"], color="0.3", ls="--", label=f"GD, validation tasks (first {k})")
    axes[0].set(xlabel="training step", ylabel="½-MSE", yscale="log", title="loss")
    axes[0].legend(fontsize=7)
    axes[1].plot(a["step"], a["model_cos"], "o-", color="C0")
    axes[1].axhline(1.0, color="0.6", lw=0.8)
    axes[1].set(xlabel="training step", ylabel="model cos (LSA vs GD)", title="model cos")
    axes[2].plot(a["step"], a["preds_diff_gd"], "o-", color="C2")
    axes[2].set(xlabel="training step", ylabel="preds diff (LSA vs GD)", yscale="log", title="preds diff")
    report.figure(fig, "one_layer_training", "1-layer LSA during training. Markers and the dashed GD line: the first "
                  f"{k} of the report's validation tasks (the GD step size line-searched on the tune tasks); the "
                  f"faint curve and dotted line: the trainer's own {s['trainer_eval']} held-out tasks and its own GD "
                  "baseline (a different draw, hence a slightly different GD level). The tables use all "
                  f"{s['eval_tasks']} validation tasks.")


def fig_weights(report: Report) -> None:
    w = report.metrics["weights"]
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 7.5))
    for row, key, label in ((0, "W_KQ", r"$W_K^\top W_Q$ / β"), (1, "W_PV", r"β · $P W_V$")):
        v = max(float(np.abs(np.asarray(w[key])).max()), float(np.abs(np.asarray(w[key + "_constructed"])).max()))
        heatmap(axes[row, 0], w[key], f"trained LSA: {label}", v)
        heatmap(axes[row, 1], w[key + "_constructed"], f"construction (Prop. 1): {label}", v)
    report.figure(fig, "weights", "Weights of the trained 1-layer LSA (left) beside the GD construction with the "
                  "line-searched η (right), both rescaled by β = mean diagonal of the x-block of W_KQ (the layer "
                  "is invariant under W_KQ/β, β·W_PV). Tokens are (x₁…x_d, y).")


def fig_deep(report: Report) -> None:
    deep, s = report.metrics["deep"], report.settings
    k = min(s["track_tasks"], s["eval_tasks"])
    fig, axes = plt.subplots(2, len(deep), figsize=(5.2 * len(deep), 6.8), squeeze=False)
    for col, r in enumerate(deep):
        t = r["track"]
        kind = "recurrent" if r["shared"] else "non-recurrent"
        ax = axes[0][col]
        ax.plot(t["step"], t["loss"], "o-", color="C3", label="trained LSA")
        ax.axhline(r["loss_gd"], color="0.3", ls="--", label=f"GD, {r['layers']} steps")
        ax.axhline(r["loss_gdpp"], color="C1", ls=":", label=f"GD++, {r['layers']} steps")
        ax.set(xlabel="training step", ylabel="½-MSE", yscale="log", title=f"{r['layers']}-layer LSA ({kind})")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        ax.plot(t["step"], t["preds_diff_gd"], "o-", color="0.3", label="preds diff to GD")
        ax.plot(t["step"], t["preds_diff_gdpp"], "o-", color="C1", label="preds diff to GD++")
        ax.set(xlabel="training step", ylabel="preds diff", yscale="log")
        ax.legend(fontsize=7)
    report.figure(fig, "multi_layer", "Multi-layer LSA during training against as many line-searched GD steps and "
                  "GD++ steps (tied η, γ for the recurrent model, per-layer for the non-recurrent one). Curves: the "
                  f"first {k} validation tasks; horizontal lines: GD and GD++ on all {s['eval_tasks']} validation "
                  "tasks (the level on the first ones differs by sampling noise only).")


def fig_ood(report: Report) -> None:
    o = report.metrics["ood"]
    fig, ax = plt.subplots(figsize=(6.2, 4))
    for i, (k, v) in enumerate((k, v) for k, v in o.items() if k not in ("alpha", "gaps")):
        style = "-" if k.startswith("LSA") else "--"
        ax.plot(o["alpha"], v, style, marker="o", ms=3, color=f"C{i}", label=k)
    ax.axvline(1.0, color="0.7", lw=0.8)
    ax.set(xlabel="input scale α (x ~ U(−α/2, α/2)); training at α = 1", ylabel="½-MSE", yscale="log",
           title="out-of-distribution inputs")
    ax.legend(fontsize=7)
    report.figure(fig, "ood_scaling", "Loss when the inputs are scaled by α at test time, on "
                  f"{report.settings['ood_tasks']} tasks drawn anew at each α (not the validation tasks). GD keeps "
                  "the step sizes line-searched at α = 1, as the trained models keep their weights.")


# ------------------------------------------------------------------------------------------------- tables


def table_one_layer(report: Report) -> None:
    one = report.metrics["one_layer"]
    report.table(["quantity", "value"], [
        ["½-MSE trained LSA", one["loss_lsa"]], ["½-MSE one GD step (line-searched)", one["loss_gd"]],
        ["½-MSE GD construction (LSA weights of Prop. 1)", one["loss_construction"]],
        ["½-MSE predicting 0", one["loss_zero"]], ["relative gap LSA − GD", one["rel_gap"]],
        ["model cos", one["model_cos"]], ["model diff", one["model_diff"]], ["preds diff", one["preds_diff"]],
        ["η line-searched", one["eta_gd"]], ["η read off the trained weights", one["eta_lsa"]],
        ["β (mean diag of trained W_KQ x-block)", one["beta"]],
        ["‖W_KQ/β − construction‖ / ‖construction‖", one["kq_distance"]],
        ["‖β W_PV − construction‖ / ‖construction‖", one["pv_distance"]],
        ["training time (s)", one["train_seconds"]],
    ], f"All on the {report.settings['eval_tasks']} validation tasks. η in icgd's convention (the layer divides by "
       "N; the paper's P = η/N).")


def table_deep(report: Report) -> None:
    rows = [[f"{r['layers']}{' (recurrent)' if r['shared'] else ''}", r["steps"], r["loss_lsa"], r["loss_gd"],
             r["loss_gdpp"], r["loss_gdpp_tied"], r["model_cos_gd"], r["model_cos_gdpp"], r["preds_diff_gd"],
             r["preds_diff_gdpp"], ", ".join(f"{v:.2f}" for v in r["eta_gdpp"]),
             ", ".join(f"{v:.2f}" for v in r["gamma_gdpp"]), r.get("gamma_lsa", "—"), r["train_seconds"]]
            for r in report.metrics["deep"]]
    report.table(["layers", "steps", "LSA loss", "GD loss", "GD++ loss", "GD++ tied loss", "cos GD", "cos GD++",
                  "preds diff GD", "preds diff GD++", "GD++ η_l", "GD++ γ_l", "LSA γ", "train s"], rows,
                 f"All on the {report.settings['eval_tasks']} validation tasks. GD++: tied (η, γ) for the recurrent "
                 "model, per-layer (η_l, γ_l) fitted by Adam for the non-recurrent one ('GD++ tied' is the tied "
                 "grid optimum for comparison). γ in icgd's normalised convention (paper's γ × N). LSA γ: read off "
                 "the trained recurrent layer (−x-block of β·P W_V).")


def table_ood(report: Report) -> None:
    ood = report.metrics["ood"]
    keys = [k for k in ood if k not in ("alpha", "gaps")]
    report.table(["α", *keys], [[a, *(ood[k][i] for k in keys)] for i, a in enumerate(ood["alpha"])],
                 f"½-MSE at inputs x ~ U(−α/2, α/2), {report.settings['ood_tasks']} tasks drawn anew at each α "
                 "(at α = 1 an independent draw from the training distribution, not the validation tasks).")


def ood_text(report: Report) -> str:
    """Where each deep LSA stops tracking its GD out of distribution (loss above twice GD's), and whether it tracks
    GD++ (which shares its input transformation) instead."""
    ood, parts = report.metrics["ood"], []
    for r in report.metrics["deep"]:
        lsa = f"LSA {r['layers']}{' rec.' if r['shared'] else ''}"
        gd, pp = f"GD {r['layers']} steps", f"GD++ {r['layers']} steps"
        bad = [(a, x, y) for a, x, y in zip(ood["alpha"], ood[lsa], ood[gd]) if x > 2 * y]
        last = len(ood["alpha"]) - 1
        parts.append(f"{lsa}: " + (f"from α = {bad[0][0]:g} (loss {bad[0][1]:.3g} vs GD {bad[0][2]:.3g})" if bad
                                   else "nowhere in the range")
                     + f"; at α = {ood['alpha'][last]:g} LSA {ood[lsa][last]:.3g}, GD++ {ood[pp][last]:.3g}, "
                     f"GD {ood[gd][last]:.3g}")
    if not parts:
        return ""
    return ("**Deep models out of distribution.** Where the loss of a trained deep LSA first exceeds twice that of "
            "as many GD steps (tuned at α = 1): " + "; ".join(parts) + ". GD++ with the step sizes and γ tuned at "
            "α = 1 blows up as well: its input transformation I − γ XXᵀ overshoots once XXᵀ is larger than in "
            "training. A deep LSA that follows GD++ in distribution is expected to fail out of distribution in "
            "the same way; how closely it does so is in the table above.")


def render(report: Report, s, paper) -> None:
    scale = report.meta.get("scale", "")
    report.text(what_was_run(s, scale))
    if scale != "paper":
        report.text(reduced_vs_paper(s, paper))
    if scale == "cpu":
        report.text(paper_scale_estimate(report.meta, s, paper, report.metrics))
    claim_one_layer(report)
    claim_deep(report)
    claim_ood(report)
    paper_rows(report, s)
    report.heading("Values from the authors' released code")
    code_table(report)
    report.heading("One layer: trained LSA vs one GD step")
    table_one_layer(report)
    fig_curves(report)
    fig_weights(report)
    if report.metrics["deep"]:
        report.heading("Several layers: LSA vs GD and GD++")
        table_deep(report)
        fig_deep(report)
    report.heading("Out-of-distribution input scaling")
    table_ood(report)
    text = ood_text(report)
    if text:
        report.text(text)
    fig_ood(report)
