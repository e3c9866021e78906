"""Memory and time estimates, and the refusal of requests that cannot fit.

Constructions (:func:`~icgd.constructions.deep_gd`, :func:`~icgd.constructions.deep_gd_softmax`,
:func:`~icgd.constructions.convex_gd`, :func:`~icgd.constructions.ridge`, :func:`~icgd.constructions.akyurek_gd`)
and training runs (:func:`icgd.train.train`) estimate the bytes they will need *before* allocating anything or
writing a run folder, and raise :class:`~icgd.errors.ResourceError` — with the estimate in GiB and what to reduce —
when it exceeds the limit.

**The limit** is, in this order: the environment variable ``ICGD_MEMORY_LIMIT`` (GiB, e.g. ``ICGD_MEMORY_LIMIT=200``;
``off`` disables the check); the total memory of the CUDA device for ``cuda`` devices; the machine's physical RAM.
Estimates are deliberately simple sums of the largest tensors (parameters and buffers exactly, activations and
build-time temporaries to within a small factor); they exist to stop a week-long job from dying of an OOM in its
first minute, not to plan memory to the byte.

**Every public entry** passes through one of these estimates before it allocates: the constructions (above, plus
:func:`layer_stack` for the number of layers, which grows with `steps`, at the entry of every builder), the tasks
(:func:`task_memory`, before drawing prompts), data loading (:func:`npz_memory`: the *decompressed* size of an
``.npz`` read from its headers before anything is decompressed), the command-line checks of the linear
constructions (:func:`linear_check_memory`) and the estimators' ``fit`` (:func:`estimator_memory`).

**Time.** An estimate also carries a lower bound on the time (``seconds``: Python-level work per layer position
plus floating-point operations at an optimistic rate); one above ``ICGD_TIME_LIMIT`` (hours, default 24; ``off``
disables it) is refused like one above the memory limit. It exists to refuse ``steps=10**9`` (which would run for
weeks), not to predict run times.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from icgd.errors import ConfigError, ResourceError

GIB = 1 << 30
ENV = "ICGD_MEMORY_LIMIT"
TIME_ENV = "ICGD_TIME_LIMIT"
DEFAULT_HOURS = 24.0
LAYER_BYTES = 4096  # one layer position of a construction: its two HookPoint modules and ModuleList entries (measured
#                     about 4.6 KB on CPython 3.11; the estimate stays below)
LAYER_SECONDS = 1e-4  # building and running one layer position from Python (measured 0.2-0.7 ms; a lower bound)
FLOP_RATE = 1e11  # floating-point operations per second assumed for the time bound (optimistic for a CPU)


def gib(nbytes: float) -> str:
    """Bytes as a short human string in GiB (``"0.004 GiB"``, ``"12.5 GiB"``, ``"3.1e+04 GiB"``)."""
    x = nbytes / GIB
    return f"{x:.3g} GiB" if x < 1e4 else f"{x:.2e} GiB"


def physical_memory() -> int | None:
    """Total physical RAM in bytes, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit(device: str | torch.device | None = None) -> int | None:
    """The limit in bytes for work on `device` (see the module docstring); None when there is no limit."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        value = _env_limit(ENV, raw, "GiB")
        return None if value is None else int(value * GIB)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(dev.index or 0).total_memory)
    return physical_memory()


def time_limit() -> float | None:
    """The time limit in seconds (``ICGD_TIME_LIMIT`` hours, default 24); None when it is switched off."""
    raw = os.environ.get(TIME_ENV, "").strip()
    if not raw:
        return DEFAULT_HOURS * 3600.0
    value = _env_limit(TIME_ENV, raw, "hours")
    return None if value is None else value * 3600.0


def _env_limit(name: str, raw: str, unit: str) -> float | None:
    """A limit set in the environment: a positive finite number of `unit`, or None for 'off' (also 'none', '0')."""
    if raw.lower() in ("off", "none", "0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise ConfigError(f"{name} must be a positive number of {unit} or 'off', got {raw!r}")
    return value


def duration(seconds: float) -> str:
    """Seconds as a short human string (``"3.2 h"``, ``"1.2e+05 h"``)."""
    h = seconds / 3600.0
    return f"{h:.3g} h" if h < 1e4 else f"{h:.2e} h"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs, by part (``params``, ``build``, ``activations`` …), a lower bound on its time in
    seconds, and how to make it smaller."""

    what: str
    parts: dict[str, int] = field(default_factory=dict)
    reduce: str = ""
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        inner = ", ".join(f"{k} {gib(v)}" for k, v in self.parts.items() if v)
        return f"{gib(self.total)}" + (f" ({inner})" if inner else "")

    def __add__(self, other: MemoryEstimate) -> MemoryEstimate:
        """Both requests at once: the parts of both (same names summed), the times summed, `self`'s name."""
        parts = dict(self.parts)
        for k, v in other.parts.items():
            parts[k] = parts.get(k, 0) + v
        reduce = "; ".join(r for r in dict.fromkeys([self.reduce, other.reduce]) if r)
        return MemoryEstimate(self.what, parts, reduce, self.seconds + other.seconds)

    def check(self, device: str | torch.device | None = None, limit: int | None = None) -> MemoryEstimate:
        """Raise :class:`~icgd.errors.ResourceError` if the estimate exceeds `limit` (default
        :func:`memory_limit`) or its time bound exceeds :func:`time_limit`; returns self."""
        limit = memory_limit(device) if limit is None else limit
        if limit is not None and self.total > limit:
            raise ResourceError(
                f"{self.what} would need about {self.describe()}, more than the {gib(limit)} available; "
                f"{self.reduce + '; ' if self.reduce else ''}or raise the limit with {ENV}=<GiB> ('off' disables it)")
        seconds = time_limit()
        if seconds is not None and self.seconds > seconds:
            raise ResourceError(
                f"{self.what} would take at least {duration(self.seconds)}, more than the {duration(seconds)} "
                f"limit; {self.reduce + '; ' if self.reduce else ''}or raise the limit with {TIME_ENV}=<hours> "
                f"('off' disables it)")
        return self


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (persistent or not), sparse ones by indices + values;
    shared tensors counted once. The measured counterpart of the ``params`` part of the estimates."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t.is_sparse:
            t = t.coalesce()
            total += t.indices().numel() * t.indices().element_size() + t.values().numel() * t.element_size()
        else:
            total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------------------------------ estimates by entry


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def layer_stack(what: str, steps: int, per_step: int, extra: int = 0, bytes_per_step: int = 0) -> MemoryEstimate:
    """A construction of ``steps·per_step + extra`` layer positions (one GD block shared by all steps, or
    `bytes_per_step` of weights of its own per step): the Python objects of every position (:data:`LAYER_BYTES`),
    the weights, and the time to build and run them. Call it at the entry of a builder, before the
    ``block * steps`` list exists."""
    positions = max(0, int(steps)) * int(per_step) + int(extra)
    parts = {"layer positions": positions * LAYER_BYTES, "layer weights": max(0, int(steps)) * int(bytes_per_step)}
    return MemoryEstimate(what, parts, reduce=f"reduce steps ({steps} steps × {per_step} layers)",
                          seconds=positions * LAYER_SECONDS + parts["layer weights"] / 8 / FLOP_RATE)


def check_layers(what: str, steps: int, per_step: int, extra: int = 0, bytes_per_step: int = 0) -> None:
    """:func:`layer_stack` checked against the limits (one call at the entry of each construction builder)."""
    layer_stack(what, steps, per_step, extra, bytes_per_step).check()


def array_memory(what: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float64,
                 reduce: str = "") -> MemoryEstimate:
    """Arrays of the given shapes, by name (elements × item size), and one pass over them as the time."""
    s = _itemsize(dtype)
    parts = {k: s * math.prod(int(v) for v in shape) for k, shape in shapes.items()}
    return MemoryEstimate(what, parts, reduce, seconds=sum(parts.values()) / s / FLOP_RATE)


def task_memory(task, batch: int, points: int) -> MemoryEstimate:
    """Drawing `batch` prompts of `points` points from `task` (:mod:`icgd.tasks`): inputs and labels (a few float64
    copies), every prompt's teacher parameters, and the teacher's widest activation (network teachers), the tree of
    a decision tree, or the kernel matrix and its eigendecomposition (Gaussian-process tasks)."""
    B, N, d, d_out = int(batch), int(points), int(task.d), int(task.d_out)
    parts = {"inputs and labels": 8 * 4 * B * N * (d + d_out)}
    spec = getattr(task, "spec", None)
    if spec is not None:  # network teachers: flat weights per prompt, activations (B, N, width)
        parts["teacher"] = 8 * 3 * B * spec.num_params
        parts["teacher activations"] = 8 * 2 * B * N * max(o for o, _ in spec.shapes)
    elif task.name == "decision_tree":
        nodes = 2 ** int(task.depth)
        parts["teacher"] = 8 * 2 * B * nodes * (1 + d_out)
    elif getattr(task, "kernel", None) is not None:  # Gaussian-process labels: a kernel matrix per prompt
        parts["kernel matrix"] = 8 * 4 * B * N * N
    else:
        parts["teacher"] = 8 * 2 * B * d * d_out
    pool = getattr(task, "pool_size", None)
    if pool:
        parts["pool"] = parts.get("teacher", 0) // max(B, 1) * int(pool)
    flops = 2.0 * B * N * (getattr(spec, "num_params", 0) or d * d_out) + (B * N ** 3 if "kernel matrix" in parts
                                                                          else 0)
    return MemoryEstimate(f"task {task.name!r} ({batch} prompts × {points} points)", parts,
                          reduce="reduce the teacher (width, depth), the batch or the number of points",
                          seconds=flops / FLOP_RATE)


def npz_memory(path, arrays: dict[str, tuple[tuple[int, ...], int]]) -> MemoryEstimate:
    """Loading an ``.npz``: every array at its decompressed size (``{name: (shape, itemsize)}`` read from the
    ``.npy`` headers, see :func:`icgd.data.npz_headers`) plus float64 copies of X and Y."""
    parts = {"decompressed arrays": sum(math.prod(shape) * size for shape, size in arrays.values())}
    parts["float64 copies"] = sum(8 * math.prod(arrays[k][0]) for k in ("X", "Y") if k in arrays)
    return MemoryEstimate(f"loading {path}", parts, reduce="use a subsample of the data",
                          seconds=parts["decompressed arrays"] / 1e9)  # ~1 GB/s to decompress


CSV_BYTES_PER_BYTE = 16  # parsed CSV as Python lists of str: ~50 bytes per cell of a few characters, plus float64


def csv_memory(path, size: int) -> MemoryEstimate:
    """Reading a CSV file of `size` bytes strictly (every cell parsed as a Python string first)."""
    return MemoryEstimate(f"reading {path} ({size} bytes)", {"parsed cells": CSV_BYTES_PER_BYTE * int(size)},
                          reduce="use a subsample of the data", seconds=size / 2e7)  # ~20 MB/s parsing


def linear_check_memory(kind: str, *, d_in: int, n: int, m: int, batch: int, steps: int, knots: int = 64,
                        loss: str = "squared", device=None) -> MemoryEstimate:
    """``icgd construct linear|gdpp|ridge|sgd|functional|convex`` on random prompts: the prompts, the construction
    (:func:`~icgd.constructions.akyurek.akyurek_memory`, :func:`~icgd.constructions.bai.convex_gd_memory`, or an
    LSA/kernel stack of ``steps`` layers with (D, D) weights), its forward pass and the reference."""
    T, D = n + m, d_in + 2
    what = f"construct {kind} (d_in={d_in}, n={n}, batch={batch})"
    est = array_memory(what, {"prompts": (3, batch, T, d_in + 1)}, reduce="reduce --d-in or --n")
    if kind in ("ridge", "sgd"):
        from icgd.constructions.akyurek import akyurek_memory

        est = est + akyurek_memory(d_in, n, algorithm="ridge" if kind == "ridge" else "sgd", batch=batch,
                                   tokens=T, what=what)
    elif kind == "convex":
        from icgd.constructions.bai import convex_gd_memory

        est = est + convex_gd_memory(d_in, knots=knots, loss=loss, batch=batch, tokens=T, what=what)
    else:
        est = est + array_memory(what, {"params": (steps, 4, D, D), "activations": (4, batch, T, D + T)})
    reference = array_memory(what, {"reference": (batch, d_in, d_in + T)})
    return est + reference + layer_stack(what, steps if kind in ("linear", "gdpp", "functional", "convex") else 1,
                                         6 if kind == "convex" else 1, 2)


def estimator_memory(spec, *, n: int, queries: int, knots: int, box, steps: int, iterations: int = 100,
                     what: str = "InContextRegressor.fit") -> MemoryEstimate:
    """An :class:`~icgd.sklearn.InContextRegressor` with the construct engine: the
    :func:`~icgd.constructions.wu.deep_gd_memory` of its transformer on a prompt of the context plus a chunk of
    `queries`, its layers, and the power iteration of ``eta="auto"`` (`iterations` Jacobian-vector products over
    the n context points)."""
    from icgd.constructions.wu import deep_gd_memory

    est = deep_gd_memory(spec, knots=knots, box=box, batch=1, tokens=n + queries, what=what)
    jvp = array_memory(what, {"power iteration": (4, n, max(o for o, _ in spec.shapes) + spec.num_params)})
    flops = 6.0 * iterations * n * spec.num_params
    jvp = MemoryEstimate(what, jvp.parts, "reduce width or depth", seconds=flops / FLOP_RATE)
    return est + jvp + layer_stack(what, steps, 2 * spec.depth + 4, spec.depth)


def deep_run_memory(spec, *, knots: int, box: float | None, tokens: int, steps: int, what: str) -> MemoryEstimate:
    """:func:`~icgd.constructions.deep_gd` run on one prompt of `tokens` tokens for `steps` steps next to the
    autograd reference (``icgd construct deep``, with or without ``--data``): the model, its forward pass, its layer
    positions and both weight trajectories ``(steps + 1, D_w)``."""
    from icgd.constructions.wu import deep_gd_memory

    return (deep_gd_memory(spec, knots=knots, box=box, batch=1, tokens=tokens, what=what)
            + layer_stack(what, steps, 2 * spec.depth + 4, spec.depth)
            + array_memory(what, {"trajectories": (4, steps + 1, spec.num_params)}, reduce="reduce steps"))
