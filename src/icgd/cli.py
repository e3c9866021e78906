"""The ``icgd`` command line. Errors print one line on stderr and exit with status 2.

Nothing heavy is imported at module level: torch, matplotlib and the rest of icgd load inside the command that
needs them, so ``icgd --help``, ``icgd COMMAND --help``, ``icgd --version`` and ``icgd version`` start at once.
One function per command; each command's help ends with examples.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from icgd import __version__
from icgd.errors import ICGDError


def _no_bool_metavar(param):
    """Flags take no value, so their help shows no ``<bool>`` type (recent typer versions print one)."""
    if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
        param.metavar = ""
    return param


class _Command(TyperCommand):
    def get_params(self, ctx):
        return [_no_bool_metavar(p) for p in super().get_params(ctx)]


class _Group(TyperGroup):
    def get_params(self, ctx):
        return [_no_bool_metavar(p) for p in super().get_params(ctx)]


def _examples(pairs: list[tuple[str, str]]) -> str:
    """An epilog: each command on its own line, what it does indented below it."""
    return "Examples:\n" + "\n".join(f"  {cmd}\n      {what}" for cmd, what in pairs)


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="rich",
                  help="icgd: transformers that run gradient descent in context, checked against autograd.\n\n"
                       "Start with [bold]icgd demo[/bold]; every command has examples at the end of its --help.",
                  epilog=_examples([
                      ("icgd demo", "a 3-layer network trained by GD inside a 103-layer transformer (about 5 s)"),
                      ("icgd construct linear", "von Oswald et al.'s construction against GD"),
                      ("icgd train --list", "the training presets, their size and expected CPU time"),
                      ("icgd reproduce vonoswald2023 --scale smoke", "a paper's experiment and its report"),
                      ("icgd COMMAND --help", "options and examples of one command"),
                  ]))


def _command(examples: list[tuple[str, str]], **kw):
    """``@app.command`` with the no-``<bool>`` help and the examples as the help's epilog."""
    return app.command(cls=_Command, epilog=_examples(examples), **kw)


def _console():
    from rich.console import Console

    return Console()


def _torch_version() -> str:
    """torch's version from its package metadata (importing torch takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def _print_version(value: bool) -> None:
    if value:
        print(f"icgd {__version__} (torch {_torch_version()})")
        raise typer.Exit()


@app.callback()
def _main(
    version_: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                  help="Print the icgd and torch versions and exit."),
) -> None:
    """icgd: transformers that run gradient descent in context, checked against autograd."""


DEVICE_HELP = "torch device: cpu, cuda, cuda:1, …"


@_command([("icgd version", "e.g. icgd 0.1.0 (torch 2.5.1+cpu)"), ("icgd --version", "the same")])
def version() -> None:
    """Print the icgd and torch versions."""
    print(f"icgd {__version__} (torch {_torch_version()})")


# ---------------------------------------------------------------------------------------------------- tables


def _layer_table(rows: list[dict], title: str, full: bool = False):
    """The layer inventory; a block repeated per GD step is shown once unless `full`."""
    from icgd.layers.summary import LayerTable

    table = LayerTable(rows, title=title)
    return table.to_rich(full=full)


def _error_table(res):
    from rich.table import Table

    table = Table(title="transformer vs autograd GD, per step")
    for col in ("step", "rel. weight error", "loss (transformer)", "loss (autograd)"):
        table.add_column(col, justify="right")
    for l, (e, a, b) in enumerate(zip(res.rel_error, res.loss_tf, res.loss_gd)):
        table.add_row(str(l), f"{e:.2e}", f"{a:.6f}", f"{b:.6f}")
    return table


def _check_cuda(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ICGDError(f"--device {device} was asked for but no CUDA device is available; use --device cpu")


# ---------------------------------------------------------------------------------------------------- demo


@_command([("icgd demo", "writes demo.png; final relative error 7.4e-5"),
           ("icgd demo --knots 64 --out demo64.png", "coarser fits: final error 1.2e-3 (it falls as 1/knots²)")])
def demo(
    out: Path = typer.Option(Path("demo.png"), "--out", help="Where to save the figure (PNG)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random teacher network, the data and w0."),
    knots: int = typer.Option(256, "--knots", help="ReLU units per sum-of-ReLU fit of the activation (error "
                                                   "falls as 1/knots²)."),
    all_layers: bool = typer.Option(False, "--all-layers", help="List every layer instead of one GD step's."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
) -> None:
    """A 3-layer sigmoid network trained by 10 GD steps inside a transformer's forward pass, against autograd."""
    from icgd.experiments.wu_construction import ConstructionConfig, run_construction
    from icgd.plots import plot_demo

    console = _console()
    cfg = ConstructionConfig(depth=3, width=8, d_in=3, d_out=3, steps=10, eta=2.0, knots=knots, box=1.0, n=50,
                             seed=seed, device=device)
    console.print(f"[bold]icgd demo[/bold]: Wu et al.'s construction, {cfg.depth}-layer sigmoid net "
                  f"(d_in={cfg.d_in}, width={cfg.width}, d_out={cfg.d_out}), n={cfg.n} points, {cfg.steps} GD steps, "
                  f"eta={cfg.eta}, box={cfg.box}, knots={knots}")
    res = run_construction(cfg)
    console.print(_layer_table(res.summary, f"{len(res.summary)} layers: {cfg.steps} GD steps × "
                                            f"{2 * cfg.depth + 4} + {cfg.depth} read-out", all_layers))
    console.print(_error_table(res))
    console.print(f"final relative weight error vs autograd GD: [bold]{res.final_error:.2e}[/bold]; "
                  f"held-out prediction error max|ŷ_TF − ŷ_GD| = {res.pred_error:.2e}")
    console.print(f"time: transformer forward {res.seconds_tf * 1e3:.1f} ms, autograd GD {res.seconds_gd * 1e3:.1f} ms")
    console.print(f"saved {plot_demo(res, out)}")


# ---------------------------------------------------------------------------------------------------- construct

DEEP = "deep"
DEEP_ONLY = ("--sweep", "--out", "--data", "--targets", "--device")  # the deep command's plots, data and device
NOT_WITH_DATA = ("--d-in", "--d-out", "--n", "--sweep")  # deep --data: these come from the file


def _flags(kind: str) -> set[str]:
    """The options `kind` uses: the registry's common options and its own, plus the deep command's extras."""
    from icgd.constructions.registry import COMMON, get

    names = {**COMMON, **get(kind).options}
    return {"--" + k.replace("_", "-") for k in names} | (set(DEEP_ONLY) if kind == DEEP else set())


def _check_applies(kind: str, given: dict[str, object]) -> None:
    """Refuse options that the chosen kind would silently ignore (an unknown kind lists the registry)."""
    from icgd.constructions.registry import REGISTRY

    usable = _flags(kind)
    for flag, value in given.items():
        if value is None or flag in usable:
            continue
        kinds = ", ".join(k for k in REGISTRY if flag in _flags(k))
        raise ICGDError(f"{flag} does not apply to `icgd construct {kind}` (it is used by: {kinds}); drop it")
    if kind == "convex" and given.get("--knots") is not None and given.get("--loss") != "logistic":
        raise ICGDError("--knots applies to `icgd construct convex` only with --loss logistic (the squared loss "
                        "needs no fitted function); drop it or add --loss logistic")
    if given.get("--targets") is not None and given.get("--data") is None:
        raise ICGDError("--targets applies only with --data FILE; drop it or add --data")
    if given.get("--data") is not None:
        for flag in NOT_WITH_DATA:
            if given.get(flag) is not None:
                raise ICGDError(f"{flag} does not apply with --data (the data file sets the sizes); drop it")


@_command([
    ("icgd construct", "Wu et al.: a 3-layer sigmoid net, 10 GD steps, 103 layers; plots in construct-out/"),
    ("icgd construct deep --depth 2 --width 4 --activation tanh --out plots", "another network, plots in plots/"),
    ("icgd construct deep --data mydata.csv", "on your data (CSV with a header, last column y)"),
    ("icgd construct linear --d-in 5 --steps 3", "von Oswald et al.: one linear-attention layer per GD step"),
    ("icgd construct ridge --lam 0.1 --all-layers", "Akyürek et al.'s ridge regression, all 243 layers listed"),
    ("icgd construct functional --kernel exp", "Cheng et al.: kernel attention runs functional GD"),
], no_args_is_help=False)
def construct(
    kind: str = typer.Argument(DEEP, help="deep / deep_softmax (Wu et al.), linear / gdpp (von Oswald et al.), "
                                          "ridge / sgd (Akyürek et al.), functional (Cheng et al.), convex (Bai et "
                                          "al.): the names of icgd.constructions.registry"),
    depth: Optional[int] = typer.Option(None, "--depth", help="deep: N, weight layers of the trained network "
                                                              "\\[default: 3]"),
    width: Optional[int] = typer.Option(None, "--width", help="deep: K, its hidden width \\[default: 8]"),
    d_in: Optional[int] = typer.Option(None, "--d-in", help="Input dimension \\[default: deep 3, others 5]"),
    d_out: Optional[int] = typer.Option(None, "--d-out", help="deep: output dimension \\[default: 3]"),
    activation: Optional[str] = typer.Option(None, "--activation", help="deep: sigmoid, tanh, relu, gelu, "
                                                                        "softplus or identity \\[default: sigmoid]"),
    steps: Optional[int] = typer.Option(None, "--steps", help="GD steps \\[default: deep 10, others 3]"),
    eta: Optional[float] = typer.Option(None, "--eta", help="Learning rate \\[default: deep 2.0, others 0.3]"),
    gamma: Optional[float] = typer.Option(None, "--gamma", help="gdpp: curvature correction γ, normalised by n "
                                                                "\\[default: 0.5]"),
    lam: Optional[float] = typer.Option(None, "--lam", help="ridge / sgd / convex: regularisation λ "
                                                            "\\[default: 0.1]"),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="functional: linear, relu, exp or rbf "
                                                                "\\[default: rbf]"),
    bandwidth: Optional[float] = typer.Option(None, "--bandwidth", help="functional: kernel bandwidth "
                                                                        "\\[default: 1.0]"),
    loss: Optional[str] = typer.Option(None, "--loss", help="convex: squared or logistic \\[default: squared]"),
    variant: Optional[str] = typer.Option(None, "--variant", help="ridge / sgd: exact, or faithful (GeLU "
                                                                  "products, LayerNorm division) \\[default: exact]"),
    knots: Optional[int] = typer.Option(None, "--knots", help="deep, convex --loss logistic: ReLU units per "
                                                              "fitted function \\[default: 64]"),
    box: Optional[float] = typer.Option(None, "--box", help="deep: projection box |w| ≤ B, 0 for none "
                                                            "\\[default: 1.0]"),
    n: Optional[int] = typer.Option(None, "--n", help="Context points \\[default: deep 50, others 20]"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random task (teacher, data, w0)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="deep: comma-separated knots for the "
                                                              "error-vs-knots plot, '' to skip "
                                                              "\\[default: 16,32,64,128,256]"),
    out: Optional[Path] = typer.Option(None, "--out", help="deep: folder for the plots \\[default: construct-out]"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", hidden=True, help="old name of --out"),
    data: Optional[Path] = typer.Option(None, "--data", help="deep: your data instead of a random teacher: a CSV "
                                                             "with a header (the last --targets columns are Y) or "
                                                             ".npz with arrays X and Y"),
    targets: Optional[int] = typer.Option(None, "--targets", help="deep --data: number of target columns at the "
                                                                  "end of the CSV \\[default: 1]"),
    all_layers: bool = typer.Option(False, "--all-layers", help="List every layer instead of grouping the "
                                                                "layers of one GD step."),
    device: Optional[str] = typer.Option(None, "--device", help=f"deep: {DEVICE_HELP} \\[default: cpu]"),
) -> None:
    """Build a construction, run it on random prompts or your --data, and compare it with what it encodes."""
    out = out if out is not None else out_dir
    given = {"--depth": depth, "--width": width, "--d-in": d_in, "--d-out": d_out, "--activation": activation,
             "--steps": steps, "--eta": eta, "--gamma": gamma, "--lam": lam, "--kernel": kernel,
             "--bandwidth": bandwidth, "--loss": loss, "--variant": variant, "--knots": knots, "--box": box,
             "--n": n, "--sweep": sweep, "--out": out, "--data": data, "--targets": targets, "--device": device}
    _construct(kind, given, seed=seed, all_layers=all_layers)


def _construct(kind: str, given: dict, *, seed: int, all_layers: bool) -> None:
    """`icgd construct` after parsing: `given` maps every option flag to its value (None when not set). Checks that
    the options apply to `kind`, then runs the deep construction (random teacher or --data) or any other registry
    entry against its reference learner."""
    from icgd._checks import positive_int

    _check_applies(kind, given)
    for flag in ("--steps", "--n", "--d-in"):
        if given[flag] is not None:
            positive_int(given[flag], flag)
    if kind != DEEP:  # every other registry entry: checked against its reference learner
        return _construct_other(kind, seed, all_layers,
                                **{flag[2:].replace("-", "_"): v for flag, v in given.items() if v is not None})
    g = {flag[2:].replace("-", "_"): v for flag, v in given.items()}
    deep = dict(depth=3 if g["depth"] is None else g["depth"], width=8 if g["width"] is None else g["width"],
                activation=g["activation"] or "sigmoid",
                steps=10 if g["steps"] is None else g["steps"], eta=2.0 if g["eta"] is None else g["eta"],
                knots=64 if g["knots"] is None else g["knots"], box=1.0 if g["box"] is None else g["box"], seed=seed,
                out=g["out"] or Path("construct-out"), device=g["device"] or "cpu", all_layers=all_layers)
    if g["data"] is not None:
        return _construct_deep_data(g["data"], 1 if g["targets"] is None else g["targets"], **deep)
    return _construct_deep(d_in=3 if g["d_in"] is None else g["d_in"], d_out=3 if g["d_out"] is None else g["d_out"],
                           n=50 if g["n"] is None else g["n"],
                           sweep="16,32,64,128,256" if g["sweep"] is None else g["sweep"], **deep)


def _construct_other(kind: str, seed: int, all_layers: bool, **given) -> None:
    """A regression construction against what it encodes (:func:`icgd.constructions.registry.check`); `given`: the
    options set on the command line."""
    from icgd.constructions.registry import check

    res = check(kind, seed=seed, **{k: v for k, v in given.items() if v is not None})
    s = res.setting
    console = _console()
    console.print(_layer_table(res.summary, f"{kind}: {len(res.summary)} layers", all_layers))
    console.print(f"reference: {res.reference}")
    console.print(f"max |ŷ_transformer − ŷ_reference| = [bold]{res.max_abs_error:.2e}[/bold] "
                  f"(relative {res.rel_error:.2e}) on {s['batch']} prompts × {s['m']} queries, n = {s['n']}; "
                  f"forward pass {res.seconds * 1e3:.1f} ms")


def _check_deep_memory(spec, knots: int, box, tokens: int, device: str) -> None:
    """Refuse an absurd construction before the autograd reference is computed (see icgd.memory)."""
    from icgd._checks import positive_int
    from icgd.constructions.wu import deep_gd_memory

    knots = positive_int(knots, "--knots", minimum=2)
    deep_gd_memory(spec, knots=knots, box=box or None, batch=1, tokens=tokens,
                   what=f"deep_gd(width={spec.width}, depth={spec.depth}, knots={knots})").check(device)


def _construct_deep_data(path, targets, *, depth, width, activation, steps, eta, knots, box, seed, out, device,
                         all_layers) -> None:
    """`icgd construct deep --data PATH`: the construction on the user's (X, Y) vs autograd GD from the same w0."""
    from icgd.data import construct_on_data, read_xy
    from icgd.plots import plot_error_vs_step

    _check_cuda(device)
    X, Y = read_xy(path, targets)
    res = construct_on_data(X, Y, depth=depth, width=width, activation=activation, steps=steps, eta=eta,
                            knots=knots, box=box or None, seed=seed, device=device)
    console = _console()
    console.print(f"data: {path} — n = {X.shape[0]} points, d_in = {X.shape[1]}, d_out = {Y.shape[1]}")
    console.print(_layer_table(res.summary, f"{len(res.summary)} layers: {steps} GD steps × {2 * depth + 4} + "
                                            f"{depth} read-out", all_layers))
    console.print(_error_table(res))
    console.print(f"fit intervals R_j = {', '.join(f'{r:.3g}' for r in res.fit_ranges)}; final relative error "
                  f"[bold]{res.final_error:.2e}[/bold]; max |f(w̄_L, x_i) − f(w_L, x_i)| = {res.pred_error:.2e}")
    console.print(f"saved {plot_error_vs_step(res, out / 'error_vs_step.png')}")


def _construct_deep(*, depth, width, d_in, d_out, activation, steps, eta, knots, box, n, seed, sweep, out, device,
                    all_layers) -> None:
    from icgd._checks import positive_int
    from icgd.experiments.wu_construction import (ConstructionConfig, check_construction_config, knots_sweep,
                                                  run_construction)
    from icgd.plots import plot_error_vs_knots, plot_error_vs_step

    try:
        sweep_knots = [int(k) for k in sweep.split(",") if k.strip()]
    except ValueError:
        raise ICGDError(f"--sweep must be a comma-separated list of integers, got {sweep!r}") from None
    cfg = ConstructionConfig(depth=depth, width=width, d_in=d_in, d_out=d_out, activation=activation, steps=steps,
                             eta=eta, knots=knots, box=box or None, n=n, seed=seed, device=device)
    _check_deep_memory(cfg.spec, max([knots, *sweep_knots]), box, n + cfg.m, device)
    for k in sweep_knots:  # refuse a bad sweep before the main run writes its figure
        check_construction_config(cfg, positive_int(k, "--sweep (knots)", minimum=2))
    res = run_construction(cfg)
    console = _console()
    console.print(_layer_table(res.summary, f"{len(res.summary)} layers: {steps} GD steps × {2 * depth + 4} + "
                                            f"{depth} read-out", all_layers))
    console.print(_error_table(res))
    console.print(f"fit intervals R_j = {', '.join(f'{r:.3g}' for r in res.fit_ranges)}; final relative error "
                  f"[bold]{res.final_error:.2e}[/bold]; prediction error {res.pred_error:.2e}")
    console.print(f"saved {plot_error_vs_step(res, out / 'error_vs_step.png')}")
    if sweep_knots:
        _knots_sweep(cfg, sweep_knots, out, console, knots_sweep, plot_error_vs_knots)


def _knots_sweep(cfg, sweep_knots, out, console, knots_sweep, plot_error_vs_knots) -> None:
    from rich.table import Table

    errors, slope = knots_sweep(cfg, sweep_knots)
    table = Table(title="final relative error vs knots")
    table.add_column("knots", justify="right")
    table.add_column("error", justify="right")
    for k, e in zip(sweep_knots, errors):
        table.add_row(str(k), f"{e:.2e}")
    console.print(table)
    console.print(f"log-log slope {slope:.2f} (piecewise-linear interpolation predicts −2)")
    console.print(f"saved {plot_error_vs_knots(sweep_knots, errors, slope, out / 'error_vs_knots.png')}")


# ---------------------------------------------------------------------------------------------------- train


class Interrupted(Exception):
    """Ctrl-C during `icgd train`: carries the run folder for the message."""

    def __init__(self, folder: Path):
        super().__init__(str(folder))
        self.folder = folder


@_command([
    ("icgd train --list", "the presets: model, parameters, steps, expected CPU time"),
    ("icgd train --preset lsa-smoke --out runs/lsa", "von Oswald et al.'s 1-layer LSA against tuned GD"),
    ("icgd train --preset garg-linear-smoke --set lr=3e-4", "change any config key; --config FILE.toml for many"),
    ("icgd train --resume runs/lsa --steps 600", "continue exactly where it stopped, up to step 600"),
    ("torchrun --nproc_per_node 2 -m icgd train --preset garg-linear-cpu", "data-parallel on 2 processes"),
], no_args_is_help=False)
def train(
    preset: Optional[str] = typer.Option(None, "--preset", help="A named configuration (see --list)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder \\[default: runs/PRESET or runs/CONFIG-NAME]"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total training steps (with --resume: train on to "
                                                              "this many)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the model's initialisation and of every "
                                                            "prompt \\[default: the preset's, 0]"),
    device: Optional[str] = typer.Option(None, "--device", help=f"{DEVICE_HELP} \\[default: cpu]"),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Evaluate and write a metrics.jsonl line "
                                                                      "every this many steps \\[default: preset's]"),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Write a checkpoint every this many steps "
                                                                        "\\[default: preset's]"),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML (or .json) file of config keys, applied "
                                                                 "on top of --preset."),
    set_: list[str] = typer.Option([], "--set", help="key=value, repeatable; task_kwargs.noise=0.1 sets one "
                                                     "entry of a table."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its last "
                                                                 "checkpoint."),
    force: bool = typer.Option(False, "--force", help="With --resume: resume even if the config differs from the "
                                                      "checkpoint's."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to RUN/tb (needs tensorboard)."),
    list_: bool = typer.Option(False, "--list", help="List the presets with model size and expected CPU time, "
                                                     "and exit."),
    deterministic: bool = typer.Option(False, "--deterministic", help="torch.use_deterministic_algorithms(True) "
                                       "(+ CUBLAS_WORKSPACE_CONFIG): bitwise-repeatable GPU runs, slower; fails on "
                                       "ops without a deterministic kernel."),
) -> None:
    """Meta-train a transformer on random prompts; metrics.jsonl compares it with baselines on the same prompts."""
    if list_:
        return _console().print(_preset_table())
    if force and resume is None:
        raise ICGDError("--force applies only with --resume DIR; drop it")
    if resume is not None and (preset or config or set_ or out):
        raise ICGDError("--resume continues a run with its saved config in its folder; drop "
                        "--preset/--config/--set/--out")
    if resume is None and not preset and not config:
        raise ICGDError("give --preset NAME (see icgd train --list) or --config FILE.toml, or --resume DIR")
    flags = {"seed": seed, "device": device, "log_every": log_every, "save_every": save_every}
    flags = {k: v for k, v in flags.items() if v is not None}
    if tensorboard:
        flags["tensorboard"] = True
    if deterministic:
        _deterministic()
    folder = resume if resume is not None else out or Path("runs") / (preset or config.stem)
    try:
        _train_or_resume(preset, config, set_, flags, steps, resume, force, folder)
    except KeyboardInterrupt:
        raise Interrupted(folder) from None


def _deterministic() -> None:
    """Process-wide, before any CUDA work (cuBLAS reads the variable at its first call)."""
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def _train_or_resume(preset, config, set_, flags, steps, resume, force, folder: Path) -> None:
    import json

    from icgd.train import build_config
    from icgd.train import resume as resume_run
    from icgd.train import train as train_run

    if resume is not None:
        trainer = resume_run(resume, steps=steps, force=force, overrides=flags)
        if trainer.rank == 0 and getattr(trainer, "start_step", None) == trainer.step:
            where = (f"already finished: step {trainer.step} of {trainer.cfg.steps}" if trainer.step ==
                     trainer.cfg.steps else f"already at step {trainer.step}, past --steps {trainer.cfg.steps}")
            _console().print(f"the run in {resume} is {where}. Nothing to do; pass --steps N with N > "
                             f"{trainer.step} to train it further.")
            return
    else:
        overrides = [*set_, *(f"{k}={json.dumps(v)}" for k, v in flags.items())]
        if steps is not None:
            overrides.append(f"steps={steps}")
        cfg = build_config(preset, config, overrides)
        trainer = train_run(cfg, folder)
    records = trainer.metrics.read()
    if records and trainer.rank == 0:
        last = records[-1]
        base = ", ".join(f"{k} {v:.4g}" for k, v in last["baselines"].items())
        _console().print(f"step {last['step']}: train {last['train_loss']:.4g}, eval {last['eval_loss']:.4g} "
                         f"(baselines: {base}); run folder {trainer.out}")


def _preset_table():
    """Every preset with its model, size, steps and the CPU time a run is expected to take."""
    from rich import box
    from rich.table import Table

    from icgd.train import PRESETS, build_config
    from icgd.train.config import model_params
    from icgd.train.expected import expected_cpu_seconds, format_duration

    table = Table(title="icgd train --preset NAME", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="model: LSA, or a GPT-2-style transformer with layers/heads/width and its attention. "
                          "CPU time: measured on one thread of a shared 2-core x86 machine (icgd/train/expected.py); "
                          "a GPU is far faster for the -paper presets")
    for col in ("preset", "model", "params", "steps", "CPU time"):
        table.add_column(col, justify="left" if col in ("preset", "model") else "right", no_wrap=True)
    for name in sorted(PRESETS):
        cfg = build_config(name)
        model = (f"LSA, {cfg.n_layer} layer" if cfg.model == "lsa" else
                 f"{cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd} {cfg.attention}")
        seconds = expected_cpu_seconds(name, cfg.steps)
        table.add_row(name, model, f"{model_params(cfg):,}", f"{cfg.steps:,}",
                      "?" if seconds is None else format_duration(seconds))
    return table


# ---------------------------------------------------------------------------------------------------- reproduce


@_command([
    ("icgd reproduce --list", "the experiments"),
    ("icgd reproduce vonoswald2023 --scale smoke", "seconds; report in runs/reproduce/vonoswald2023-smoke"),
    ("icgd reproduce wu2025 --scale cpu --out runs/wu", "the committed cpu scale, ≤ 45 min on 2 cores"),
    ("icgd reproduce garg2022 --set steps=500 --force", "change a setting of the scale, overwrite the folder"),
], no_args_is_help=False)
def reproduce(
    name: Optional[str] = typer.Argument(None, help="wu2025, vonoswald2023, akyurek2023, cheng2024 or garg2022"),
    scale: str = typer.Option("smoke", "--scale", help="smoke (< 2 min), cpu (≤ 45 min on 2 cores) or paper "
                                                       "(a GPU)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder \\[default: runs/reproduce/NAME-SCALE]"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the experiment's tasks, models and prompts."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting of the scale: key=value, repeatable."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report folder."),
    list_: bool = typer.Option(False, "--list", help="List the experiments and exit."),
) -> None:
    """Reproduce a paper: run it, then write report.md, report.html, figures (PNG + SVG) and metrics (JSON + CSV)."""
    from icgd.experiments.reproduce import describe, run_experiment

    console = _console()
    if list_:
        from rich import box
        from rich.table import Table

        table = Table("experiment", "what it reproduces", title="icgd reproduce NAME", box=box.SIMPLE_HEAD,
                      pad_edge=False)
        for key, title in describe():
            table.add_row(key, title)
        return console.print(table)
    if name is None:
        raise ICGDError("name an experiment (icgd reproduce --list) or pass --list")
    files = run_experiment(name, scale, out or Path("runs") / "reproduce" / f"{name}-{scale}", device=device,
                           seed=seed, overrides=set_, force=force, log=console.print)
    console.print(f"wrote {files[0]} and {len(files) - 1} more files in {files[0].parent}")


@_command([("icgd report runs/reproduce/vonoswald2023-smoke", "report.md, report.html and figures again")])
def report(run_dir: Path = typer.Argument(..., help="A folder written by icgd reproduce.")) -> None:
    """Rebuild a reproduction's report and figures from its saved metrics.json (nothing is rerun)."""
    from icgd.experiments.reproduce import rebuild_report

    files = rebuild_report(run_dir)
    _console().print(f"wrote {files[0]} and {len(files) - 1} more files in {files[0].parent}")


@_command([("icgd compare docs/results/vonoswald2023 runs/reproduce/vonoswald2023-smoke",
            "the committed cpu-scale results against your smoke run")])
def compare(
    a: Path = typer.Argument(..., help="First reproduction folder."),
    b: Path = typer.Argument(..., help="Second reproduction folder."),
) -> None:
    """Compare the metrics of two reproduction folders side by side (last value of each curve)."""
    from rich.table import Table

    from icgd.experiments.reproduce import compare_runs

    header, rows = compare_runs(a, b)
    table = Table(*header, title=f"{a} vs {b}")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


# ---------------------------------------------------------------------------------------------------- analyze


@_command([
    ("icgd analyze runs/lsa --candidates gd:1-4,ridge:0.1,ols", "which algorithm each block of a trained run tracks"),
    ("icgd analyze runs/lsa --readout probe --out lsa.png", "linear probes fitted on separate prompts instead"),
])
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
    console = _console()
    console.print(result.alignment.rich_table())
    console.print(f"wrote {result.figure}")


# ---------------------------------------------------------------------------------------------------- bench


@_command([
    ("icgd bench --quick", "< 3 min; writes runs/bench/RESULTS.md and runs/bench/results.png"),
    ("icgd bench --only construction --threads 2", "one section, on an idle 2-core machine"),
    ("icgd bench --out benchmarks/RESULTS.md", "regenerate the repository's committed results"),
])
def bench(
    quick: bool = typer.Option(False, "--quick", help="The short run (< 3 minutes on 2 CPU cores)."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    out: Path = typer.Option(Path("runs") / "bench" / "RESULTS.md", "--out", help="Markdown file; the figure "
                                                                                  "goes beside it."),
    threads: int = typer.Option(1, "--threads", help="torch threads, 0: torch's default (1 by default: robust on a "
                                                      "shared 2-core machine; use 2 on an idle one)."),
    only: list[str] = typer.Option([], "--only", help="Run only this section, repeatable: training, construction, "
                                                      "learners."),
) -> None:
    """Timings side by side: ICLTransformer vs HuggingFace GPT-2, construction vs autograd GD, batched learners.

    The GPT-2 anchor needs the optional bench extra (pip install 'icgd\\[bench]'); writes RESULTS.md and a figure."""
    from icgd.bench import SECTIONS, bench_config, run_bench

    console = _console()
    cfg = bench_config(quick, device, threads, only or SECTIONS)
    words = ["icgd", "bench", *(["--quick"] if quick else []), "--device", device, "--out", str(out),
             "--threads", str(threads), *(w for s in only for w in ("--only", s))]
    md, fig = run_bench(cfg, out, command=" ".join(words),
                        log=lambda msg: console.print(msg, markup=False, highlight=False))
    console.print(f"wrote {md} and {fig}")


# ---------------------------------------------------------------------------------------------------- main


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _aborted(folder: Path | None = None) -> None:
    if folder is None:
        print("icgd: aborted", file=sys.stderr)
    elif _has_checkpoint(folder):
        print(f"icgd: aborted; the run saved a checkpoint at its last completed step in {folder}; continue it with "
              f"icgd train --resume {folder}", file=sys.stderr)
    else:
        print(f"icgd: aborted before the first checkpoint of the run in {folder}; nothing to --resume, start it "
              f"again", file=sys.stderr)
    sys.exit(130)


def _beyond_int64(argv: list[str]) -> str:
    """The first integer on the command line (an option's value, a ``--set key=value`` or a ``--sweep`` entry) that
    needs more than 64 bits, as ``"OPTION VALUE"``; "" when there is none. Torch and numpy cannot hold such a number,
    so it is refused before anything runs."""
    for i, arg in enumerate(argv):
        for word in arg.replace("=", ",").split(","):
            digits = word.strip().lstrip("+-").lstrip("0")
            if digits.isdigit() and digits.isascii() and (len(digits) > 19 or int(digits) > 2 ** 63 - 1):
                return f"{argv[i - 1] if i and arg[:1] != '-' else ''} {arg}".strip()
    return ""
def _has_checkpoint(folder: Path) -> bool:
    from icgd.train.checkpoint import has_checkpoint

    return has_checkpoint(folder)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning usage errors and icgd errors into one line and exit code 2
    (``--debug`` anywhere on the command line shows the traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    too_big = _beyond_int64(argv)
    if too_big:
        print(f"icgd: error: {too_big} does not fit in a 64-bit integer (at most {2 ** 63 - 1}); give a smaller "
              f"value", file=sys.stderr)
        sys.exit(2)
    if "--debug" in argv:
        argv.remove("--debug")
        app(args=argv, standalone_mode=False, prog_name="icgd")
        return
    try:
        result = app(args=argv, standalone_mode=False, prog_name="icgd")
    except Interrupted as exc:
        _aborted(exc.folder)
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
