"""Shared pieces of the benchmarks: interleaved timing, median/min/max statistics, the machine description and two
memory meters (peak RSS of a child process, peak live tensor bytes under a dispatch mode)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

THREADS_NOTE = ("1 torch thread by default: on a 2-core machine shared with other work, one busy core makes two OpenMP "
                "threads several times slower (every parallel op waits for the descheduled thread); pass --threads 2 "
                "(or 0 for torch's default) on an idle machine")


@dataclass(frozen=True)
class Stats:
    """Median, min and max of repeated measurements (``n`` values)."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        vals = [float(v) for v in values]
        return cls(statistics.median(vals), min(vals), max(vals), len(vals))

    def map(self, fn: Callable[[float], float]) -> Stats:
        """Apply a monotone decreasing or increasing `fn` (e.g. 1/t): min and max are re-sorted."""
        a, b = fn(self.min), fn(self.max)
        return Stats(fn(self.median), min(a, b), max(a, b), self.n)


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels (CUDA); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, device: torch.device | str = "cpu",
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every function, called round-robin (A B C, then C B A, …) so that each sees the same
    background load; `warmup` untimed rounds first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:  # A B C, C B A, …: no side always runs first
            fn = fns[name]
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> Stats:
    """Statistics of the per-round ratios ``slow / fast`` (> 1 when `fast` is faster)."""
    return Stats.of([a / b for a, b in zip(slow, fast)])


def load_average() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def machine(device: torch.device | str) -> dict[str, str]:
    """What the figures were measured on."""
    dev = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{cpu} ({os.cpu_count()} logical cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
        "device": str(dev),
        "load average (1, 5, 15 min) at start": load_average(),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = "not installed"
    return info


# ----------------------------------------------------------------------------------------------------------------
# memory


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far: VmHWM on Linux (per address space, so a child process does not
    inherit its parent's peak as ``ru_maxrss`` does across exec), else ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as fh:
            line = next(ln for ln in fh if ln.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class TensorMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages allocated while the mode is active and still alive (CPU or any device).

    Every aten op's outputs are tracked by storage; a storage counts from the op that allocates it until the last
    tracked tensor on it is freed. Views and in-place results of storages that existed before the mode (weights,
    inputs) are not counted. Kernel workspaces that never leave an op are not seen, so this is a lower bound of what
    the allocator holds, independent of allocator caching and of other processes."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tracked tensors]

    def _release(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[ptr]

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        if t.layout != torch.strided:
            return
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0:
            return
        entry = self._live.get(ptr)
        if entry is None:
            if ptr in inputs:  # a view or in-place result of a storage from outside the mode
                return
            entry = self._live[ptr] = [nbytes, 0]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out


def peak_tensor_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak extra memory of one call of `fn`: the CUDA allocator's peak on a GPU, :class:`TensorMemory` elsewhere."""
    dev = torch.device(device)
    if dev.type == "cuda":
        sync(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        out = fn()
        sync(dev)
        del out
        return torch.cuda.max_memory_allocated(dev) - base
    with TensorMemory() as meter:
        out = fn()
        del out
    return meter.peak


# ----------------------------------------------------------------------------------------------------------------
# formatting


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_stats(s: Stats, fmt: Callable[[float], str]) -> str:
    """``median (min–max)``, or the value alone when there is one."""
    return fmt(s.median) if s.n == 1 else f"{fmt(s.median)} ({fmt(s.min)}–{fmt(s.max)})"


def fmt_ratio(s: Stats) -> str:
    return f"**{s.median:.2f}×**" if s.n == 1 else f"**{s.median:.2f}×** ({s.min:.2f}–{s.max:.2f})"


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (the fitted exponent of y ∝ x^k)."""
    import math

    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx if sxx else float("nan")
