"""icgd bench: the quick mode at tiny sizes writes the markdown and the figure (the figures' values are not checked:
timings belong to benchmarks/RESULTS.md, never to tests)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from icgd.bench import bench_config, run_bench
from icgd.bench import training as tr
from icgd.bench.common import TensorMemory, loglog_slope
from icgd.bench.construction import Point
from icgd.cli import main


def tiny(cfg, *, memory: bool = False):
    return replace(
        cfg,
        training=replace(cfg.training, sizes=(tr.ModelSize(1, 1, 8),), batch=4, points=5, d=3, rounds=2,
                         eval_rounds=2, warmup=1, memory=memory),
        construction=replace(cfg.construction, base=Point(depth=2, width=2, d=2, n=6, steps=2, knots=8), rounds=2,
                             sweep_repeats=1, sweeps={"n": (4, 8), "knots": (8, 16)}, estimator_repeats=0),
        learners=replace(cfg.learners, B=6, d=3, n=5, loop_prompts=3, direct_width=8, direct_epochs=2, direct_B=2,
                         direct_prefix_B=2, direct_loop_prompts=1),
    )


def test_quick_mode_at_tiny_sizes_writes_markdown_and_figure(tmp_path, one_thread):
    out = tmp_path / "bench" / "RESULTS.md"
    md, fig = run_bench(tiny(bench_config(quick=True)), out, command="test", log=lambda _: None)
    assert md == out and fig == out.with_name("results.png")
    text = md.read_text()
    for heading in ("## 1. Training", "## 2. Construction cost", "## 3. Baselines", "1L/1H/8", "threads",
                    "load average", "results.png"):
        assert heading in text
    assert "| icgd ICLTransformer (softmax) |" in text and "| direct | prefix |" in text
    assert "| n | 4 |" in text and "| knots | 16 |" in text and "time exponent" in text
    assert fig.stat().st_size > 10_000


def test_without_transformers_the_anchor_is_reported_not_measured(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(tr, "hf_available", lambda: False)
    cfg = replace(tiny(bench_config(quick=True)), sections=("training",))
    md, fig = run_bench(cfg, tmp_path / "R.md", log=lambda _: None)
    text = md.read_text()
    assert "not measured: install icgd[bench]" in text and "| HF GPT2Model" not in text
    assert "Not run (`--only`)." in text and fig.exists()


def test_memory_probe_runs_in_a_child_process(one_thread):
    cfg = replace(tiny(bench_config()).training, memory_steps=1)
    mem = tr.cpu_memory("icgd", cfg, tr.ModelSize(1, 1, 8))
    assert mem["peak"] > 0 and mem["delta"] >= 0


def test_tensor_memory_counts_live_allocations():
    def work():
        a = torch.ones(1000, 250)  # 1 MB
        b = a * 2  # 1 MB
        del a
        return b + 1  # 1 MB: a is gone, so 2 MB at most are alive at once

    with TensorMemory() as meter:
        work()
    assert meter.peak == 2_000_000 and meter.current == 0
    assert loglog_slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)


@pytest.mark.parametrize("args, message", [(["--only", "nothing"], "unknown benchmark section"),
                                           (["--device", "cuda"], "CUDA is not available")])
def test_cli_errors_are_one_line(args, message, capsys):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as info:
        main(["bench", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missed_targets_are_reported_with_their_bound():
    from icgd.bench.common import Stats
    from icgd.bench.report import _bounds, _targets

    def s(x):
        return Stats(x, x, x, 3)

    prof = {"matmul": 0.4, "attention kernel": 0.1, "activation (GELU)": 0.05, "layer norm": 0.01,
            "other elementwise, copies, reductions": 0.03, "framework overhead and the rest": 0.01}
    r = tr.SizeResult(size=tr.ModelSize(6, 4, 128), params={"hf": 1, "icgd": 1},
                      train={"hf": s(0.8), "icgd": s(0.6)}, evaluate={"hf": s(0.2), "icgd": s(0.1)},
                      train_ratio={"hf": s(1.0), "icgd": s(1.33)}, eval_ratio={"hf": s(1.0), "icgd": s(2.0)},
                      memory={"hf": {"delta": 100, "peak": 200}, "icgd": {"delta": 70, "peak": 170}},
                      profile={"hf": prof, "icgd": prof})
    line = _targets(r)[0]
    assert "training ≥ 1.5×: 1.33×, **missed** (missed by 13%" in line and "evaluation ≥ 1.3×: 2.00×, met" in line
    assert "training memory ≤ 0.6×: 0.70×, **missed**" in line
    result = tr.TrainingResult(tr.TrainingBenchConfig(), "cpu", True, "sdpa", [r], "")
    (bound,) = _bounds(result)
    assert "6L/4H/128: 83% of icgd's profiled step" in bound and "at most 1.60×" in bound
