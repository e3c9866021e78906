"""The ``icgd`` command line. Errors print one line on stderr and exit with status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

import icgd
from icgd.errors import ICGDError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="icgd: transformers that run gradient descent in context, checked against autograd.")
console = Console()

DeviceOpt = typer.Option("cpu", "--device", help="torch device: cpu, cuda, cuda:1, …")


@app.command()
def version() -> None:
    """Print the icgd and torch versions."""
    console.print(f"icgd {icgd.__version__} (torch {torch.__version__})")


def _layer_table(summary: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("layer", "role", "kind", "heads / width", "D", "nonzero params"):
        table.add_column(col, justify="left" if col in ("kind", "role") else "right")
    for row in summary:
        size = row["heads"] if row["heads"] is not None else row["width"]
        table.add_row(str(row["index"]), row.get("role", ""), row["kind"], str(size), str(row["dim"]),
                      f"{row['params']:,}")
    return table


def _error_table(res) -> Table:
    table = Table(title="transformer vs autograd GD, per step")
    for col in ("step", "rel. weight error", "loss (transformer)", "loss (autograd)"):
        table.add_column(col, justify="right")
    for l, (e, a, b) in enumerate(zip(res.rel_error, res.loss_tf, res.loss_gd)):
        table.add_row(str(l), f"{e:.2e}", f"{a:.6f}", f"{b:.6f}")
    return table


@app.command()
def demo(
    out: Path = typer.Option(Path("demo.png"), "--out", help="where to save the figure"),
    seed: int = typer.Option(0, "--seed", help="seed of the task and of w0"),
    knots: int = typer.Option(256, "--knots", help="ReLU units per sum-of-ReLU fit"),
    device: str = DeviceOpt,
) -> None:
    """A 3-layer sigmoid network trained for 10 GD steps inside a constructed transformer's forward pass."""
    from icgd.experiments.wu_construction import ConstructionConfig, run_construction
    from icgd.plots import plot_demo

    cfg = ConstructionConfig(depth=3, width=8, d_in=3, d_out=3, steps=10, eta=2.0, knots=knots, box=1.0, n=50,
                             seed=seed, device=device)
    console.print(f"[bold]icgd demo[/bold]: Wu et al.'s construction, {cfg.depth}-layer sigmoid net "
                  f"(d_in={cfg.d_in}, width={cfg.width}, d_out={cfg.d_out}), n={cfg.n} points, {cfg.steps} GD steps, "
                  f"eta={cfg.eta}, box={cfg.box}, knots={knots}")
    res = run_construction(cfg)
    n_layers = len(res.summary)
    console.print(_layer_table(res.summary[: 2 * cfg.depth + 4], f"one GD step = {2 * cfg.depth + 4} layers "
                               f"(of {n_layers} in all, read-out included)"))
    console.print(_error_table(res))
    console.print(f"final relative weight error vs autograd GD: [bold]{res.final_error:.2e}[/bold]; "
                  f"held-out prediction error max|ŷ_TF − ŷ_GD| = {res.pred_error:.2e}")
    console.print(f"time: transformer forward {res.seconds_tf * 1e3:.1f} ms, autograd GD {res.seconds_gd * 1e3:.1f} ms")
    console.print(f"saved {plot_demo(res, out)}")


@app.command()
def construct(
    kind: str = typer.Argument("deep", help="deep (Wu), linear / gdpp (von Oswald), ridge / sgd (Akyürek), "
                                            "functional (Cheng), convex (Bai)"),
    depth: int = typer.Option(3, "--depth", help="deep: N, number of weight layers"),
    width: int = typer.Option(8, "--width", help="deep: K, hidden width"),
    d_in: Optional[int] = typer.Option(None, "--d-in", help="input dimension (deep: 3, others: 5)"),
    d_out: int = typer.Option(3, "--d-out", help="deep: output dimension"),
    activation: str = typer.Option("sigmoid", "--activation", help="deep: sigmoid, tanh, relu, gelu, softplus, "
                                                                    "identity"),
    steps: Optional[int] = typer.Option(None, "--steps", help="GD steps (deep: 10, others: 3)"),
    eta: Optional[float] = typer.Option(None, "--eta", help="learning rate (deep: 2.0, others: 0.3)"),
    gamma: float = typer.Option(0.5, "--gamma", help="gdpp: curvature correction γ (normalised by n)"),
    lam: float = typer.Option(0.1, "--lam", help="ridge / sgd / convex: regularisation λ"),
    kernel: str = typer.Option("rbf", "--kernel", help="functional: linear, relu, exp or rbf"),
    bandwidth: float = typer.Option(1.0, "--bandwidth", help="functional: rbf bandwidth"),
    loss: str = typer.Option("squared", "--loss", help="convex: squared or logistic"),
    variant: str = typer.Option("exact", "--variant", help="ridge / sgd: exact or faithful (GeLU, LayerNorm)"),
    knots: int = typer.Option(64, "--knots", help="deep / convex logistic: ReLU units per fitted function"),
    box: Optional[float] = typer.Option(1.0, "--box", help="deep: projection box |w| <= B; 0 for no projection"),
    n: Optional[int] = typer.Option(None, "--n", help="context points (deep: 50, others: 20)"),
    seed: int = typer.Option(0, "--seed"),
    sweep: str = typer.Option("16,32,64,128,256", "--sweep", help="deep: knots for the error-vs-knots plot "
                                                                  "('' to skip)"),
    out_dir: Path = typer.Option(Path("construct-out"), "--out-dir", help="deep: where to save the plots"),
    data: Optional[Path] = typer.Option(None, "--data", help="deep: run on your data instead of a random teacher: "
                                        "CSV with a header (last --targets columns are Y) or .npz with X and Y"),
    targets: int = typer.Option(1, "--targets", help="deep --data: number of target columns at the end of the CSV"),
    device: str = DeviceOpt,
) -> None:
    """Build a construction, run it on random prompts (or --data) and compare it with the algorithm it encodes."""
    from icgd._checks import positive_int
    from icgd.experiments.linear_constructions import KINDS

    for flag, value in (("--steps", steps), ("--n", n), ("--d-in", d_in)):
        if value is not None:
            positive_int(value, flag)
    if data is not None and kind != "deep":
        raise ICGDError(f"--data works with `icgd construct deep` only, not {kind!r}")
    if kind == "deep" and data is not None:
        _construct_deep_data(data, targets, depth, width, activation, 10 if steps is None else steps,
                             2.0 if eta is None else eta, knots, box, seed, out_dir, device)
    elif kind == "deep":
        _construct_deep(depth, width, d_in or 3, d_out, activation, 10 if steps is None else steps,
                        2.0 if eta is None else eta, knots, box, n or 50, seed, sweep, out_dir, device)
    elif kind in KINDS:
        from icgd.experiments.linear_constructions import LinearCheckConfig, run_linear_check

        cfg = LinearCheckConfig(kind=kind, d_in=d_in or 5, n=n or 20, steps=3 if steps is None else steps,
                                eta=0.3 if eta is None else eta, gamma=gamma, lam=lam, kernel=kernel,
                                bandwidth=bandwidth, loss=loss, knots=knots, variant=variant, seed=seed)
        res = run_linear_check(cfg)
        console.print(_layer_table(res.summary, f"{kind}: {len(res.summary)} layers"))
        console.print(f"reference: {res.reference}")
        console.print(f"max |ŷ_transformer − ŷ_reference| = [bold]{res.max_abs_error:.2e}[/bold] "
                      f"(relative {res.rel_error:.2e}) on {cfg.batch} prompts × {cfg.m} queries, n = {cfg.n}; "
                      f"forward pass {res.seconds * 1e3:.1f} ms")
    else:
        raise ICGDError(f"unknown construction {kind!r}; available: deep, {', '.join(KINDS)}")


def _check_deep_memory(spec, knots: int, box, tokens: int, device: str) -> None:
    """Refuse an absurd construction before the autograd reference is computed (see icgd.memory)."""
    from icgd._checks import positive_int
    from icgd.constructions.wu import deep_gd_memory

    knots = positive_int(knots, "--knots", minimum=2)
    deep_gd_memory(spec, knots=knots, box=box or None, batch=1, tokens=tokens,
                   what=f"deep_gd(width={spec.width}, depth={spec.depth}, knots={knots})").check(device)


def _construct_deep_data(path, targets, depth, width, activation, steps, eta, knots, box, seed, out_dir,
                         device) -> None:
    """`icgd construct deep --data PATH`: the construction on the user's (X, Y) vs autograd GD from the same w0."""
    from icgd.data import construct_on_data, read_xy
    from icgd.plots import plot_error_vs_step

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ICGDError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    X, Y = read_xy(path, targets)
    res = construct_on_data(X, Y, depth=depth, width=width, activation=activation, steps=steps, eta=eta,
                            knots=knots, box=box or None, seed=seed, device=device)
    console.print(f"data: {path} — n = {X.shape[0]} points, d_in = {X.shape[1]}, d_out = {Y.shape[1]}")
    console.print(_layer_table(res.summary[: 2 * depth + 4], f"one GD step = {2 * depth + 4} layers (of "
                                                             f"{len(res.summary)} in all, read-out included)"))
    console.print(_error_table(res))
    console.print(f"fit intervals R_j = {', '.join(f'{r:.3g}' for r in res.fit_ranges)}; final relative error "
                  f"[bold]{res.final_error:.2e}[/bold]; max |f(w̄_L, x_i) − f(w_L, x_i)| = {res.pred_error:.2e}")
    console.print(f"saved {plot_error_vs_step(res, out_dir / 'error_vs_step.png')}")


def _construct_deep(depth, width, d_in, d_out, activation, steps, eta, knots, box, n, seed, sweep, out_dir,
                    device) -> None:
    from icgd.experiments.wu_construction import ConstructionConfig, knots_sweep, run_construction
    from icgd.plots import plot_error_vs_knots, plot_error_vs_step

    try:
        sweep_knots = [int(k) for k in sweep.split(",") if k.strip()]
    except ValueError:
        raise ICGDError(f"--sweep must be a comma-separated list of integers, got {sweep!r}") from None
    cfg = ConstructionConfig(depth=depth, width=width, d_in=d_in, d_out=d_out, activation=activation, steps=steps,
                             eta=eta, knots=knots, box=box or None, n=n, seed=seed, device=device)
    _check_deep_memory(cfg.spec, max([knots, *sweep_knots]), box, n + cfg.m, device)
    res = run_construction(cfg)
    console.print(_layer_table(res.summary, f"{len(res.summary)} layers: {steps} GD steps × {2 * depth + 4} + "
                                            f"{depth} read-out"))
    console.print(_error_table(res))
    console.print(f"fit intervals R_j = {', '.join(f'{r:.3g}' for r in res.fit_ranges)}; final relative error "
                  f"[bold]{res.final_error:.2e}[/bold]; prediction error {res.pred_error:.2e}")
    console.print(f"saved {plot_error_vs_step(res, out_dir / 'error_vs_step.png')}")
    if sweep_knots:
        errors, slope = knots_sweep(cfg, sweep_knots)
        table = Table(title="final relative error vs knots")
        table.add_column("knots", justify="right")
        table.add_column("error", justify="right")
        for k, e in zip(sweep_knots, errors):
            table.add_row(str(k), f"{e:.2e}")
        console.print(table)
        console.print(f"log-log slope {slope:.2f} (piecewise-linear interpolation predicts −2)")
        console.print(f"saved {plot_error_vs_knots(sweep_knots, errors, slope, out_dir / 'error_vs_knots.png')}")


@app.command()
def train(
    preset: Optional[str] = typer.Option(None, "--preset", help="a named configuration (icgd train --list)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/PRESET)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="total training steps"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, …"),
    log_every: Optional[int] = typer.Option(None, "--log-every"),
    save_every: Optional[int] = typer.Option(None, "--save-every"),
    config: Optional[Path] = typer.Option(None, "--config", help="a TOML (or .json) file of config keys"),
    set_: list[str] = typer.Option([], "--set", help="key=value (repeatable); task_kwargs.noise=0.1 for tables"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this folder"),
    force: bool = typer.Option(False, "--force", help="resume even if the config differs from the checkpoint's"),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="also log to DIR/tb (needs tensorboard)"),
    list_: bool = typer.Option(False, "--list", help="list the presets and exit"),
    deterministic: bool = typer.Option(False, "--deterministic", help="torch.use_deterministic_algorithms(True) "
                                       "(+ CUBLAS_WORKSPACE_CONFIG): bitwise-repeatable GPU runs, slower; fails on "
                                       "ops without a deterministic kernel"),
) -> None:
    """Meta-train a transformer on random prompts; metrics.jsonl compares it with baselines on the same prompts."""
    import os

    from icgd.train import PRESETS, build_config
    from icgd.train import resume as resume_run
    from icgd.train import train as train_run

    if list_:
        for name in sorted(PRESETS):
            console.print(name)
        return
    if deterministic:  # process-wide, before any CUDA work (cuBLAS reads the variable at its first call)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    flags = {"seed": seed, "device": device, "log_every": log_every, "save_every": save_every}
    flags = {k: v for k, v in flags.items() if v is not None}
    if tensorboard:
        flags["tensorboard"] = True
    if resume is not None:
        if preset or config or set_:
            raise ICGDError("--resume continues a run with its saved config; drop --preset/--config/--set")
        trainer = resume_run(resume, steps=steps, force=force, overrides=flags)
    else:
        if not preset and not config:
            raise ICGDError("give --preset NAME (see icgd train --list) or --config FILE.toml, or --resume DIR")
        overrides = [*set_, *(f"{k}={json.dumps(v)}" for k, v in flags.items())]
        if steps is not None:
            overrides.append(f"steps={steps}")
        cfg = build_config(preset, config, overrides)
        trainer = train_run(cfg, out or Path("runs") / (preset or config.stem))
    last = trainer.metrics.read()[-1] if trainer.metrics.read() else None
    if last and trainer.rank == 0:
        base = ", ".join(f"{k} {v:.4g}" for k, v in last["baselines"].items())
        console.print(f"step {last['step']}: train {last['train_loss']:.4g}, eval {last['eval_loss']:.4g} "
                      f"(baselines: {base}); run folder {trainer.out}")


@app.command()
def reproduce(
    name: Optional[str] = typer.Argument(None, help="wu2025 | vonoswald2023 | akyurek2023 | cheng2024 | garg2022"),
    scale: str = typer.Option("smoke", "--scale", help="smoke (< 2 min), cpu (≤ 45 min on 2 cores), paper (GPU)"),
    out: Optional[Path] = typer.Option(None, "--out", help="report folder (default runs/reproduce/NAME-SCALE)"),
    device: str = DeviceOpt,
    seed: int = typer.Option(0, "--seed"),
    set_: list[str] = typer.Option([], "--set", help="override a setting of the scale: key=value (repeatable)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing report folder"),
    list_: bool = typer.Option(False, "--list", help="list the experiments and exit"),
) -> None:
    """Reproduce a paper: run it, then write report.md, report.html, figures (PNG + SVG) and metrics (JSON + CSV)."""
    from icgd.experiments.reproduce import describe, run_experiment

    if list_:
        for key, title in describe():
            console.print(f"[bold]{key}[/bold]  {title}")
        return
    if name is None:
        raise ICGDError("name an experiment (icgd reproduce --list) or pass --list")
    files = run_experiment(name, scale, out or Path("runs") / "reproduce" / f"{name}-{scale}", device=device,
                           seed=seed, overrides=set_, force=force, log=console.print)
    console.print(f"wrote {files[0]} and {len(files) - 1} more files in {files[0].parent}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a folder written by icgd reproduce")) -> None:
    """Rebuild a reproduction's report and figures from its saved metrics.json (nothing is rerun)."""
    from icgd.experiments.reproduce import rebuild_report

    files = rebuild_report(run_dir)
    console.print(f"wrote {files[0]} and {len(files) - 1} more files in {files[0].parent}")


@app.command()
def compare(
    a: Path = typer.Argument(..., help="first reproduction folder"),
    b: Path = typer.Argument(..., help="second reproduction folder"),
) -> None:
    """Compare the metrics of two reproduction folders side by side (last value of each curve)."""
    from icgd.experiments.reproduce import compare_runs

    header, rows = compare_runs(a, b)
    table = Table(*header, title=f"{a} vs {b}")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
def analyze(
    run_dir: Path = typer.Argument(..., help="a run folder written by icgd train --out"),
    candidates: str = typer.Option("gd:1-4,ridge:0.1,ols", "--candidates",
                                   help="gd:K or gd:A-B, ridge[:λ], ols, newton[:K], averaging, knn[:k], "
                                        "kernel:NAME, ntk[:λ] (comma-separated)"),
    out: Optional[Path] = typer.Option(None, "--out", help="heat-map PNG (default RUN_DIR/alignment.png)"),
    prompts: int = typer.Option(512, "--prompts", help="held-out prompts of the run's task"),
    readout: str = typer.Option("auto", "--readout", help="auto | lens | probe"),
) -> None:
    """Layer by layer: which learning algorithm does each block of a trained model's read-out match (R²)?"""
    from icgd.mechanism import analyze_run

    result = analyze_run(run_dir, candidates, out or Path(run_dir) / "alignment.png", prompts=prompts,
                         readout=readout)
    console.print(result.alignment.rich_table())
    console.print(f"wrote {result.figure}")


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="the short run (< 3 minutes on 2 CPU cores)"),
    device: str = DeviceOpt,
    out: Path = typer.Option(Path("benchmarks/RESULTS.md"), "--out", help="markdown file; the figure goes beside it"),
    threads: int = typer.Option(1, "--threads", help="torch threads, 0: torch's default (1 by default: robust on a "
                                                      "shared 2-core machine; use 2 on an idle one)"),
    only: list[str] = typer.Option([], "--only", help="run only this section (repeatable): training, construction, "
                                                      "learners"),
) -> None:
    """Benchmarks side by side: ICLTransformer vs HuggingFace GPT2Model, the construction vs autograd GD, batched
    learners vs a per-prompt loop; writes RESULTS.md and a figure (the HF anchor needs the optional bench extra,
    i.e. the transformers package)."""
    from icgd.bench import SECTIONS, bench_config, run_bench

    cfg = bench_config(quick, device, threads, only or SECTIONS)
    words = ["icgd", "bench", *(["--quick"] if quick else []), "--device", device, "--out", str(out),
             "--threads", str(threads), *(w for s in only for w in ("--only", s))]
    md, fig = run_bench(cfg, out, command=" ".join(words),
                        log=lambda msg: console.print(msg, markup=False, highlight=False))
    console.print(f"wrote {md} and {fig}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _aborted() -> None:
    print("icgd: aborted (a training run saved a checkpoint at its last completed step; continue it with "
          "icgd train --resume DIR)", file=sys.stderr)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning usage errors and icgd errors into one line and exit code 2
    (``--debug`` anywhere on the command line shows the traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        app(args=argv, standalone_mode=False)
        return
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.Abort:
        _aborted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ICGDError as exc:
        print(f"icgd: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # the file system refused (permissions, a full disk): not a bug of icgd
        print(f"icgd: error: {_one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's usage errors
            message = exc.format_message()
            if not message:  # `icgd` alone: the help was shown
                sys.exit(0)
            print(f"icgd: error: {_one_line(message)}", file=sys.stderr)
            sys.exit(2)
        raise
    if result == 130:  # typer reports Ctrl-C as exit code 130
        _aborted()
    if isinstance(result, int) and result:
        sys.exit(result)


if __name__ == "__main__":
    main()
