"""Memory estimates, and the refusal of requests that cannot fit.

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
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from icgd.errors import ConfigError, ResourceError

GIB = 1 << 30
ENV = "ICGD_MEMORY_LIMIT"


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
        if raw.lower() in ("off", "none", "0"):
            return None
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not (value > 0 and value != float("inf")):
            raise ConfigError(f"{ENV} must be a positive number of GiB or 'off', got {raw!r}")
        return int(value * GIB)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(dev.index or 0).total_memory)
    return physical_memory()


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs, by part (``params``, ``build``, ``activations`` …), and how to make it smaller."""

    what: str
    parts: dict[str, int] = field(default_factory=dict)
    reduce: str = ""

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        inner = ", ".join(f"{k} {gib(v)}" for k, v in self.parts.items() if v)
        return f"{gib(self.total)}" + (f" ({inner})" if inner else "")

    def check(self, device: str | torch.device | None = None, limit: int | None = None) -> MemoryEstimate:
        """Raise :class:`~icgd.errors.ResourceError` if the estimate exceeds `limit` (default
        :func:`memory_limit`); returns self."""
        limit = memory_limit(device) if limit is None else limit
        if limit is not None and self.total > limit:
            raise ResourceError(
                f"{self.what} would need about {self.describe()}, more than the {gib(limit)} available; "
                f"{self.reduce + '; ' if self.reduce else ''}or raise the limit with {ENV}=<GiB> ('off' disables it)")
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
