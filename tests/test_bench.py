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


OLD_LAYOUT = """| | |
|---|---|
| date | 2026-11-23 23:12 UTC |

### 6L/4H/128 (6 layers, 4 heads, width 128)

| model | trained params | training steps/s | × HF | eval prompts/s | × HF | training memory | × HF |
|---|---|---|---|---|---|---|---|
| HF GPT2Model + linear read-in/out | 1,203,201 | 1.06 (0.762–1.2) | – | 190 (163–201) | – | 744.4 MB (peak 1.2 GB) | – |
| icgd ICLTransformer (softmax) | 1,203,329 | 1.42 (0.973–1.55) | **1.34×** (1.21–1.65) | 298 (265–308) | **1.56×** (1.44–1.67) | 331.9 MB (peak 682.1 MB) | **0.45×** |

| learner | mode | prompts | batched | per-prompt loop | ratio | max abs diff (max abs output) |
|---|---|---|---|---|---|---|
| ols | predict | 1280 | 18.4 ms (17.6 ms–18.6 ms) | 272.9 ms (263.6 ms–297.7 ms)* | **15.54×** (14.16–16.17) | 1.1e-14 (1.7e+01) |
| direct | prefix | 8 | 31.81 s | 31.09 s | **0.98×** | 0.0e+00 (7.5e+00) |
"""


def test_previous_figures_parse_from_the_layout_without_previous_columns(tmp_path):
    from icgd.bench.previous import first_number, parse, read

    prev = parse(OLD_LAYOUT)
    assert prev.date == "2026-11-23"
    icgd = prev.model("6L/4H/128", "icgd ICLTransformer (softmax)")
    assert (icgd.train_ratio, icgd.eval_ratio, icgd.memory, icgd.memory_ratio) == (1.34, 1.56, "331.9 MB", 0.45)
    hf = prev.model("6L/4H/128", "HF GPT2Model + linear read-in/out")
    assert hf.train_ratio is None and hf.memory == "744.4 MB" and hf.memory_ratio is None
    assert prev.learners == {("ols", "predict"): 15.54, ("direct", "prefix"): 0.98}
    assert first_number("**1.2e+01×** (1–2)") == 12.0 and first_number("–") is None
    assert read(tmp_path / "missing.md") is None
    (tmp_path / "other.md").write_text("# nothing here\n")
    assert read(tmp_path / "other.md") is None


def test_previous_columns_round_trip_through_the_new_layout():
    """A file written with previous columns parses back to its own current figures, and the previous values
    are printed beside them."""
    from icgd.bench.common import Stats
    from icgd.bench.learners import LearnersBenchConfig, LearnersResult, LearnerRow
    from icgd.bench.previous import parse
    from icgd.bench.report import learners_section, training_section

    def s(x):
        return Stats(x, x, x, 3)

    r = tr.SizeResult(size=tr.ModelSize(6, 4, 128), params={"hf": 1, "icgd": 1},
                      train={"hf": s(0.8), "icgd": s(0.5)}, evaluate={"hf": s(0.2), "icgd": s(0.1)},
                      train_ratio={"hf": s(1.0), "icgd": s(1.6)}, eval_ratio={"hf": s(1.0), "icgd": s(2.0)},
                      memory={"hf": {"delta": 1_000_000, "peak": 2_000_000}, "icgd": {"delta": 400_000,
                                                                                       "peak": 900_000}})
    result = tr.TrainingResult(tr.TrainingBenchConfig(profile=False), "cpu", True, "sdpa", [r], "")
    row = LearnerRow("ols", "predict", 1280, 128, s(0.01), s(0.3), s(30.0), 1e-14, 17.0)
    learners = LearnersResult(LearnersBenchConfig(), [row])
    old = parse(OLD_LAYOUT)
    text = "\n".join(["| date | 2026-12-24 10:00 UTC |", *training_section(result, old),
                      *learners_section(learners, old)])
    assert "| **1.60×** (1.60–1.60) | 1.34× |" in text and "| **2.00×** (2.00–2.00) | 1.56× |" in text
    assert "| **0.40×** | 331.9 MB, 0.45× |" in text and "| 744.4 MB, – |" not in text
    assert "| **30.00×** (30.00–30.00) | 15.54× |" in text and "run of 2026-11-23" in text
    again = parse(text)
    icgd = again.model("6L/4H/128", "icgd ICLTransformer (softmax)")
    assert (icgd.train_ratio, icgd.eval_ratio, icgd.memory, icgd.memory_ratio) == (1.6, 2.0, "400.0 kB", 0.4)
    assert again.learners == {("ols", "predict"): 30.0} and again.date == "2026-12-24"
    fresh = "\n".join(training_section(result, None))
    assert "| **1.60×** (1.60–1.60) | – |" in fresh and "no earlier figures could be read" in fresh
