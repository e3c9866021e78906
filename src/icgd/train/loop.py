"""The training loop behind ``icgd train``: AdamW, warm-up + cosine, clipping, periodic evaluation against the
baselines of :mod:`icgd.learners` on the same held-out prompts, crash-safe checkpoints and exact resume.

**Run folder** (a contract)::

    config.json          the TrainConfig
    metrics.jsonl        one JSON object per log step: step, train_loss, eval_loss, baselines {name: loss}, lr, …
    model.safetensors    \\
    state.safetensors     } the checkpoint (see icgd.train.checkpoint)
    state.json           /
    .lock                names the process training in the folder (a second one is refused)
    metrics.rejected.jsonl   lines of metrics.jsonl that were not valid records, kept aside on resume

**Protection.** A run holds the folder's lock while it trains (:class:`~icgd.train.checkpoint.RunLock`). A new
run refuses a folder with an earlier run's checkpoint, or with its ``config.json``/``metrics.jsonl`` under a
different config (the same config may start over: it rewrites the same records). On resume every tensor of the
checkpoint is checked against the model and optimizer the config builds (names, shapes, dtypes), and a checkpoint
already past the target step is refused. Metrics lines that are not valid records (torn, not an object, mistyped,
out of order) are moved to ``metrics.rejected.jsonl`` with their line number and the reason, never dropped
silently.

**Determinism.** The prompts of step s are drawn from a generator seeded by ``(seed, s)``
(:meth:`icgd.tasks.Task.sample`), the model is initialised from a generator seeded by `seed`, and the held-out set
from ``(seed, EVAL_STREAM)``. No global RNG state is used, so a run resumed from its checkpoint at step s sees the
same prompts and computes the same steps s+1, s+2, … as the uninterrupted run: bitwise on CPU (same machine, same
torch, same thread count; tested by killing runs anywhere, tests/test_train.py). On GPU, cuBLAS/cuDNN algorithm
choice, the fused SDPA kernels and atomic adds in backward passes may differ from run to run; results then agree to
float tolerance only, unless ``icgd train --deterministic`` (``torch.use_deterministic_algorithms(True)`` with
``CUBLAS_WORKSPACE_CONFIG=:4096:8``) is used. DDP all-reduces in an order that depends on the process count, so a
2-process run matches a 1-process run to float tolerance, not bitwise.

**Losses.** ``model="icl"``: mean over prompts, positions and outputs of (ŷ_i − y_i)², ŷ_i predicted from the
pairs before i (Garg et al.). ``model="lsa"``: ½ mean over prompts of ‖ŷ_q − y_q‖² for one query (von Oswald et
al.'s code convention). The baselines are scored with the same definition on the same prompts.

**Faults.** A non-finite loss stops the run with :class:`~icgd.errors.TrainingError` and keeps the last good
checkpoint (``on_nonfinite="skip"`` drops the step instead, up to `max_skips` times). Ctrl-C saves a checkpoint at
the last completed step and exits.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from icgd.errors import CheckpointError, ConfigError, TrainingError
from icgd.train.checkpoint import (RunLock, check_tensors, has_checkpoint, load_checkpoint, optimizer_tensors,
                                   restore_optimizer, save_checkpoint)
from icgd.train.config import TrainConfig, train_memory

EVAL_STREAM = 1 << 40  # the held-out prompts use step numbers no training step reaches
TUNE_STREAM = EVAL_STREAM + 1


# ---------------------------------------------------------------------------------------------- building blocks


def build_model(cfg: TrainConfig) -> nn.Module:
    from icgd.models import LSA, ICLTransformer, ICLTransformerConfig

    gen = torch.Generator().manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.dtype)
    if cfg.model == "lsa":
        model = LSA(cfg.d_in, cfg.d_out, n_layer=cfg.n_layer, shared=cfg.shared, n_head=cfg.n_head,
                    init_std=cfg.init_std or None, generator=gen)
    else:
        model = ICLTransformer(ICLTransformerConfig(
            cfg.d_in, cfg.d_out, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, attention=cfg.attention,
            causal=cfg.causal, token_format=cfg.token_format, max_points=cfg.n_points, mlp=cfg.mlp,
            layernorm=cfg.layernorm, loop=cfg.loop, loop_inject=cfg.loop_inject, d_mlp=cfg.d_mlp or None,
            mlp_activation=cfg.mlp_activation), generator=gen)
    return model.to(dtype=dtype, device=cfg.device)


def build_task(cfg: TrainConfig):
    from icgd.tasks import make_task

    return make_task(cfg.task, d=cfg.d_in, d_out=cfg.d_out, **cfg.task_kwargs)


def gd_steps(cfg: TrainConfig) -> int:
    """GD baseline steps: as many as the model has layers (looped layers count each pass)."""
    return cfg.n_layer * (cfg.loop if cfg.model == "icl" else 1)


@dataclass
class Batch:
    X: torch.Tensor  # (B, n, d)
    Y: torch.Tensor  # (B, n, d_out)


def sample_batch(cfg: TrainConfig, task, step: int, batch: int | None = None) -> Batch:
    """The prompts of `step` (for LSA: n_points context pairs + 1 query). Training steps follow the curriculum;
    the held-out streams use the full size."""
    n, n_dims = cfg.n_points, None
    if cfg.curriculum and step < EVAL_STREAM:
        from icgd.tasks import Curriculum

        n_dims, n = Curriculum(**cfg.curriculum).at(step)
    n += 1 if cfg.model == "lsa" else 0
    p = task.sample(batch or cfg.batch_size, n, seed=cfg.seed, step=step, n_dims=n_dims, device=cfg.device,
                    dtype=getattr(torch, cfg.dtype))
    return Batch(p.X, p.Y)


def predictions(cfg: TrainConfig, model: Callable, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) under the run's loss definition."""
    if cfg.model == "lsa":
        return model(b.X[:, :-1], b.Y[:, :-1], b.X[:, -1:]), b.Y[:, -1:]
    return model(b.X, b.Y), b.Y


def loss_of(cfg: TrainConfig, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    err = (pred - target) ** 2
    return 0.5 * err.sum(-1).mean() if cfg.model == "lsa" else err.mean()


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up for `warmup` steps, then cosine from lr to lr·lr_min_ratio at `steps`."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    lo = cfg.lr * cfg.lr_min_ratio
    return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


# ---------------------------------------------------------------------------------------------- baselines


def baseline_losses(cfg: TrainConfig, task, eval_batch: Batch) -> dict[str, float]:
    """The configured baselines' losses on the held-out prompts (GD with η tuned on other prompts)."""
    from icgd.learners import GD, make_learner

    out = {}
    for name in cfg.baselines:
        if name == "gd":
            tune = sample_batch(cfg, task, TUNE_STREAM, min(cfg.eval_prompts, 1024))
            learner = _tune_gd(cfg, GD, tune)
        else:
            learner = make_learner(name)
        pred, target = predictions(cfg, _as_model(cfg, learner), _double(eval_batch))
        out[name] = float(loss_of(cfg, pred, target))
    return out


def _double(b: Batch) -> Batch:
    return Batch(b.X.double().cpu(), b.Y.double().cpu())


def _as_model(cfg: TrainConfig, learner) -> Callable:
    if cfg.model == "lsa":
        return learner.predict
    return learner.prefix_predictions


def _tune_gd(cfg: TrainConfig, GD, b: Batch):
    b = _double(b)
    steps = gd_steps(cfg)
    if cfg.model == "lsa":
        return GD.tune(b.X[:, :-1], b.Y[:, :-1], b.X[:, -1:], b.Y[:, -1:], steps)
    n = b.X.shape[1] - 1  # tune on predicting the last point from the others
    return GD.tune(b.X[:, :n], b.Y[:, :n], b.X[:, n:], b.Y[:, n:], steps)


# ---------------------------------------------------------------------------------------------- the run


REJECTED = "metrics.rejected.jsonl"


def metrics_problem(record) -> str:
    """Why a parsed metrics line is not a valid record ("" if it is one): an object with an integer ``step`` >= 1,
    numbers ``train_loss`` and ``eval_loss`` and a ``baselines`` object of numbers."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        return f"step must be an integer >= 1, got {step!r}"
    for key in ("train_loss", "eval_loss"):
        if not number(record.get(key)):
            return f"{key} must be a number, got {record.get(key)!r}"
    base = record.get("baselines")
    if not isinstance(base, dict) or not all(number(v) for v in base.values()):
        return f"baselines must be an object of numbers, got {base!r}"
    return ""


class MetricsLog:
    """``metrics.jsonl``: appended line by line, flushed; on resume, lines past the checkpoint are dropped (they are
    recomputed identically) and invalid lines are moved to ``metrics.rejected.jsonl``."""

    def __init__(self, path: Path):
        self.path = path

    def scan(self) -> tuple[list[tuple[str, dict]], list[dict]]:
        """(valid records with their lines, rejected lines as ``{"line", "text", "reason"}``). A record whose step
        does not follow the previous valid one is rejected as out of order."""
        if not self.path.exists():
            return [], []
        good: list[tuple[str, dict]] = []
        bad: list[dict] = []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                why = metrics_problem(record)
            except ValueError as exc:
                why = f"not JSON ({exc}; a torn last line is what a killed process leaves)"
            if not why and good and record["step"] <= good[-1][1]["step"]:
                why = f"step {record['step']} after step {good[-1][1]['step']}: out of order"
            if why:
                bad.append({"line": number, "text": line, "reason": why})
            else:
                good.append((line, record))
        return good, bad

    def _lines(self) -> list[tuple[str, dict]]:
        return self.scan()[0]

    def truncate_after(self, step: int) -> None:
        """Keep the valid records up to `step` (written atomically: temp file, fsync, os.replace); append the
        invalid lines to ``metrics.rejected.jsonl`` first."""
        if not self.path.exists():
            return
        good, bad = self.scan()
        if bad:
            with open(self.path.with_name(REJECTED), "a") as f:
                f.write("".join(json.dumps(b) + "\n" for b in bad))
                f.flush()
                os.fsync(f.fileno())
            warnings.warn(f"{len(bad)} line(s) of {self.path} were not valid metrics records (first: line "
                          f"{bad[0]['line']}, {bad[0]['reason']}); kept in {REJECTED}", stacklevel=2)
        keep = [line for line, record in good if record["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in keep))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """The valid records (see :meth:`scan`)."""
        return [record for _, record in self._lines()]


@dataclass
class Trainer:
    cfg: TrainConfig
    out: Path
    progress: bool = True
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        self.task = build_task(self.cfg)
        self.model = build_model(self.cfg)
        self.module = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.model)
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                     betas=(self.cfg.beta1, self.cfg.beta2))
        self.step = 0
        self.skips = 0
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        self.eval_batch = sample_batch(self.cfg, self.task, EVAL_STREAM, self.cfg.eval_prompts)
        self.baselines: dict[str, float] | None = None
        self.writer = None

    # -- checkpoints

    def save(self) -> None:
        if self.rank != 0:
            return
        tensors, rest = optimizer_tensors(self.opt)
        meta = {"config_hash": self.cfg.hash(), "config": self.cfg.to_dict(), "optimizer": rest,
                "skips": self.skips, "baselines": self.baselines}
        save_checkpoint(self.out, step=self.step, model=self.module.state_dict(), state=tensors, meta=meta)

    def restore(self, force: bool = False) -> None:
        ck = load_checkpoint(self.out, device=self.cfg.device)
        if ck.meta.get("config_hash") != self.cfg.hash() and not force:
            try:
                keys = self.cfg.differing_keys(TrainConfig.from_dict(ck.meta["config"]))
            except (KeyError, ConfigError):
                keys = ["(unreadable saved config)"]
            raise ConfigError(f"the checkpoint at step {ck.step} was written with a different config (keys: "
                              f"{', '.join(keys)}); pass --force to resume anyway")
        self._check_loaded(ck)
        self.module.load_state_dict(ck.model)
        restore_optimizer(self.opt, ck.state, ck.meta["optimizer"])
        self.step, self.skips = ck.step, ck.meta.get("skips", 0)
        self.baselines = ck.meta.get("baselines")
        if self.rank == 0:
            self.metrics.truncate_after(self.step)

    def _check_loaded(self, ck) -> None:
        """The checkpoint's sections, and its tensors against the model and optimizer the config builds."""
        meta = ck.meta
        missing = [k for k in ("config_hash", "config", "optimizer") if k not in meta]
        if missing or not isinstance(meta.get("optimizer"), dict) or "param_groups" not in meta["optimizer"]:
            raise CheckpointError(f"the checkpoint in {self.out} lacks the section(s) "
                                  f"{', '.join(missing) or 'optimizer.param_groups'} of state.json; it was not "
                                  f"written by icgd train. Start a new run")
        if isinstance(meta.get("skips", 0), bool) or not isinstance(meta.get("skips", 0), int):
            raise CheckpointError(f"the checkpoint in {self.out} has a mistyped skips counter; start a new run")
        check_tensors(self.module.state_dict(), ck.model, f"the checkpoint's model in {self.out}")
        params = list(self.module.parameters())
        expected = {}
        for name in ck.state:  # AdamW state: exp_avg and exp_avg_sq shaped like their parameter, a scalar step
            _, idx, key = (name.split(".", 2) + ["", ""])[:3]
            if name.startswith("optim.") and idx.isdigit() and int(idx) < len(params):
                p = params[int(idx)]
                expected[name] = ck.state[name] if key == "step" else torch.empty(p.shape, dtype=p.dtype)
        check_tensors(expected, ck.state, f"the checkpoint's optimizer state in {self.out}")

    # -- one step

    def train_step(self, step: int) -> float:
        cfg = self.cfg
        b = sample_batch(cfg, self.task, step)
        if self.world > 1:  # each process takes its slice of the global batch
            per = cfg.batch_size // self.world
            b = Batch(b.X[self.rank * per:(self.rank + 1) * per], b.Y[self.rank * per:(self.rank + 1) * per])
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        self.model.train()
        loss = loss_of(cfg, *predictions(cfg, self.model, b))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
        value = loss.detach()
        if self.world > 1:
            torch.distributed.all_reduce(value)
            value = value / self.world
        value = float(value)
        if not math.isfinite(value):
            self.opt.zero_grad(set_to_none=True)
            return value
        self.opt.step()
        return value

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        return float(loss_of(self.cfg, *predictions(self.cfg, self.module, self.eval_batch)))

    # -- the loop

    def run(self, steps: int | None = None) -> list[dict]:
        """Train up to `steps` (default cfg.steps) total steps; returns the metrics written in this call."""
        cfg = self.cfg
        total = steps or cfg.steps
        self.start_step = self.step
        if self.step >= total:  # a finished run (resumed without a larger `steps`): nothing to train or show
            return []
        if self.baselines is None:
            self.baselines = baseline_losses(cfg, self.task, self.eval_batch)
        written: list[dict] = []
        t0 = time.perf_counter()
        bar = _progress(self.progress and self.rank == 0)
        task_id = bar.add_task("train", total=total, completed=self.step, loss=float("nan"), rate=0.0) if bar else None
        try:
            if bar:
                bar.start()
            while self.step < total:
                loss = self.train_step(self.step)
                if not math.isfinite(loss):
                    self._nonfinite(loss)
                    self.step += 1
                    continue
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == total:
                    record = {"step": self.step, "train_loss": loss, "eval_loss": self.evaluate(),
                              "baselines": self.baselines, "lr": lr_at(cfg, self.step - 1),
                              "elapsed": time.perf_counter() - t0}
                    if self.rank == 0:
                        self.metrics.append(record)
                        self._tensorboard(record)
                    written.append(record)
                if self.step % cfg.save_every == 0 or self.step == total:
                    self.save()
                if bar:
                    rate = (self.step) / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task_id, completed=self.step, loss=loss, rate=rate)
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            if bar:
                bar.stop()
        return written

    def _nonfinite(self, loss: float) -> None:
        self.skips += 1
        if self.cfg.on_nonfinite == "stop" or self.skips > self.cfg.max_skips:
            raise TrainingError(f"non-finite training loss ({loss}) at step {self.step + 1}; the last good "
                                f"checkpoint in {self.out} is kept. Lower lr or grad_clip, or set "
                                f"on_nonfinite=skip")

    def _tensorboard(self, record: dict) -> None:
        if not self.cfg.tensorboard:
            return
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs the tensorboard package: pip install 'icgd[tensorboard]'") \
                    from None
            self.writer = SummaryWriter(str(self.out / "tb"))
        for key in ("train_loss", "eval_loss"):
            self.writer.add_scalar(key, record[key], record["step"])
        for name, value in record["baselines"].items():
            self.writer.add_scalar(f"baselines/{name}", value, record["step"])


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                    TextColumn("loss {task.fields[loss]:.4g}"), TextColumn("{task.fields[rate]:.1f} steps/s"),
                    TimeRemainingColumn(), transient=False)


def _check_start(cfg: TrainConfig, steps: int | None) -> None:
    """What must hold before a run starts or resumes: a usable device, a sane `steps`, and a memory estimate
    within the limit (:func:`icgd.train.config.train_memory`)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    _check_int64(cfg)
    if steps is not None and steps >= 2 ** 63:
        raise ConfigError(f"steps = {steps} does not fit in a 64-bit integer")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r} was asked for but torch sees no CUDA device; use --device cpu")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' was asked for but is not available; use --device cpu")
    train_memory(cfg).check(cfg.device)
    from icgd.memory import task_memory

    task = build_task(cfg)
    task_memory(task, max(cfg.batch_size, cfg.eval_prompts), cfg.n_points + 1).check(cfg.device)


def _check_int64(cfg: TrainConfig) -> None:
    """Integers of the config that torch cannot hold (seeds, steps … beyond 64 bits) are refused up front."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, int) and not isinstance(v, bool) and not -(2 ** 63) <= v < 2 ** 63:
            raise ConfigError(f"config key {f.name!r} = {v} does not fit in a 64-bit integer")


def _check_new_folder(cfg: TrainConfig, out: Path) -> None:
    """A new run may not go where an earlier run left a checkpoint, nor over an earlier run's config.json or
    metrics.jsonl under a different config (the same config starting over rewrites the same records)."""
    if has_checkpoint(out):
        raise ConfigError(f"{out} already holds a run; resume it with `icgd train --resume {out}` or choose "
                          f"another --out")
    names = [n for n in ("config.json", "metrics.jsonl", REJECTED) if (out / n).exists()]
    if not names:
        return
    try:
        keys = cfg.differing_keys(TrainConfig.load(out / "config.json"))
    except (ConfigError, OSError):
        keys = ["(no readable config.json)"]
    if keys:
        raise ConfigError(f"{out} holds an earlier run's {', '.join(names)} (no checkpoint) with a different config "
                          f"(keys: {', '.join(keys)}); choose another --out, or delete those files to start over")


def train(cfg: TrainConfig, out: str | Path, *, steps: int | None = None, progress: bool = True) -> Trainer:
    """Start a run in `out` (which must not hold a checkpoint, nor an earlier run's files under another config)
    and train it. Everything that can fail on the config (device, memory estimate, task, model, held-out set,
    baselines) is done before the run folder is created or written; the folder is locked while the run trains."""
    out = Path(out)
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "out": str(out)})  # config.json records the real run folder
    _check_new_folder(cfg, out)
    _check_start(cfg, steps)
    rank, world = _distributed(cfg)
    trainer = Trainer(cfg, out, progress=progress, rank=rank, world=world)
    trainer.baselines = baseline_losses(cfg, trainer.task, trainer.eval_batch)
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out, rank):
        _check_new_folder(cfg, out)  # again, under the lock: another process may have started meanwhile
        if rank == 0:
            cfg.save(out / "config.json")
            (out / "metrics.jsonl").unlink(missing_ok=True)
        trainer.run(steps)
    return trainer


def _lock(out: Path, rank: int):
    """The run folder's lock, taken by rank 0 only (the other DDP ranks share the run)."""
    return RunLock(out) if rank == 0 else contextlib.nullcontext()


def resume(out: str | Path, *, steps: int | None = None, force: bool = False, progress: bool = True,
           overrides: dict | None = None) -> Trainer:
    """Continue the run in `out` from its newest complete checkpoint, to `steps` total steps."""
    out = Path(out)
    if not (out / "config.json").is_file():
        raise CheckpointError(f"no run to resume in {out} (no config.json); pass the --out folder of an earlier "
                              f"`icgd train`")
    cfg = TrainConfig.load(out / "config.json")
    if overrides:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides})
    _check_start(cfg, steps)
    if steps is not None:
        cfg.steps = steps
    rank, world = _distributed(cfg)
    trainer = Trainer(cfg, out, progress=progress, rank=rank, world=world)
    with _lock(out, rank):
        trainer.restore(force=force)
        if trainer.step > cfg.steps:
            raise ConfigError(f"the run in {out} is already at step {trainer.step}, beyond the {cfg.steps} steps "
                              f"asked for; pass --steps above {trainer.step} to continue it")
        trainer.run(steps)
    return trainer


def _distributed(cfg: TrainConfig) -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    return dist.get_rank(), world
