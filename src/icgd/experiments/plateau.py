"""Training runs of the linear reproductions that stop on a plateau of the held-out loss.

:func:`train_until_plateau` is :func:`icgd.experiments.icl_common.train_run` in chunks with a stopping rule
(:class:`Plateau`): past a fraction of the planned steps, a run stops once the best held-out loss of its latest
stretch is not clearly below the best before it. The learning-rate schedule stays that of the planned run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from icgd.experiments.icl_common import TrainedRun, train_run
from icgd.experiments.reproduce import RunContext
from icgd.train import Trainer


@dataclass(frozen=True)
class Plateau:
    """Stop when, after at least `after` of the planned steps, the best held-out loss over the last `window` of the
    planned steps is above ``(1 − rel)`` × the best before that window (``rel = 0``: never stop early)."""

    after: float = 0.5
    window: float = 0.2
    rel: float = 0.02

    def reached(self, steps: list[int], losses: list[float], planned: int) -> bool:
        if self.rel <= 0 or not steps or steps[-1] < self.after * planned:
            return False
        cut = steps[-1] - self.window * planned
        before = [v for s, v in zip(steps, losses) if s <= cut]
        recent = [v for s, v in zip(steps, losses) if s > cut]
        return bool(before and recent) and min(recent) > (1 - self.rel) * min(before)


class _Stop(Exception):
    def __init__(self, trainer: Trainer):
        self.trainer = trainer


def train_until_plateau(ctx: RunContext, name: str, preset: str, overrides: dict, plateau: Plateau,
                        chunks: int = 10) -> tuple[TrainedRun, bool]:
    """(the run, whether it stopped early on a plateau)."""
    planned = int(overrides["steps"])

    def check(trainer: Trainer) -> None:
        records = trainer.metrics.read()
        if trainer.step < planned and plateau.reached([int(r["step"]) for r in records],
                                                       [float(r["eval_loss"]) for r in records], planned):
            raise _Stop(trainer)

    t0 = time.perf_counter()
    try:
        return train_run(ctx, name, preset, overrides, chunks=min(chunks, planned), on_chunk=check), False
    except _Stop as stop:
        stop.trainer.save()
        ctx.log(f"  {name}: held-out loss on a plateau, stopped at step {stop.trainer.step} of {planned}")
        return TrainedRun(name, stop.trainer, time.perf_counter() - t0), True
