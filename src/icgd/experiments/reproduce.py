"""One command per paper: ``icgd reproduce NAME --scale smoke|cpu|paper``.

Each experiment is a module ``icgd.experiments.<NAME>`` with

- ``TITLE`` (str), ``SETTINGS``: ``{"smoke": ..., "cpu": ..., "paper": ...}``, one frozen settings dataclass per
  scale, and ``SCALES``: their JSON values (:func:`icgd.experiments.settings.as_scales`), which ``metrics.json``
  records and ``--set key=value`` overrides; ``run`` and ``render`` read them back with
  :func:`icgd.experiments.settings.load`;
- ``run(ctx: RunContext) -> dict``: does the work, returns the metrics (JSON-serialisable: numbers, lists, dicts);
- ``render(report: Report) -> None``: turns ``report.metrics`` into text, tables, figures, paper-vs-ours rows and
  verdicts (see :mod:`icgd.experiments.report`). It must not compute anything expensive.

The paper's published numbers live in ``icgd/experiments/data/<NAME>.json`` with their citation.
``run_experiment`` writes ``metrics.json`` (metrics + settings + run facts) and then the report; ``rebuild_report``
redoes only the second half from a saved ``metrics.json``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from icgd.errors import ConfigError
from icgd.experiments import settings as settings_io
from icgd.experiments.report import Report, flatten, fmt, paper_values

EXPERIMENTS = ("wu2025", "vonoswald2023", "akyurek2023", "cheng2024", "garg2022", "mechanism")
SCALES = ("smoke", "cpu", "paper")
METRICS_FILE = "metrics.json"


@dataclass
class RunContext:
    """What an experiment's ``run`` gets: its settings at the chosen scale, where to write, and how to talk."""

    name: str
    scale: str
    settings: dict
    out: Path
    device: str = "cpu"
    seed: int = 0
    log: Callable[[str], None] = print

    @property
    def runs_dir(self) -> Path:
        """Scratch folder for training runs (checkpoints); not part of the report, ignored by git."""
        return self.out / "runs"

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)


def load_experiment(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} "
                          f"(`icgd reproduce --list`)")
    return importlib.import_module(f"icgd.experiments.{name}")


def describe() -> list[tuple[str, str]]:
    """(name, title) of every experiment, for ``icgd reproduce --list``."""
    return [(name, load_experiment(name).TITLE) for name in EXPERIMENTS]


def settings_for(name: str, scale: str, overrides: list[str] | None = None) -> dict:
    """The settings of `name` at `scale`, with ``key=value`` overrides (values parsed as JSON when they parse)."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    module = load_experiment(name)
    raw = module.SCALES[scale]
    settings = dict(raw)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in settings:
            raise ConfigError(f"{name} has no setting {key!r}; settings: {', '.join(settings)}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
        _check_override(name, key, settings[key], raw[key])
    if overrides:  # the typed settings (and the experiment's own checks) refuse a bad combination before any run
        settings_io.load(type(module.SETTINGS[scale]), settings)
    return settings


def _check_override(name: str, key: str, value, default) -> None:
    """An override keeps the kind of the scale's value (a number for a number, an integer for an integer, a list for
    a list …); where that value is a positive integer (sizes, counts) it stays >= 1, where it is a non-negative number
    (rates, scales) it stays >= 0. So a bad setting is refused here, before any training starts or any folder is
    written."""
    def kind(v):
        if isinstance(v, bool) or v is None:
            return type(v).__name__
        return "number" if isinstance(v, (int, float)) else type(v).__name__

    def bad(v, d) -> str:
        if kind(v) != kind(d) and not (isinstance(d, (int, float)) and v is None):
            return f"a {kind(d)} like {json.dumps(d)}"
        if kind(d) == "number":
            if isinstance(d, int) and not isinstance(v, int):
                return f"an integer like {d}"
            if not math.isfinite(v) or abs(v) > 2 ** 63 - 1:
                return "a finite number"
            strict = isinstance(d, int) and d > 0  # a positive count stays >= 1; a rate may be 0 ("off")
            if (strict and v <= 0) or (d >= 0 and v < 0):
                return f"a number {'>' if strict else '>='} 0"
        if isinstance(d, list) and d and isinstance(v, list):
            return next((f"a list of {why.removeprefix('a ').removeprefix('an ')}" for why in
                         (bad(x, d[0]) for x in v) if why), "")
        return ""

    why = bad(value, default)
    if why:
        raise ConfigError(f"{name} setting {key!r} must be {why}, got {json.dumps(value)}")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def run_experiment(name: str, scale: str, out: str | Path, *, device: str = "cpu", seed: int = 0,
                   overrides: list[str] | None = None, force: bool = False,
                   log: Callable[[str], None] = print) -> list[Path]:
    """Run experiment `name` at `scale` into `out`; returns the files of the report."""
    from icgd import __version__

    module = load_experiment(name)
    settings = settings_for(name, scale, overrides)
    out = Path(out)
    if (out / METRICS_FILE).exists() and not force:
        raise ConfigError(f"{out} already holds a reproduction; pass --force to overwrite it or choose another --out")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no GPU; use --device cpu")
    if scale == "paper" and not device.startswith("cuda"):
        log(f"warning: {name} at paper scale is sized for a GPU; on the CPU it may take many hours")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(name, scale, settings, out, device=device, seed=seed, log=log)
    started, t0 = time.strftime("%Y-%m-%d %H:%M"), time.perf_counter()
    try:
        metrics = module.run(ctx)
    except BaseException:
        # leave no empty folder behind; finished training runs under runs/ are kept (a rerun reuses them), and a
        # folder that existed before is left as it was
        if created and not any(p.is_file() for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    meta = {"experiment": name, "scale": scale, "seed": seed, "device": device, "started": started,
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "icgd": __version__, "machine": _machine()}
    record = {"meta": meta, "settings": settings, "metrics": metrics}
    tmp = out / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=True))
    tmp.replace(out / METRICS_FILE)
    return rebuild_report(out)


def load_record(out: str | Path) -> dict:
    path = Path(out) / METRICS_FILE
    if not path.exists():
        raise ConfigError(f"{path} not found: point at a folder written by `icgd reproduce`")
    try:
        record = json.loads(path.read_text())
        record["meta"]["experiment"], record["metrics"], record["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a reproduction record ({e}); rerun `icgd reproduce`") from None
    return record


def rebuild_report(out: str | Path) -> list[Path]:
    """Re-render report.md, report.html, metrics.csv and the figures from ``out/metrics.json``."""
    out = Path(out)
    record = load_record(out)
    name = record["meta"]["experiment"]
    module = load_experiment(name)
    citation, paper = paper_values(name)
    report = Report(name=name, title=module.TITLE, metrics=record["metrics"], settings=record["settings"],
                    meta=record["meta"], out=out, citation=citation, paper=paper)
    module.render(report)
    return report.write()


def compare_runs(a: str | Path, b: str | Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows comparing every scalar metric of two reproduction folders (B − A)."""
    ra, rb = load_record(a), load_record(b)
    fa, fb = flatten(ra["metrics"]), flatten(rb["metrics"])
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if isinstance(va, list) or isinstance(vb, list):
            va = va[-1] if isinstance(va, list) and va else va
            vb = vb[-1] if isinstance(vb, list) and vb else vb
            key += "[-1]"
        num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
        rows.append([key, _cell(va), _cell(vb), _cell(vb - va) if num else ""])
    la = f"A: {ra['meta']['experiment']}/{ra['meta']['scale']}"
    lb = f"B: {rb['meta']['experiment']}/{rb['meta']['scale']}"
    return ["metric", la, lb, "B − A"], rows


def _cell(v) -> str:
    return "—" if v is None else fmt(v)
