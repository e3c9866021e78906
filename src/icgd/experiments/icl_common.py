"""Helpers shared by the reproductions that train in-context learners (``vonoswald2023``, ``akyurek2023``):
training runs in chunks under ``ctx.runs_dir``, held-out prompts in float64, relative gaps, verdicts, heat-maps."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from icgd.errors import ConfigError
from icgd.experiments.reproduce import RunContext
from icgd.tasks import Prompt, Task
from icgd.train import Trainer, build_config, train

EVAL_SEED = 7_919  # held-out prompts of the reports use seeds no training run uses (runs use seed 0, 1, …)


@dataclass
class TrainedRun:
    """A finished training run: the trainer (model, metrics log) and the wall time it took."""

    name: str
    trainer: Trainer
    seconds: float

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.module

    def curve(self) -> dict[str, list]:
        """The logged held-out loss over training: ``{"step": [...], "eval_loss": [...], "train_loss": [...]}``."""
        records = self.trainer.metrics.read()
        return {"step": [int(r["step"]) for r in records],
                "eval_loss": [float(r["eval_loss"]) for r in records],
                "train_loss": [float(r["train_loss"]) for r in records]}


def train_run(ctx: RunContext, name: str, preset: str, overrides: dict, *, chunks: int = 1,
              on_chunk: Callable[[Trainer], None] | None = None) -> TrainedRun:
    """Train `preset` with `overrides` into ``ctx.runs_dir/name`` (a previous run there is replaced), in `chunks`
    equal pieces; `on_chunk(trainer)` is called after each piece (the learning-rate schedule is that of the whole
    run, so chunking changes nothing but when the callback looks)."""
    values = {"device": ctx.device, "seed": ctx.seed, **overrides}
    cfg = build_config(preset, None, [f"{k}={_json(v)}" for k, v in values.items()])
    if chunks < 1 or chunks > cfg.steps:
        raise ConfigError(f"chunks must be in [1, steps={cfg.steps}], got {chunks}")
    out = ctx.runs_dir / name
    if out.exists():
        shutil.rmtree(out)
    ctx.log(f"  training {name}: {cfg.model}, {cfg.n_layer} layer(s), {cfg.steps} steps, batch {cfg.batch_size}")
    t0 = time.perf_counter()
    ends = [round(cfg.steps * (i + 1) / chunks) for i in range(chunks)]
    trainer = train(cfg, out, steps=ends[0], progress=False)
    if on_chunk:
        on_chunk(trainer)
    for end in ends[1:]:
        trainer.run(end)
        if on_chunk:
            on_chunk(trainer)
    return TrainedRun(name, trainer, time.perf_counter() - t0)


def _json(v) -> str:
    import json

    return json.dumps(v)


def sample(task: Task, batch: int, n: int, *, m: int = 1, seed: int, step: int = 0) -> Prompt:
    """`batch` float64 prompts of `n` context pairs and `m` queries, from a stream no training run draws from."""
    return task.sample(batch, n, m=m, seed=EVAL_SEED + seed, step=step, dtype=torch.float64)


def half_mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """von Oswald et al.'s loss: ½ mean over prompts (and queries) of ‖ŷ − y‖²."""
    return 0.5 * float(((pred - target) ** 2).sum(-1).mean())


def rel_gap(value: float, reference: float) -> float:
    """``(value − reference) / |reference|`` (nan when the reference is 0)."""
    return (value - reference) / abs(reference) if reference else math.nan


def verdict(checks: Sequence[bool]) -> str:
    """All checks pass: reproduced; some: partly; none: not."""
    if checks and all(checks):
        return "reproduced"
    return "partly" if any(checks) else "not"


def heatmap(ax, M, title: str, vmax: float | None = None) -> None:
    """A matrix as a diverging heat-map, symmetric colour range (shared between panels when `vmax` is given)."""
    t = torch.as_tensor(M, dtype=torch.float64)
    v = vmax if vmax is not None else float(t.abs().max()) or 1.0
    im = ax.imshow(t.numpy(), cmap="RdBu_r", vmin=-v, vmax=v)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def to_list(t: torch.Tensor, digits: int = 6) -> list:
    """A tensor as nested lists of floats (rounded, for metrics.json)."""
    return [[round(float(v), digits) for v in row] for row in t.detach().double().cpu()] if t.dim() == 2 \
        else [round(float(v), digits) for v in t.detach().double().cpu()]
