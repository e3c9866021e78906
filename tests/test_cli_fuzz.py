"""CLI fuzz: malformed configs, unknown keys, wrong types, zero/negative sizes, NaN, absurd sizes and bad data files
all end with exit status 2, exactly one line on stderr, no traceback, and no run folder written (an existing folder
is left untouched). Mostly in-process through icgd.cli.main; a few through the installed `icgd` script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_cli import run  # (args, capsys) -> (exit code, stdout, stderr)

ICGD = Path(sys.executable).parent / "icgd"
TINY = ["--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=1", "--set", "eval_prompts=16",
        "--set", "batch_size=8", "--set", "baselines=[\"ols\"]"]


def assert_one_line_error(code: int, out: str, err: str, needle: str = "") -> str:
    assert code == 2, (code, out[-500:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("icgd: error: ") and "Traceback" not in err + out
    assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ train configs

BAD_TOML = {
    "syntax": ("lr = \n", "cannot read the TOML"),
    "unclosed table": ("[task_kwargs\nnoise = 1\n", "cannot read the TOML"),
    "unknown key": ("batch_sise = 3\n", "unknown config key(s) batch_sise"),
    "string for int": ('n_layer = "three"\n', "n_layer"),
    "int for bool": ("causal = 1\n", "causal"),
    "float for int": ("n_points = 1.5\n", "n_points"),
    "string for list": ('baselines = "ols"\n', "baselines"),
    "int for table": ("task_kwargs = 3\n", "task_kwargs"),
    "nan": ("lr = nan\n", "lr"),
    "inf": ("grad_clip = inf\n", "grad_clip"),
    "zero size": ("n_layer = 0\n", "n_layer"),
    "negative size": ("batch_size = -4\n", "batch_size"),
    "datetime": ("lr = 2024-01-01\n", "lr"),
    "not utf-8": (b"lr = \xff\xfe\n", "cannot read the TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_bad_toml_config(case, tmp_path, capsys):
    text, needle = BAD_TOML[case]
    cfg = tmp_path / "c.toml"
    (cfg.write_bytes if isinstance(text, bytes) else cfg.write_text)(text)
    out = tmp_path / "run"
    assert_one_line_error(*run(["train", "--config", str(cfg), "--out", str(out)], capsys), needle)
    assert not out.exists()


BAD_JSON = {
    "syntax": ('{"lr": }', "cannot read the JSON"),
    "trailing comma": ('{"lr": 0.1,}', "cannot read the JSON"),
    "a list": ("[1, 2]", "must be a table"),
    "a number": ("3", "must be a table"),
    "NaN": ('{"lr": NaN}', "lr"),
    "unknown key": ('{"n_layers": 2}', "unknown config key(s) n_layers"),
    "wrong type": ('{"d_in": "5"}', "d_in"),
    "zero": ('{"n_points": 0}', "n_points"),
    "bad task option": ('{"task": "linear", "task_kwargs": {"noise": -1}}', "noise"),
    "empty file": ("", "cannot read the JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_json_config(case, tmp_path, capsys):
    text, needle = BAD_JSON[case]
    cfg = tmp_path / "c.json"
    cfg.write_text(text)
    out = tmp_path / "run"
    assert_one_line_error(*run(["train", "--preset", "garg-linear-smoke", "--config", str(cfg), "--out", str(out)],
                               capsys), needle)
    assert not out.exists()


BAD_FLAGS = {
    "zero layers": (["--set", "n_layer=0"], "n_layer"),
    "negative embd": (["--set", "n_embd=-16"], "n_embd"),
    "zero eval prompts": (["--set", "eval_prompts=0"], "eval_prompts"),
    "zero d_in": (["--set", "d_in=0"], "d_in"),
    "negative steps": (["--steps", "-1"], "steps"),
    "zero steps": (["--steps", "0"], "steps"),
    "zero log_every": (["--log-every", "0"], "log_every"),
    "steps not a number": (["--steps", "ten"], "steps"),
    "lr NaN": (["--set", "lr=NaN"], "lr"),
    "lr inf": (["--set", "lr=Infinity"], "lr"),
    "lr negative": (["--set", "lr=-0.1"], "lr"),
    "beta1 >= 1": (["--set", "beta1=1.5"], "beta1"),
    "lr_min_ratio > 1": (["--set", "lr_min_ratio=2"], "lr_min_ratio"),
    "negative weight decay": (["--set", "weight_decay=-1"], "weight_decay"),
    "negative seed": (["--seed", "-3"], "seed"),
    "heads do not divide": (["--set", "n_embd=30", "--set", "n_head=4"], "divisible"),
    "unknown baseline": (["--set", "baselines=[\"nope\"]"], "baselines"),
    "baseline needs arguments": (["--set", "baselines=[\"gdpp\"]"], "baselines"),
    "unknown task": (["--set", "task=nope"], "unknown task"),
    "unknown task option": (["--set", "task_kwargs.nope=1"], "nope"),
    "task option clash": (["--set", "task_kwargs.d=3"], "d_in"),
    "curriculum missing keys": (["--set", "curriculum={\"dims_start\": 1}"], "curriculum"),
    "curriculum beyond d_in": (["--set", "curriculum={\"dims_start\": 1, \"dims_end\": 50, \"points_start\": 2, "
                                "\"points_end\": 5}"], "curriculum"),
    "unknown device": (["--device", "tpu"], "device"),
    "unknown key": (["--set", "n_layers=2"], "unknown config key"),
    "no =": (["--set", "n_layer"], "key=value"),
    "absurd size": (["--set", "n_embd=65536", "--set", "n_layer=512", "--set", "n_head=8"], "GiB"),
    "absurd batch": (["--set", "batch_size=100000000"], "GiB"),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags(case, tmp_path, capsys):
    flags, needle = BAD_FLAGS[case]
    out = tmp_path / "run"
    line = assert_one_line_error(*run(["train", "--preset", "garg-linear-smoke", *TINY, *flags, "--out", str(out)],
                                      capsys), needle)
    assert not out.exists()
    if needle == "GiB":  # the estimate and what to reduce are in the message
        assert "reduce" in line and "ICGD_MEMORY_LIMIT" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, capsys):
    out = tmp_path / "run"
    assert_one_line_error(*run(["train", "--preset", "garg-linear-smoke", *TINY, "--device", "cuda", "--out",
                                str(out)], capsys), "cuda")
    assert not out.exists()


def test_existing_folder_is_left_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text('{"keep": "me"}')
    before = snapshot(out)
    assert_one_line_error(*run(["train", "--preset", "garg-linear-smoke", *TINY, "--set", "n_layer=0", "--out",
                                str(out)], capsys), "n_layer")
    assert snapshot(out) == before


def test_missing_config_file_and_bad_resume(tmp_path, capsys):
    assert_one_line_error(*run(["train", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "r")],
                               capsys), "nope.toml")
    assert_one_line_error(*run(["train", "--resume", str(tmp_path / "nothing")], capsys), "no run to resume")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{broken")
    assert_one_line_error(*run(["train", "--resume", str(tmp_path / "half")], capsys), "cannot read the config")
    assert not (tmp_path / "r").exists()


def test_resume_with_bad_steps_leaves_the_run_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["train", "--preset", "garg-linear-smoke", *TINY, "--steps", "2", "--save-every", "1",
                        "--log-every", "1", "--out", str(out)], capsys)
    assert code == 0, err
    before = snapshot(out)
    assert_one_line_error(*run(["train", "--resume", str(out), "--steps", "0"], capsys), "steps")
    assert snapshot(out) == before


# ------------------------------------------------------------------------------------------------ construct

BAD_CONSTRUCT = {
    "deep width 0": (["construct", "deep", "--width", "0"], "width"),
    "deep depth -1": (["construct", "deep", "--depth", "-1"], "depth"),
    "deep knots 0": (["construct", "deep", "--knots", "0"], "knots"),
    "deep steps 0": (["construct", "deep", "--steps", "0"], "steps"),
    "deep n 0": (["construct", "deep", "--n", "0"], "--n"),
    "deep d-in 0": (["construct", "deep", "--d-in", "0"], "--d-in"),
    "deep d-out 0": (["construct", "deep", "--d-out", "0"], "d_out"),
    "deep eta nan": (["construct", "deep", "--eta", "nan"], "eta"),
    "deep eta negative": (["construct", "deep", "--eta", "-1"], "eta"),
    "deep box negative": (["construct", "deep", "--box", "-1"], "box"),
    "deep width not a number": (["construct", "deep", "--width", "w"], "width"),
    "deep absurd": (["construct", "deep", "--width", "4096", "--knots", "100000"], "GiB"),
    "ridge n 0": (["construct", "ridge", "--n", "0"], "--n"),
    "ridge lam nan": (["construct", "ridge", "--lam", "nan"], "lam"),
    "convex knots 1": (["construct", "convex", "--loss", "logistic", "--knots", "1"], "knots"),
    "linear d-in 0": (["construct", "linear", "--d-in", "0"], "--d-in"),
    "gdpp steps -2": (["construct", "gdpp", "--steps", "-2"], "steps"),
    "functional bandwidth 0": (["construct", "functional", "--bandwidth", "0"], "bandwidth"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONSTRUCT))
def test_bad_construct(case, tmp_path, capsys):
    args, needle = BAD_CONSTRUCT[case]
    out = tmp_path / "plots"
    assert_one_line_error(*run([*args, "--sweep", "", "--out-dir", str(out)] if args[1] == "deep" else args,
                               capsys), needle)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ data files


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


BAD_CSV = {
    "nan": ("a,b,y\n1,2,3\n1,nan,3\n", "not finite"),
    "NaN capital": ("a,b,y\n1,2,3\nNaN,1,3\n", "not finite"),
    "inf": ("a,b,y\n1,2,inf\n", "not finite"),
    "string": ("a,b,y\n1,x,3\n", "not a number"),
    "empty cell": ("a,b,y\n1,,3\n", "not a number"),
    "short row": ("a,b,y\n1,2,3\n1,2\n", "2 column(s)"),
    "long row": ("a,b,y\n1,2,3,4\n", "4 column(s)"),
    "header only": ("a,b,y\n", "at least one row"),
    "empty": ("", "at least one row"),
    "one column": ("y\n1\n2\n", "at least 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv(case, tmp_path, capsys):
    text, needle = BAD_CSV[case]
    path = _csv(tmp_path, text)
    out = tmp_path / "plots"
    assert_one_line_error(*run(["construct", "deep", "--data", str(path), "--depth", "1", "--width", "2",
                                "--out-dir", str(out)], capsys), needle)
    assert not out.exists()


def test_bad_targets_and_files(tmp_path, capsys):
    path = _csv(tmp_path, "a,b,y\n1,2,3\n")
    for args, needle in [(["--targets", "0"], "--targets"), (["--targets", "3"], "at least 4")]:
        assert_one_line_error(*run(["construct", "deep", "--data", str(path), *args], capsys), needle)
    assert_one_line_error(*run(["construct", "deep", "--data", str(tmp_path / "nope.csv")], capsys), "no data file")
    assert_one_line_error(*run(["construct", "linear", "--data", str(path)], capsys), "--data")
    (tmp_path / "bin.csv").write_bytes(b"a,b\n\xff\xfe,1\n")
    assert_one_line_error(*run(["construct", "deep", "--data", str(tmp_path / "bin.csv")], capsys), "cannot read")


@pytest.mark.parametrize("case", ["nan", "missing Y", "length mismatch", "objects", "3-d X", "not npz"])
def test_bad_npz(case, tmp_path, capsys):
    path = tmp_path / "d.npz"
    X, Y = np.ones((5, 2)), np.ones(5)
    if case == "nan":
        X[2, 1] = np.nan
        np.savez(path, X=X, Y=Y)
    elif case == "missing Y":
        np.savez(path, X=X)
    elif case == "length mismatch":
        np.savez(path, X=X, Y=np.ones(4))
    elif case == "objects":
        np.savez(path, X=np.array([{"a": 1}] * 5, dtype=object), Y=Y)
    elif case == "3-d X":
        np.savez(path, X=np.ones((5, 2, 1)), Y=Y)
    else:
        path.write_text("not a zip file")
    needle = {"nan": "not finite", "missing Y": "lacks Y", "length mismatch": "expected X", "objects": "pickle",
              "3-d X": "expected X", "not npz": "cannot read"}[case]
    assert_one_line_error(*run(["construct", "deep", "--data", str(path), "--out-dir", str(tmp_path / "o")], capsys),
                          needle)
    assert not (tmp_path / "o").exists()


def test_data_file_runs_the_construction_against_autograd(tmp_path, capsys, one_thread):
    """The happy path of --data: a CSV and the same data as .npz give the same (small) error vs autograd GD."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 2))
    Y = np.tanh(X @ np.array([[1.0], [-0.5]]))
    csv = tmp_path / "d.csv"
    np.savetxt(csv, np.hstack([X, Y]), delimiter=",", header="x1,x2,y", comments="")
    np.savez(tmp_path / "d.npz", X=X, Y=Y[:, 0])
    errors = []
    for path in (csv, tmp_path / "d.npz"):
        code, out, err = run(["construct", "deep", "--data", str(path), "--depth", "2", "--width", "3", "--steps",
                              "3", "--knots", "128", "--out-dir", str(tmp_path / "o")], capsys)
        assert code == 0, err
        out = " ".join(out.split())  # rich wraps long lines
        assert "n = 24 points, d_in = 2, d_out = 1" in out
        errors.append(float(out.split("final relative error")[1].split()[0].replace(";", "")))
    assert errors[0] == errors[1] and errors[0] < 5e-3


# ------------------------------------------------------------------------------------------------ the real script


@pytest.mark.parametrize("args,files,needle", [
    (["train", "--config", "{dir}/c.toml", "--out", "{dir}/run"], {"c.toml": "lr = = 1\n"}, "TOML"),
    (["train", "--preset", "lsa-smoke", "--set", "n_layer=0", "--out", "{dir}/run"], {}, "n_layer"),
    (["construct", "deep", "--data", "{dir}/d.csv"], {"d.csv": "a,y\n1,2\nnan,3\n"}, "not finite"),
])
def test_installed_script_prints_one_line(args, files, needle, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [a.format(dir=tmp_path) for a in args]
    proc = subprocess.run([str(ICGD), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, needle)
    assert not (tmp_path / "run").exists()


def test_memory_limit_env_is_validated_and_honoured(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ICGD_MEMORY_LIMIT", "lots")
    assert_one_line_error(*run(["train", "--preset", "garg-linear-smoke", *TINY, "--out", str(tmp_path / "r")],
                               capsys), "ICGD_MEMORY_LIMIT")
    monkeypatch.setenv("ICGD_MEMORY_LIMIT", "0.001")  # about 1 MiB: the smoke preset needs more
    line = assert_one_line_error(*run(["train", "--preset", "garg-linear-smoke", "--out", str(tmp_path / "r")],
                                      capsys), "GiB")
    assert "0.001 GiB available" in line
    assert not (tmp_path / "r").exists()
    json.dumps(line)  # printable


def test_deterministic_flag_gives_the_same_run_on_cpu(tmp_path, capsys):
    """--deterministic switches torch to deterministic kernels; on CPU the run is bitwise the default one."""
    args = ["train", "--preset", "garg-linear-smoke", *TINY, "--steps", "3", "--log-every", "1"]
    try:
        code, _, err = run([*args, "--deterministic", "--out", str(tmp_path / "a")], capsys)
        assert code == 0, err
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    code, _, err = run([*args, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    losses = [[json.loads(line)["train_loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("a", "b")]
    assert len(losses[0]) == 3 and losses[0] == losses[1]
