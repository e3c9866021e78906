"""``icgd bench`` / ``python -m benchmarks``: the three benchmark sections measured side by side, written to
``benchmarks/RESULTS.md`` and a figure beside it.

1. :mod:`icgd.bench.training` — ICLTransformer vs HuggingFace GPT2Model (training steps/s, evaluation prompts/s,
   peak training memory); the HF side needs the optional ``bench`` extra (``pip install 'icgd[bench]'``).
2. :mod:`icgd.bench.construction` — the deep-GD construction's forward pass vs autograd GD, and its scaling.
3. :mod:`icgd.bench.learners` — batched reference learners vs a per-prompt loop; the direct-training baseline.

:func:`bench_config` gives the full and the quick (< 3 minutes) settings; :func:`run_bench` runs them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from icgd.bench import construction, learners, previous, training
from icgd.bench.common import THREADS_NOTE, load_average, machine
from icgd.bench.report import Report, write
from icgd.errors import ICGDError, SpecError

SECTIONS = ("training", "construction", "learners")
DEFAULT_OUT = Path("benchmarks") / "RESULTS.md"


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"
    threads: int = 1  # torch.set_num_threads (0: leave torch's default); see THREADS_NOTE
    sections: tuple[str, ...] = SECTIONS
    training: training.TrainingBenchConfig = field(default_factory=training.TrainingBenchConfig)
    construction: construction.ConstructionBenchConfig = field(default_factory=construction.ConstructionBenchConfig)
    learners: learners.LearnersBenchConfig = field(default_factory=learners.LearnersBenchConfig)


def bench_config(quick: bool = False, device: str = "cpu", threads: int = 1,
                 sections: Sequence[str] = SECTIONS) -> BenchConfig:
    """The full run (≈ 10 minutes on 2 CPU cores) or the quick one (< 3 minutes): fewer rounds, the smallest model
    size, shorter sweeps, fewer prompts in the per-prompt loops."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SpecError(f"unknown benchmark section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    cfg = BenchConfig(device=device, threads=threads, sections=tuple(sections))
    if dev.type == "cuda":
        cfg = replace(cfg, training=replace(cfg.training, sizes=training.GPU_SIZES))
    if not quick:
        return cfg
    return replace(
        cfg,
        training=replace(cfg.training, sizes=cfg.training.sizes[:1] if dev.type != "cuda" else cfg.training.sizes[-1:],
                         rounds=6, eval_rounds=8, warmup=1, memory_steps=2),
        construction=replace(cfg.construction, rounds=6, sweep_repeats=2, estimator_repeats=2,
                             sweeps={"n": (25, 50, 100), "steps": (5, 10, 20), "width": (4, 8, 16),
                                     "knots": (16, 64, 256)}),
        learners=replace(cfg.learners, repeats=1, loop_prompts=128, direct_width=64, direct_epochs=30,
                         direct_B=64, direct_prefix_B=4, direct_loop_prompts=8),
    )


def run_bench(cfg: BenchConfig, out: Path | str = DEFAULT_OUT, command: str = "icgd bench",
              log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Run the configured sections, write the markdown to `out` and the figure beside it; returns both paths. The
    figures of the file already at `out` (if any) are read first and shown beside the new ones
    (:mod:`icgd.bench.previous`)."""
    if cfg.threads < 0:
        raise SpecError(f"threads must be ≥ 0 (0: torch's default), got {cfg.threads}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    before = previous.read(out)
    info = machine(device)
    start = time.perf_counter()
    results = {
        "training": training.run(cfg.training, device, log) if "training" in cfg.sections else None,
        "construction": construction.run(cfg.construction, device, log) if "construction" in cfg.sections else None,
        "learners": learners.run(cfg.learners, device, log) if "learners" in cfg.sections else None,
    }
    rep = Report(command, info, load_average(), time.perf_counter() - start, **results, previous=before)
    return write(rep, Path(out))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks [--quick] [--device cpu|cuda] [--out FILE] [--threads N] [--only SECTION …]``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the < 3 minute run")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file (the figure goes beside it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); " + THREADS_NOTE)
    ap.add_argument("--only", nargs="+", default=list(SECTIONS), choices=SECTIONS, help="sections to run")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = bench_config(args.quick, args.device, args.threads, args.only)
        md, fig = run_bench(cfg, args.out, command=" ".join(["python -m benchmarks", shlex.join(argv)]).strip())
    except ICGDError as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {md} and {fig}")
