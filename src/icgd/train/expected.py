"""How long a training preset takes on a CPU, for ``icgd train --list``.

Measured, not modelled: for each preset, two short runs of the real training loop (``icgd.train.train``, one torch
thread, float32, the preset's batch, model, evaluation set and baselines) at two step counts a < b; the CPU time
(``time.process_time``) of the difference gives seconds per step, the rest is the fixed cost (building the task, the
held-out prompts and the baselines). a, b = 1/4 and all of the steps (smoke), 20 and 60 (cpu), 2 and 5 (paper).
Measured with torch 2.13 on one core of a shared 2-core x86-64 machine (Dec 2026) while other jobs kept its load
average at 15–19: CPU time, so the load matters far less than for wall time, but contention for caches still makes
these upper bounds for an idle machine; a different CPU, torch build or thread count changes them. Periodic
evaluation and checkpoints add a few per cent to a full run.
"""

from __future__ import annotations

# preset: (seconds per training step, fixed seconds)
MEASURED: dict[str, tuple[float, float]] = {
    "lsa-smoke": (0.0173, 0.29),
    "lsa-cpu": (0.0221, 0.21),
    "garg-linear-smoke": (0.0134, 0.11),
    "garg-linear-cpu": (0.194, 5.7),
    "garg-linear-paper": (4.52, 57.0),  # at the full prompt size (curriculum off), as in 94 % of its steps
    "wu-nn-relu-smoke": (0.0305, 0.17),
    "wu-nn-relu-cpu": (0.330, 5.6),
    "wu-nn-relu-paper": (3.16, 79.0),
    "wu-nn-softmax-cpu": (0.412, 2.6),
    "wu-nn-softmax-smoke": (0.0331, 0.31),
    "wu-nn-softmax-paper": (5.58, 64.0),
}


def expected_cpu_seconds(preset: str, steps: int) -> float | None:
    """CPU seconds for `steps` steps of `preset` (one thread), or None for a preset that was not measured."""
    if preset not in MEASURED:
        return None
    per_step, fixed = MEASURED[preset]
    return fixed + per_step * steps


def format_duration(seconds: float) -> str:
    """``7 s``, ``1.9 min``, ``26 min``, ``3.5 h``, ``4.2 days``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
