"""The command line for a first-time user: it starts without importing torch, every option is described, every
command shows examples, tables are aligned, options that a kind would ignore are refused, and the messages name
the real folders."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import typer

import icgd
from icgd.cli import app
from test_cli import run

HEAVY = ("torch", "numpy", "matplotlib", "sklearn", "scipy", "safetensors")


def imported_modules(*args: str) -> tuple[set[str], str]:
    """Top-level packages that `python -X importtime -m icgd ARGS` imports, and its stdout."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "icgd", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)",
                                                           proc.stderr, re.M)}
    assert "typer" in names  # the parser really was imported: the trace is not empty
    return names, proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["version"], ["--version"], ["construct", "--help"],
                                  ["train", "--help"]])
def test_help_and_version_import_nothing_heavy(args):
    names, out = imported_modules(*args)
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    assert out.strip()


def test_version_names_icgd_and_torch():
    """`icgd --version`, `icgd version` and `python -m icgd version` agree with the imported packages."""
    from importlib.metadata import version

    installed = version("torch")  # read without importing torch; a wheel's metadata may omit the local label (+cu130)
    assert installed.split("+")[0] == torch.__version__.split("+")[0]
    expected = f"icgd {icgd.__version__} (torch {installed})"
    for args in (["--version"], ["version"]):
        proc = subprocess.run([sys.executable, "-m", "icgd", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == expected, (proc.stdout, proc.stderr)


def commands() -> dict:
    group = typer.main.get_command(app)
    return group.commands


def help_text(*args: str, capsys) -> str:
    code, out, err = run([*args, "--help"], capsys)
    assert code == 0, err
    return out


def test_every_option_is_described_and_every_command_has_examples(capsys):
    names = sorted(commands())
    assert {"demo", "construct", "train", "reproduce", "report", "compare", "bench", "version"} <= set(names)
    for name in names:
        params = [p for p in commands()[name].params if not getattr(p, "hidden", False)]
        undocumented = [p.name for p in params if not (getattr(p, "help", None) or "").strip()]
        assert not undocumented, (name, undocumented)
        text = help_text(name, capsys=capsys)
        assert "Examples:" in text and f"icgd {name}" in text.split("Examples:")[1], name
        assert "<bool>" not in text, name
    top = help_text(capsys=capsys)
    assert "<bool>" not in top and "--version" in top and "Examples:" in top


def test_out_everywhere_and_out_dir_is_a_hidden_alias(tmp_path, capsys):
    for name in ("demo", "construct", "train", "reproduce", "bench"):
        assert "--out" in {o for p in commands()[name].params for o in p.opts}, name
    assert "--out-dir" not in help_text("construct", capsys=capsys)
    for flag in ("--out", "--out-dir"):
        folder = tmp_path / flag.strip("-")
        code, _, err = run(["construct", "--depth", "1", "--width", "2", "--d-in", "1", "--d-out", "1", "--steps", "1",
                            "--n", "4", "--sweep", "", flag, str(folder)], capsys)
        assert code == 0, err
        assert (folder / "error_vs_step.png").stat().st_size > 5_000


def test_bench_writes_under_runs_by_default():
    out = next(p for p in commands()["bench"].params if p.name == "out")
    assert str(out.default).replace("\\", "/") == "runs/bench/RESULTS.md"


@pytest.mark.parametrize("args,needle", [
    (["construct", "linear", "--kernel", "relu"], "--kernel"),
    (["construct", "linear", "--lam", "0.5"], "--lam"),
    (["construct", "ridge", "--steps", "4"], "--steps"),
    (["construct", "ridge", "--eta", "0.1"], "--eta"),
    (["construct", "functional", "--gamma", "1"], "--gamma"),
    (["construct", "convex", "--knots", "32"], "--loss logistic"),
    (["construct", "gdpp", "--depth", "2"], "--depth"),
    (["construct", "sgd", "--out", "x"], "--out"),
    (["construct", "linear", "--device", "cpu"], "--device"),
    (["construct", "deep", "--data", "x.csv", "--n", "3"], "--n"),
    (["construct", "deep", "--targets", "2"], "--data"),
    (["train", "--preset", "lsa-smoke", "--force"], "--resume"),
    (["train", "--resume", "runs/x", "--out", "y"], "--out"),
])
def test_options_that_do_not_apply_are_refused(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def table_rows(out: str) -> list[list[str]]:
    """The data rows of a printed layer table: lines starting with a layer position."""
    return [line.split() for line in out.splitlines() if re.match(r"^\s*\d+(–\d+|, \d+)*(, …, \d+)?\s{2,}\S", line)]


def test_construct_groups_the_layers_of_a_gd_step(tmp_path, capsys):
    """deep: N = 2 → one GD step is 2N + 4 = 8 layers, repeated `steps` = 3 times, then N read-out layers."""
    args = ["construct", "--depth", "2", "--width", "3", "--d-in", "2", "--d-out", "1", "--steps", "3", "--n", "8",
            "--sweep", "", "--out", str(tmp_path)]
    code, grouped, err = run(args, capsys)
    assert code == 0, err
    rows = table_rows(grouped)
    assert len(rows) == 8 + 2
    assert [r[:5] for r in rows[:8]] == [[f"{i},", f"{i + 8},", f"{i + 16}"] + rows[i][3:5] for i in range(8)]
    assert "repeats 3 times" in " ".join(grouped.split())
    code, full, err = run([*args, "--all-layers"], capsys)
    assert code == 0, err
    assert [r[0] for r in table_rows(full)] == [str(i) for i in range(3 * 8 + 2)]


def test_summary_is_a_printable_table():
    """Transformer.summary(): still a list of row dicts; str() is a plain table, rich renders the same cells."""
    from rich.console import Console

    from icgd.constructions import deep_gd, ridge
    from icgd.layers.transformer import layer_info
    from icgd.nets import NetSpec

    spec = NetSpec(d_in=2, width=3, depth=2, d_out=1)
    model = deep_gd(spec, eta=1.0, steps=4, box=1.0, knots=16, x_bound=2.0)
    table = model.summary()
    assert len(table) == len(model.layers) == 4 * 8 + 2
    assert table[5]["params"] == layer_info(5, model.layers[5], model.dim)["params"]
    assert table.repeat() == (0, 8, 4) == (0, model.block_size, model.steps)
    text = str(table)
    lines = text.splitlines()
    assert lines[0].split() == ["layers", "role", "kind", "heads/width", "D", "params"]
    header_width = len(lines[1])
    assert all(len(line) <= header_width for line in lines[2:12])  # aligned: no row is wider than the rule
    for j in range(8):  # every block row: positions j, j + 8, …, j + 24, its kind and nonzero parameter count
        cells = lines[2 + j]
        assert cells.strip().startswith(f"{j}, {j + 8}, …, {j + 24}  ")
        assert type(model.layers[j]).__name__ in cells and cells.endswith(f"{table[j]['params']:,}")
    assert repr(table) == text and len(table.to_text(full=True).splitlines()) == 2 + len(model.layers)
    console = Console(record=True, width=120)
    console.print(table)
    rendered = console.export_text()
    assert all(type(layer).__name__ in rendered for layer in model.layers)
    assert ridge(3, lam=0.1, n_max=5).summary().repeat() == (1, 12, 5)  # one Sherman–Morrison block per point


def test_train_list_shows_size_and_expected_time(capsys):
    """Every preset, its exact parameter count (checked against the built model) and an expected CPU time."""
    from icgd.train import PRESETS, build_config
    from icgd.train.loop import build_model

    code, out, err = run(["train", "--list"], capsys)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and line.split()[0] in PRESETS}
    assert set(lines) == set(PRESETS)
    for name in ("lsa-smoke", "garg-linear-smoke", "wu-nn-relu-smoke"):
        params = sum(p.numel() for p in build_model(build_config(name)).parameters())
        assert f" {params:,} " in lines[name], (name, params, lines[name])
    from icgd.train.expected import MEASURED, expected_cpu_seconds, format_duration

    for name in MEASURED:
        per_step, fixed = MEASURED[name]
        shown = format_duration(expected_cpu_seconds(name, PRESETS[name]["steps"]))
        assert shown == format_duration(fixed + per_step * PRESETS[name]["steps"])
        assert lines[name].rstrip().endswith(shown), (name, shown, lines[name])
    ends = {lines[n].index(f" {PRESETS[n]['steps']:,} ") + len(f" {PRESETS[n]['steps']:,}") for n in lines}
    assert len(ends) == 1  # the steps column is right-aligned


def test_reproduce_list_is_aligned(capsys):
    from icgd.experiments.reproduce import describe

    code, out, err = run(["reproduce", "--list"], capsys)
    assert code == 0, err
    rows = [(line, title) for key, title in describe() for line in out.splitlines() if key in line
            and title[:20] in line]
    starts = {line.index(title[:20]) for line, title in rows}
    assert len(starts) == 1 and len(rows) == len(describe()) >= 6


TINY = ["--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=1", "--set", "eval_prompts=16",
        "--set", "batch_size=8", "--set", "baselines=[\"ols\"]"]


def test_finished_run_config_and_ctrl_c_name_the_real_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "my run"
    code, _, err = run(["train", "--preset", "garg-linear-smoke", *TINY, "--steps", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["out"] == str(out)
    code, text, err = run(["train", "--resume", str(out)], capsys)
    assert code == 0, err
    text = " ".join(text.split())
    assert "already finished" in text and "step 2 of 2" in text and str(out) in text and "nan" not in text
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # nothing was added

    from icgd.train import loop

    real = loop.Trainer.train_step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(loop.Trainer, "train_step", interrupted)
    code, _, err = run(["train", "--resume", str(out), "--steps", "6", "--save-every", "1"], capsys)
    assert code == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("icgd: aborted") and f"--resume {out}" in lines[0]
    from icgd.train.checkpoint import load_checkpoint

    assert load_checkpoint(out).step == 3


def test_knots_ticks_never_overlap():
    from icgd.plots import _spaced_labels

    assert _spaced_labels([16, 32, 64, 128, 256]) == ["16", "32", "64", "128", "256"]
    dense = [16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 256, 300]
    labels = _spaced_labels(dense)
    shown = [math.log(v) for v, s in zip(dense, labels) if s]
    assert labels[0] == "16" and all(b - a >= (math.log(300) - math.log(16)) / 10 for a, b in zip(shown, shown[1:]))
