"""icgd train: config handling, exact resume, crash safety (SIGKILL), the lsa-smoke acceptance run, DDP on CPU."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from icgd.cli import main
from icgd.errors import ConfigError
from icgd.train import TrainConfig, build_config, load_checkpoint, resume, train

TINY = ["n_layer=1", "n_head=1", "n_embd=16", "eval_prompts=32", "batch_size=16", "log_every=1",
        "baselines=[\"ols\"]", "d_in=3", "n_points=6", "warmup=2"]


def _cfg(steps=8, save_every=2, extra=()):
    return build_config("garg-linear-smoke", overrides=[*TINY, f"steps={steps}", f"save_every={save_every}", *extra])


def _losses(folder):
    return [json.loads(line)["train_loss"] for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def test_config_errors_name_the_valid_choices(tmp_path):
    with pytest.raises(ConfigError, match="valid keys: .*batch_size"):
        build_config("lsa-smoke", overrides=["batch_sise=3"])
    with pytest.raises(ConfigError, match="presets: .*lsa-smoke"):
        build_config("nope")
    with pytest.raises(ConfigError, match="attention"):
        build_config("lsa-smoke", overrides=["attention=cosine"])
    with pytest.raises(ConfigError, match="type"):
        build_config("lsa-smoke", overrides=["steps=ten"])
    cfg = build_config("lsa-smoke", overrides=["task_kwargs.noise=0.5", "lr=0.01"])
    assert cfg.task_kwargs["noise"] == 0.5 and cfg.lr == 0.01
    toml = tmp_path / "c.toml"
    toml.write_text('lr = 0.002\n[task_kwargs]\nnoise = 0.25\n')
    assert build_config("lsa-smoke", toml).task_kwargs == {"noise": 0.25}


def test_run_folder_contract(tmp_path):
    train(_cfg(steps=4), tmp_path, progress=False)
    assert {"config.json", "metrics.jsonl", "model.safetensors", "state.safetensors", "state.json"} <= {
        p.name for p in tmp_path.iterdir()}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all({"step", "train_loss", "eval_loss", "baselines"} <= set(r) and "ols" in r["baselines"] for r in rows)
    assert TrainConfig.load(tmp_path / "config.json") == _cfg(steps=4, extra=[f"out={tmp_path}"])  # the real folder
    assert load_checkpoint(tmp_path).step == 4


def test_resume_continues_the_same_loss_sequence_bitwise(tmp_path):
    train(_cfg(steps=8), tmp_path / "full", progress=False)
    train(_cfg(steps=8), tmp_path / "part", steps=5, progress=False)  # stops at 5, checkpoint at 4 and 5
    resume(tmp_path / "part", steps=8, progress=False)
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(_cfg(steps=2), tmp_path, progress=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["lr"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="keys: lr"):
        resume(tmp_path, steps=3, progress=False)
    resume(tmp_path, steps=3, force=True, progress=False)
    assert load_checkpoint(tmp_path).step == 3


def test_starting_over_an_existing_run_is_refused(tmp_path):
    train(_cfg(steps=2), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(steps=2), tmp_path, progress=False)


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(Exception, match="non-finite"):
        train(_cfg(steps=30, extra=["lr=1e9", "grad_clip=0", "layernorm=false"]), tmp_path, progress=False)
    if (tmp_path / "state.json").exists():
        ck = load_checkpoint(tmp_path)
        assert all(bool(torch.isfinite(v).all()) for v in ck.model.values())


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from icgd.train import build_config, train, resume
    kill_at = int(sys.argv[2])
    calls = [0]
    real = os.replace
    def replace(src, dst):  # SIGKILL ourselves in the middle of the kill_at-th checkpoint swap
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    os.replace = replace
    overrides = sys.argv[3:]
    if sys.argv[1] == "new":
        train(build_config("garg-linear-smoke", overrides=overrides), os.environ["RUN"], progress=False)
    else:
        resume(os.environ["RUN"], steps=8, progress=False)
""")


@pytest.mark.parametrize("kill_at", [2, 4, 7, 11])
def test_sigkill_during_save_then_resume_is_exact(tmp_path, kill_at):
    overrides = [*TINY, "steps=8", "save_every=1"]
    reference = tmp_path / "ref"
    train(build_config("garg-linear-smoke", overrides=overrides), reference, progress=False)
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    env = {**os.environ, "RUN": str(tmp_path / "run")}
    proc = subprocess.run([sys.executable, str(script), "new", str(kill_at), *overrides], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ck = load_checkpoint(tmp_path / "run")  # a complete checkpoint survived the kill
    assert 0 <= ck.step < 8
    proc = subprocess.run([sys.executable, str(script), "resume", "0"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _losses(tmp_path / "run") == _losses(reference)


_FAULTS = textwrap.dedent("""
    import os, pathlib, signal, sys
    import icgd.train.checkpoint as ck
    import icgd.train.loop as loop
    from icgd.cli import main
    from icgd.train import build_config, resume, train

    mode, at = sys.argv[2], int(sys.argv[3])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    count = [0]

    def tick():
        count[0] += 1
        return count[0] == at

    if mode == "step":  # between steps: at the start of training step `at` (0-based)
        real_step = loop.Trainer.train_step
        def train_step(self, step):
            if step == at:
                die()
            return real_step(self, step)
        loop.Trainer.train_step = train_step
    elif mode == "ctrl-c":  # a real SIGINT at the start of training step `at`
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a background parent may have left SIGINT ignored
        real_step = loop.Trainer.train_step
        def train_step(self, step):
            if step == at:
                os.kill(os.getpid(), signal.SIGINT)
            return real_step(self, step)
        loop.Trainer.train_step = train_step
    elif mode == "write":  # the `at`-th tensor file is half written when the process dies
        real_save = ck.save_file
        def save_file(tensors, path):
            real_save(tensors, path)
            if tick():
                size = os.path.getsize(path)
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                die()
        ck.save_file = save_file
    elif mode == "unlink":  # dies while removing the `at`-th .prev file (the new checkpoint is committed)
        real_unlink = pathlib.Path.unlink
        def unlink(self, missing_ok=False):
            if self.name.endswith(".prev") and self.exists() and tick():
                die()
            return real_unlink(self, missing_ok=missing_ok)
        pathlib.Path.unlink = unlink
    elif mode == "metrics":  # dies in the middle of the `at`-th metrics line
        real_append = loop.MetricsLog.append
        def append(self, record):
            if tick():
                with open(self.path, "a") as f:
                    f.write('{"step": 99, "train_lo')
                    f.flush()
                    os.fsync(f.fileno())
                die()
            return real_append(self, record)
        loop.MetricsLog.append = append
    overrides = sys.argv[4:]
    run = os.environ["RUN"]
    if sys.argv[1] == "new":
        if mode == "ctrl-c":
            args = ["train", "--preset", "garg-linear-smoke", "--out", run]
            for o in overrides:
                args += ["--set", o]
            main(args)
        train(build_config("garg-linear-smoke", overrides=overrides), run, progress=False)
    else:
        resume(run, steps=8, progress=False)
""")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run, on one thread like the subprocesses (bitwise equality holds for a fixed thread count)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(build_config("garg-linear-smoke", overrides=[*TINY, "steps=8", "save_every=8"]), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("mode,at,save_every,survivor", [
    ("step", 5, 2, 4),  # between steps, one step past the last checkpoint (metrics of step 5 must be dropped)
    ("write", 4, 2, 2),  # save_file calls: model@2, state@2, model@4, state@4 (half written here), model@6 …
    ("write", 5, 2, 4),  # … the 3rd checkpoint's model file half written
    ("unlink", 2, 2, 4),  # after the 2nd checkpoint committed, while its .prev files are removed
    ("metrics", 3, 2, 2),  # a torn metrics line
    ("ctrl-c", 5, 3, 5),  # Ctrl-C: a checkpoint at the last completed step, exit status 130
])
def test_faults_anywhere_then_resume_is_exact(tmp_path, uninterrupted, mode, at, save_every, survivor):
    """SIGKILL between steps, mid-write of a tensor file, mid-cleanup and mid-metrics-line, or Ctrl-C: a complete
    checkpoint survives, and the resumed run's train_loss sequence and final weights equal an uninterrupted run's
    bitwise (CPU)."""
    overrides = [*TINY, "steps=8", f"save_every={save_every}"]  # save_every does not change the computation
    reference = uninterrupted
    script = tmp_path / "faults.py"
    script.write_text(_FAULTS)
    env = {**os.environ, "RUN": str(tmp_path / "run"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "new", mode, str(at), *overrides], env=env,
                          capture_output=True, text=True, timeout=300)
    expected = 130 if mode == "ctrl-c" else -signal.SIGKILL
    assert proc.returncode == expected, proc.stderr[-3000:]
    if mode == "ctrl-c":
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("icgd: aborted") and "--resume" in lines[0], proc.stderr
    assert load_checkpoint(tmp_path / "run").step == survivor
    proc = subprocess.run([sys.executable, str(script), "resume", "none", "0"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(tmp_path / "run") == _losses(reference)
    a, b = load_checkpoint(reference), load_checkpoint(tmp_path / "run")
    assert b.step == 8 and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_kill_before_the_first_checkpoint_then_start_over(tmp_path, capsys):
    """No checkpoint yet: resuming is refused with one line (exit 2), and a new run in the same folder is allowed
    and equals an uninterrupted one."""
    overrides = [*TINY, "steps=6", "save_every=3"]
    reference = tmp_path / "ref"
    train(build_config("garg-linear-smoke", overrides=overrides), reference, progress=False)
    script = tmp_path / "faults.py"
    script.write_text(_FAULTS)
    env = {**os.environ, "RUN": str(tmp_path / "run"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "new", "step", "2", *overrides], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    with pytest.raises(SystemExit) as info:
        main(["train", "--resume", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "no complete checkpoint" in err[0]
    train(build_config("garg-linear-smoke", overrides=overrides), tmp_path / "run", progress=False)
    assert _losses(tmp_path / "run") == _losses(reference)


def test_lsa_smoke_reaches_gd_and_aligns_with_the_construction(tmp_path, one_thread):
    """[train] acceptance: lsa-smoke ends within 3 % of the tuned 1-step GD loss, model cos >= 0.99."""
    from icgd.analysis import model_cos
    from icgd.constructions import linear_gd
    from icgd.models import LSA
    from icgd.tasks import make_task

    main(["train", "--preset", "lsa-smoke", "--out", str(tmp_path)])
    last = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert abs(last["eval_loss"] - last["baselines"]["gd"]) <= 0.03 * last["baselines"]["gd"]
    cfg = TrainConfig.load(tmp_path / "config.json")
    model = LSA(cfg.d_in, cfg.d_out, n_layer=cfg.n_layer).double()
    model.load_state_dict({k: v.double() for k, v in load_checkpoint(tmp_path).model.items()})
    p = make_task(cfg.task, d=cfg.d_in, **cfg.task_kwargs).sample(512, cfg.n_points, seed=7, step=0, m=1,
                                                                   dtype=torch.float64)
    construction = linear_gd(cfg.d_in, eta=1.0)
    cos = model_cos(model, lambda X, Y, q: construction.predict(X, Y, q, grad=True), p.X, p.Y, p.x_query)
    assert cos >= 0.99


def test_two_process_ddp_matches_single_process(tmp_path):
    overrides = [*TINY, "steps=4", "save_every=4"]
    single = tmp_path / "single"
    train(build_config("garg-linear-smoke", overrides=overrides), single, progress=False)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "icgd.cli",
            "train", "--preset", "garg-linear-smoke", "--out", str(tmp_path / "ddp")]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_checkpoint(single), load_checkpoint(tmp_path / "ddp")
    for k in a.model:
        assert torch.allclose(a.model[k], b.model[k], rtol=1e-4, atol=1e-6), k
    la, lb = _losses(single), _losses(tmp_path / "ddp")
    assert len(la) == len(lb) and all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(la, lb))
