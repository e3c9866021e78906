"""Hostile inputs, one test group per class of issue 22: every one ends in a named ICGDError (API) or one line and
exit 2 (CLI), before anything is allocated or written, with nothing lost and no number silently wrong.

1. refusal before allocation   2. run folders protected   3. no tracebacks on plausible paths
4. no silently wrong numbers   5. no partial outputs on failure
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from icgd.constructions import convex_gd, deep_gd, deep_gd_softmax, linear_gd
from icgd.errors import (CheckpointError, ConfigError, DataError, DeviceError, DTypeError, ICGDError, RangeError,
                         ResourceError, RunLockedError, ShapeError, SpecError)
from icgd.learners import gd_trajectory
from icgd.nets import NetSpec
from icgd.sklearn import InContextClassifier, InContextRegressor
from icgd.tasks import make_task
from icgd.train import build_config, load_checkpoint, resume, train
from icgd.train.checkpoint import META_FILE, RunLock, save_checkpoint

from test_cli import run
from test_cli_fuzz import assert_one_line_error, snapshot

TINY = ["n_layer=1", "n_head=1", "n_embd=16", "eval_prompts=16", "batch_size=8", "log_every=1", "save_every=1",
        "baselines=[\"ols\"]", "d_in=2", "n_points=5", "warmup=1"]
HUGE = str(2 ** 70)


def _cfg(steps=3, extra=()):
    return build_config("garg-linear-smoke", overrides=[*TINY, f"steps={steps}", *extra])


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished 3-step run folder, copied by each test that edits one."""
    out = tmp_path_factory.mktemp("done") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(_cfg(), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def run_copy(done_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    return out


# ------------------------------------------------------------------------------------ 1. refusal before allocation

SPEC = NetSpec(3, 8, 3, 3)
TOO_BIG_API = {  # each would allocate (or run for) far more than any machine has, if it were not refused first
    "wu_network teacher width": lambda: make_task("wu_network", d=3, width=10 ** 7).sample(64, 20, seed=0, step=0),
    "relu2nn hidden width": lambda: make_task("relu2nn", d=3, hidden=10 ** 9).sample(8, 20, seed=0, step=0),
    "decision tree depth 36": lambda: make_task("decision_tree", d=3, depth=36).sample(64, 20, seed=0, step=0),
    "decision tree depth 70": lambda: make_task("decision_tree", d=3, depth=70),
    "task pool of 1e12": lambda: make_task("linear", d=5, pool_size=10 ** 12).pool(),
    "gp kernel matrix of 1e6 points": lambda: make_task("gp", d=5).sample(8, 10 ** 6, seed=0, step=0),
    "deep_gd steps 1e9": lambda: deep_gd(SPEC, eta=0.1, steps=10 ** 9, box=1.0, x_bound=1.0),
    "deep_gd_softmax steps 1e9": lambda: deep_gd_softmax(NetSpec(2, 3, 2, 1), eta=0.1, steps=10 ** 9, box=1.0,
                                                         x_bound=1.0),
    "linear_gd steps 1e9": lambda: linear_gd(3, eta=0.1, steps=10 ** 9),
    "linear_gd d_in 1e6": lambda: linear_gd(10 ** 6, eta=0.1, steps=3),
    "convex_gd steps 1e9": lambda: convex_gd(3, eta=0.1, steps=10 ** 9),
    "regressor width 1e6 in fit": lambda: InContextRegressor(width=10 ** 6).fit(*_xy()),
    "classifier steps 1e9 in fit": lambda: InContextClassifier(steps=10 ** 9).fit(_xy()[0], _xy()[1] > 0),
}


def _xy(n=30, d=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    return X, X @ np.arange(1.0, d + 1)


@pytest.mark.parametrize("case", sorted(TOO_BIG_API))
def test_absurd_requests_are_refused_before_allocation(case, monkeypatch):
    """A ResourceError (or SpecError for an impossible size) naming the size and the limit; the estimator's fit
    never reaches its power iteration (the work that took 282 s before)."""
    import icgd.sklearn

    def never(*a, **k):
        raise AssertionError("work started before the size was checked")

    monkeypatch.setattr(icgd.sklearn, "network_step_size", never)
    with pytest.raises((ResourceError, SpecError)) as info:
        TOO_BIG_API[case]()
    msg = str(info.value)
    if isinstance(info.value, ResourceError):
        assert ("GiB" in msg and "ICGD_MEMORY_LIMIT" in msg) or (" h" in msg and "ICGD_TIME_LIMIT" in msg), msg
    else:
        assert "depth" in msg


BIG_CLI = {
    "construct ridge --d-in 1e7": ["construct", "ridge", "--d-in", "10000000"],
    "construct linear --d-in 1e6": ["construct", "linear", "--d-in", "1000000"],
    "construct functional --n 1e8": ["construct", "functional", "--n", "100000000"],
    "construct convex --steps 1e9": ["construct", "convex", "--steps", "1000000000"],
    "construct deep --steps 1e9": ["construct", "deep", "--steps", "1000000000", "--sweep", ""],
}


@pytest.mark.parametrize("case", sorted(BIG_CLI))
def test_absurd_constructions_on_the_command_line(case, tmp_path, capsys):
    line = assert_one_line_error(*run([*BIG_CLI[case], "--out-dir", str(tmp_path / "o")] if "deep" in case
                                      else BIG_CLI[case], capsys))
    assert "GiB" in line or " h" in line
    assert not (tmp_path / "o").exists()


def test_time_limit_is_named_and_configurable(monkeypatch):
    monkeypatch.setenv("ICGD_TIME_LIMIT", "0.0001")  # 0.36 s: 20 000 steps of deep_gd take longer to build
    with pytest.raises(ResourceError, match=r"ICGD_TIME_LIMIT") as info:
        deep_gd(SPEC, eta=0.1, steps=20000, box=1.0, x_bound=1.0)
    assert "more than the 0.0001 h limit" in str(info.value)
    monkeypatch.setenv("ICGD_TIME_LIMIT", "soon")
    with pytest.raises(ConfigError, match="ICGD_TIME_LIMIT"):
        deep_gd(SPEC, eta=0.1, steps=1, box=1.0, x_bound=1.0)


def test_npz_bomb_is_refused_from_its_headers(tmp_path, monkeypatch, capsys):
    """32 MiB of zeros compress to ~32 KiB; with a 16 MiB limit the file is refused from the sizes in its .npy
    headers, and np.load (the decompression) is never called."""
    import icgd.data

    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, X=np.zeros((1 << 21, 2)), Y=np.zeros(1 << 21))
    assert path.stat().st_size < 1 << 20
    monkeypatch.setenv("ICGD_MEMORY_LIMIT", str(16 / 1024))
    monkeypatch.setattr(icgd.data.np, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decompressed")))
    line = assert_one_line_error(*run(["construct", "deep", "--data", str(path), "--out-dir", str(tmp_path / "o")],
                                      capsys), "decompressed arrays")
    assert "0.0156 GiB available" in line and "decompressed arrays 0.0469 GiB" in line  # 32 + 16 MiB (X, Y)
    assert not (tmp_path / "o").exists()


def test_csv_too_large_to_parse_is_refused_before_reading(tmp_path, monkeypatch, capsys):
    path = tmp_path / "d.csv"
    path.write_text("a,y\n" + "0.5,1.5\n" * 200000)  # 1.6 MB: about 26 MB once parsed into Python strings
    monkeypatch.setenv("ICGD_MEMORY_LIMIT", str(16 / 1024))
    assert_one_line_error(*run(["construct", "deep", "--data", str(path), "--out-dir", str(tmp_path / "o")], capsys),
                          "parsed cells")
    assert not (tmp_path / "o").exists()


def test_oversized_task_in_a_training_config_leaves_no_folder(tmp_path):
    cfg = build_config("wu-nn-relu-smoke", overrides=["task_kwargs.width=10000000", "batch_size=64"])
    with pytest.raises(ResourceError, match="task 'wu_network'"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ 2. run folders protected


def _edit_state(folder: Path, **changes) -> None:
    record = json.loads((folder / META_FILE).read_text())
    record.update(changes)
    (folder / META_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize("step", [1, -2, 9])
def test_edited_step_counter_is_refused_and_metrics_kept(run_copy, step):
    before = snapshot(run_copy)
    _edit_state(run_copy, step=step)
    with pytest.raises(CheckpointError, match="checksum does not match"):
        resume(run_copy, steps=5, progress=False)
    unchanged = lambda snap: {k: v for k, v in snap.items() if k not in (META_FILE, ".lock")}  # .lock: the holder
    assert unchanged(snapshot(run_copy)) == unchanged(before)  # metrics, config and tensors untouched


def test_checkpoint_past_the_target_is_refused(run_copy):
    with pytest.raises(ConfigError, match="already at step 3"):
        resume(run_copy, steps=2, progress=False)


def test_second_process_gets_one_line_naming_the_holder(run_copy, capsys):
    import os

    with RunLock(run_copy):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            resume(run_copy, steps=4, progress=False)
        line = assert_one_line_error(*run(["train", "--resume", str(run_copy), "--steps", "4"], capsys), "in use")
        assert f"pid {os.getpid()}" in line
    assert load_checkpoint(run_copy).step == 3
    resume(run_copy, steps=4, progress=False)  # released: the run continues
    assert load_checkpoint(run_copy).step == 4


_HOLDER = ("import sys, time\nfrom icgd.train.checkpoint import RunLock\n"
           "with RunLock(sys.argv[1]):\n    time.sleep(120)\n")


def test_lock_held_by_another_process_and_released_when_it_is_killed(run_copy, capsys):
    """A real second process holds the folder: resume is refused with one line naming its pid; after a SIGKILL of
    the holder the kernel has dropped the lock and the run resumes."""
    import os
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_copy)], env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while f"pid {holder.pid} " not in ((run_copy / ".lock").read_text() if (run_copy / ".lock").exists()
                                           else "") and time.monotonic() < deadline:
            time.sleep(0.1)
        line = assert_one_line_error(*run(["train", "--resume", str(run_copy), "--steps", "4"], capsys), "in use")
        assert f"pid {holder.pid} " in line
    finally:
        holder.kill()
        holder.wait()
    resume(run_copy, steps=4, progress=False)
    assert load_checkpoint(run_copy).step == 4
    steps = [json.loads(x)["step"] for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # no duplicated or out-of-order records


def test_new_run_over_an_earlier_runs_files_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _cfg(extra=["lr=0.5"]).save(out / "config.json")
    (out / "metrics.jsonl").write_text('{"step": 1, "train_loss": 1.0, "eval_loss": 1.0, "baselines": {}}\n')
    before = snapshot(out)
    with pytest.raises(ConfigError, match=r"earlier run's config.json, metrics.jsonl .*keys: lr"):
        train(_cfg(), out, progress=False)
    assert snapshot(out) == before
    (out / "config.json").unlink()
    with pytest.raises(ConfigError, match="no readable config.json"):
        train(_cfg(), out, progress=False)


def test_corrupt_middle_metrics_line_is_kept_aside(run_copy):
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:25] + "#garbage"
    (run_copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="kept in metrics.rejected.jsonl"):
        resume(run_copy, steps=4, progress=False)
    rejected = [json.loads(x) for x in (run_copy / "metrics.rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2] and rejected[0]["text"] == lines[1]
    steps = [json.loads(x)["step"] for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 3, 4]


def test_weights_of_another_dtype_are_refused(run_copy):
    ck = load_checkpoint(run_copy)
    save_checkpoint(run_copy, step=ck.step, model={k: v.double() for k, v in ck.model.items()}, state=ck.state,
                    meta=ck.meta)
    with pytest.raises(CheckpointError, match="is float64, the config needs float32"):
        resume(run_copy, steps=4, progress=False)
    X, y = _xy(n=4, d=2)  # the estimator's checkpoint engine checks the same way (it used to cast silently)
    with pytest.raises(CheckpointError, match="is float64, the config needs float32"):
        InContextRegressor(engine="checkpoint", checkpoint=run_copy).fit(X, y)


# ------------------------------------------------------------------------------------ 3. no tracebacks


def test_resume_force_after_a_shape_change(run_copy, capsys):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["n_embd"] = 32
    (run_copy / "config.json").write_text(json.dumps(cfg))
    line = assert_one_line_error(*run(["train", "--resume", str(run_copy), "--steps", "4", "--force"], capsys),
                                 "shape")
    assert "not even with --force" in line


@pytest.mark.parametrize("damage", ["renamed tensor", "missing section", "mistyped skips"])
def test_checkpoints_that_disagree_with_the_config(run_copy, damage):
    ck = load_checkpoint(run_copy)
    model, meta = dict(ck.model), dict(ck.meta)
    if damage == "renamed tensor":
        key = sorted(model)[0]
        model[key + "_old"] = model.pop(key)
    elif damage == "missing section":
        del meta["optimizer"]
    else:
        meta["skips"] = "none"
    save_checkpoint(run_copy, step=ck.step, model=model, state=ck.state, meta=meta)
    needle = {"renamed tensor": "missing", "missing section": "lacks", "mistyped skips": "skips"}[damage]
    with pytest.raises(CheckpointError, match=needle):
        resume(run_copy, steps=4, progress=False)


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', '{"step": "2", "train_loss": 1, "eval_loss": 1, '
                                  '"baselines": {}}', '{"step": 2, "train_loss": null, "eval_loss": 1, '
                                  '"baselines": {}}', '{"step": 1, "train_loss": 1, "eval_loss": 1, "baselines": {}}'])
def test_mistyped_metrics_lines(run_copy, line, capsys):
    """Not an object, a step as a string, a null loss, a duplicate step: kept aside, and the CLI still prints."""
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write(line + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = run(["train", "--resume", str(run_copy), "--steps", "4"], capsys)
    assert code == 0, err
    assert "step 4:" in " ".join(out.split())
    assert json.loads((run_copy / "metrics.rejected.jsonl").read_text())["text"] == line


@pytest.mark.parametrize("content", [b"PK\x03\x04" + b"\x00" * 60, "truncated"])
def test_corrupt_npz(content, tmp_path, capsys):
    path = tmp_path / "d.npz"
    if content == "truncated":
        np.savez(path, X=np.ones((50, 2)), Y=np.ones(50))
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    assert_one_line_error(*run(["construct", "deep", "--data", str(path)], capsys), "cannot read")


@pytest.mark.parametrize("args", [
    ["construct", "deep", "--seed", HUGE, "--sweep", ""],
    ["construct", "linear", "--d-in", HUGE],
    ["construct", "deep", "--sweep", f"16,{HUGE}"],
    ["train", "--preset", "garg-linear-smoke", "--steps", HUGE],
    ["train", "--preset", "garg-linear-smoke", "--set", f"seed={HUGE}"],
    ["train", "--preset", "garg-linear-smoke", "--seed", "-" + HUGE],
])
def test_integers_beyond_64_bits(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run(args, capsys), "64-bit")
    assert not any(tmp_path.iterdir())


def test_integers_beyond_64_bits_in_the_api(tmp_path):
    with pytest.raises(ConfigError, match="64-bit"):
        train(_cfg(extra=[f"seed={HUGE}"]), tmp_path / "run", progress=False)
    with pytest.raises(SpecError, match="64-bit"):
        linear_gd(3, eta=0.1, steps=2 ** 64)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_estimator_on_cuda_without_cuda():
    with pytest.raises(DeviceError, match="no CUDA"):
        InContextRegressor(device="cuda").fit(*_xy())
    with pytest.raises(DeviceError, match="no CUDA"):
        InContextClassifier(device="cuda:0").fit(_xy()[0], _xy()[1] > 0)


def test_estimator_inputs():
    X, y = _xy()
    est = InContextRegressor(steps=2, knots=16, width=3, random_state=0)
    with pytest.raises(DTypeError, match="InContextClassifier"):
        est.fit(X, np.array(["a", "b", "c"] * 10))
    with pytest.raises(DTypeError, match="strings"):
        est.fit(X, y.astype(str))
    with pytest.raises(DeviceError, match="meta"):
        est.fit(torch.zeros(30, 3, device="meta"), y)
    with pytest.raises(DeviceError, match="meta"):
        InContextRegressor(device="meta").fit(X, y)
    est.fit(X, y)
    with pytest.raises(ShapeError, match="zero queries"):
        est.predict(X[:0])
    with pytest.raises(ShapeError, match="X has 4 features"):
        est.predict(np.ones((2, 4)))
    with pytest.raises(DeviceError, match="meta"):
        est.predict(torch.zeros(2, 3, device="meta"))
    clf = InContextClassifier(steps=2).fit(X, y > 0)
    with pytest.raises(ShapeError, match="zero queries"):
        clf.predict(X[:0])


def test_construction_inputs():
    spec = NetSpec(2, 3, 2, 1)
    model = deep_gd(spec, eta=0.1, steps=1, box=1.0, x_bound=1.0)
    w0 = torch.zeros(spec.num_params, dtype=torch.float64)
    X, Y = torch.rand(4, 2) * 0.5, torch.rand(4, 1) * 0.5
    with pytest.raises(ShapeError, match="zero prompts"):
        model.predict(torch.zeros(0, 4, 2), torch.zeros(0, 4, 1), torch.zeros(0, 2, 2), w0)
    with pytest.raises(ShapeError, match=r"x_query has shape \(2, 3\), expected \('m', 2\)"):
        model.predict(X, Y, torch.zeros(2, 3), w0)
    with pytest.raises(DeviceError, match="meta"):
        model.predict(X.to("meta"), Y, torch.zeros(2, 2), w0)
    with pytest.raises(ShapeError, match="zero prompts"):
        linear_gd(3, eta=0.1).predict(torch.zeros(0, 4, 3), torch.zeros(0, 4, 1), torch.zeros(0, 1, 3))
    # the same model still answers a good prompt, equal to autograd GD's network on the query
    from icgd.nets import forward

    ref = gd_trajectory(spec, X.double(), Y.double(), w0, 0.1, 1, box=1.0)
    xq = torch.rand(2, 2, dtype=torch.float64) * 0.5
    assert torch.allclose(model.predict(X, Y, xq, w0), forward(spec, ref[-1], xq), atol=1e-4)


# ------------------------------------------------------------------------------------ 4. no silently wrong numbers


def _linear_net_problem():
    spec = NetSpec(2, 3, 2, 1, "identity")  # exact fits: the construction equals GD up to rounding
    g = torch.Generator().manual_seed(0)
    X = torch.rand(6, 2, generator=g, dtype=torch.float64) - 0.5
    Y = torch.rand(6, 1, generator=g, dtype=torch.float64) - 0.5
    w0 = (torch.rand(spec.num_params, generator=g, dtype=torch.float64) - 0.5) * 0.5
    return spec, X, Y, w0


def test_projection_with_a_large_step_matches_autograd():
    """|η∇L| up to ~1e6·box: the projected step equals autograd GD's clamp to 1e-9 of the box width."""
    spec, X, Y, w0 = _linear_net_problem()
    for eta in (1e4, 1e7):  # |η∇L| about 20 and 2e4 times the box
        ref = gd_trajectory(spec, X, Y, w0, eta, 1, box=0.5)
        model = deep_gd(spec, eta=eta, steps=1, box=0.5, fit_range=10.0)
        tr = model.trace(X, Y, w0)
        assert float((tr - ref).abs().max()) <= 1e-9 * 0.5, eta
        assert float(ref[-1].abs().max()) == 0.5  # the step did leave the box: the clip is what is tested


def test_projection_with_an_enormous_step_raises():
    """|η∇L| ~ 1e17 (the case that came out off by the whole box width): a RangeError, not a wrong weight."""
    spec, X, Y, w0 = _linear_net_problem()
    model = deep_gd(spec, eta=1e18, steps=1, box=0.5, fit_range=10.0)
    with pytest.raises(RangeError, match="projection"):
        model.trace(X, Y, w0)


@pytest.mark.parametrize("which", ["regressor X", "regressor y", "classifier X"])
def test_standardisation_overflow_is_refused(which):
    X, y = _xy()
    with pytest.raises(DataError, match="overflows float64"):
        if which == "regressor X":
            InContextRegressor(steps=2, knots=16, width=3).fit(X * 1e307, y)
        elif which == "regressor y":
            InContextRegressor(steps=2, knots=16, width=3).fit(X, y * 1e306)
        else:
            InContextClassifier(steps=2).fit(X * 1e307, y > 0)


def test_complex_inputs_are_refused_without_a_warning():
    spec = NetSpec(2, 3, 2, 1)
    model = deep_gd(spec, eta=0.1, steps=1, box=1.0, x_bound=1.0)
    w0 = torch.zeros(spec.num_params, dtype=torch.float64)
    X, Y = torch.rand(4, 2) * 0.5, torch.rand(4, 1) * 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old path only warned (ComplexWarning) and dropped the imaginary part
        with pytest.raises(DTypeError, match="complex"):
            model.predict(X.to(torch.complex128), Y, torch.zeros(2, 2), w0)
        with pytest.raises(DTypeError, match="complex"):
            linear_gd(2, eta=0.1).predict(X.numpy() + 1j, Y, np.zeros((1, 2)))
        with pytest.raises(DTypeError, match="complex"):
            InContextRegressor().fit(torch.tensor(_xy()[0] + 1j), _xy()[1])


@pytest.mark.parametrize("build", [
    lambda: deep_gd(NetSpec(2, 3, 2, 1), eta=True, steps=1, box=1.0, x_bound=1.0),
    lambda: linear_gd(3, eta=True),
    lambda: convex_gd(3, eta=np.bool_(True), steps=1),
    lambda: InContextRegressor(eta=True).fit(*_xy()),
])
def test_eta_true_is_not_one(build):
    with pytest.raises(SpecError, match="eta"):
        build()


def test_box_nan_blames_the_box(tmp_path, capsys):
    line = assert_one_line_error(*run(["construct", "deep", "--box", "nan", "--sweep", "", "--out-dir",
                                       str(tmp_path / "o")], capsys), "box")
    assert "w0" not in line and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ 5. no partial outputs


@pytest.mark.parametrize("sweep", ["1,16", "16,0", "16,x"])
def test_bad_sweep_leaves_no_figure(sweep, tmp_path, capsys):
    out = tmp_path / "plots"
    assert_one_line_error(*run(["construct", "deep", "--depth", "1", "--width", "2", "--steps", "1", "--n", "8",
                                "--sweep", sweep, "--out-dir", str(out)], capsys), "sweep")
    assert not out.exists()


@pytest.mark.parametrize("setting,needle", [
    ("n_layer=-1", "> 0"), ("n_layer=2.5", "integer"), ("con_etas=[-0.1]", "list of number"),
    ("attentions=\"relu\"", "list"), ("lr=nan", "lr"),
])
def test_bad_reproduce_setting_leaves_no_folder(setting, needle, tmp_path, capsys):
    out = tmp_path / "rep"
    code, stdout, err = run(["reproduce", "wu2025", "--set", setting, "--out", str(out)], capsys)
    assert_one_line_error(code, stdout, err, needle)
    assert not out.exists() and "training" not in stdout  # refused before any training started


def test_failure_inside_an_experiment_removes_its_empty_folder(tmp_path, capsys):
    out = tmp_path / "rep"
    assert_one_line_error(*run(["reproduce", "wu2025", "--set", "direct_positions=[40]", "--out", str(out)], capsys),
                          "position")
    assert not out.exists()


def test_hostile_inputs_raise_icgd_errors_only():
    """Every error class used above is an ICGDError (the CLI's one-line contract) and keeps its builtin base."""
    for cls, base in [(DeviceError, ValueError), (DTypeError, ValueError), (RunLockedError, RuntimeError)]:
        assert issubclass(cls, ICGDError) and issubclass(cls, base)
