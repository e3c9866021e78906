"""Where a training step spends its time: torch.profiler self-CPU time of a few steps, grouped by kind of op."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmm_", "aten::matmul",
                "aten::addbmm")),
    ("attention kernel", ("scaled_dot_product", "aten::_softmax", "aten::softmax", "_softmax_backward")),
    ("activation (GELU)", ("aten::gelu", "aten::tanh", "aten::pow", "tanh_backward", "pow_backward")),
    ("layer norm", ("layer_norm",)),
    ("other elementwise, copies, reductions", ("aten::mul", "aten::add", "aten::copy_", "aten::cat", "aten::sum",
                                               "aten::fill_", "aten::zero_", "aten::div", "aten::clone",
                                               "aten::masked_fill", "aten::relu", "aten::tril", "aten::lerp",
                                               "aten::sqrt", "aten::addc", "aten::stack", "aten::index")),
)
OTHER = "framework overhead and the rest"


def category(op: str) -> str:
    for name, keys in CATEGORIES:
        if any(k in op for k in keys):
            return name
    return OTHER


def breakdown(step: Callable[[], None], steps: int = 2) -> dict[str, float]:
    """Seconds of self CPU time per step by category (CPU only; the profiler adds its own per-op overhead, which
    weighs more on models that launch more ops)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out = {name: 0.0 for name, _ in CATEGORIES}
    out[OTHER] = 0.0
    for event in prof.key_averages():
        out[category(event.key)] += event.self_cpu_time_total / 1e6 / steps
    return out


def profiled_models(models: dict[str, Callable[[], None]], device: torch.device) -> dict[str, dict[str, float]]:
    if device.type != "cpu":
        return {}
    return {name: breakdown(step) for name, step in models.items()}
