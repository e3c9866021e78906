"""Helpers of the linear reproductions: typed settings round trip, the plateau stopping rule, and the operation count
behind the paper-scale time estimate (against torch's own FLOP counter)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from icgd.errors import ConfigError
from icgd.experiments import akyurek2023, garg2022
from icgd.experiments.compute_estimate import TrainShape, estimate
from icgd.experiments.plateau import Plateau
from icgd.experiments.reproduce import settings_for
from icgd.experiments.settings import load
from icgd.models import ICLTransformer


@pytest.mark.parametrize("module", [akyurek2023, garg2022])
def test_settings_round_trip_through_json(module):
    for scale, typed in module.SETTINGS.items():
        raw = json.loads(json.dumps(module.SCALES[scale]))  # what metrics.json holds
        assert load(module.Settings, raw) == typed
    over = settings_for(module.__name__.rsplit(".", 1)[1], "smoke", ["steps=7"])
    assert load(module.Settings, over).steps == 7
    with pytest.raises(ConfigError, match="unknown setting"):
        load(module.Settings, {**module.SCALES["smoke"], "depths": [1]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        module.SETTINGS["smoke"].steps = 3


def test_plateau_rule():
    rule = Plateau(after=0.5, window=0.2, rel=0.02)
    steps = list(range(100, 1100, 100))
    falling = [1.0 / s for s in steps]
    flat = [1.0] * 5 + [0.995] * 5
    assert not rule.reached(steps[:4], flat[:4], 1000)  # before half of the planned steps: never
    assert rule.reached(steps[:7], flat[:7], 1000)  # 0.995 is < 2 % below the best before the window
    assert not rule.reached(steps[:7], falling[:7], 1000)
    assert not Plateau(rel=0.0).reached(steps, flat, 1000)


def test_train_flops_against_torch_counter():
    shape = TrainShape(n_layer=3, n_embd=64, tokens=32, batch=8)
    model = ICLTransformer(4, n_layer=3, n_head=2, n_embd=64, max_points=16, generator=torch.Generator().manual_seed(0))
    X, Y = torch.randn(8, 16, 4), torch.randn(8, 16, 1)
    with FlopCounterMode(display=False) as counter:
        model(X, Y).pow(2).mean().backward()
    counted = counter.get_total_flops()
    # torch's counter sees the matrix products but not the fused attention kernel; ours leaves out the embedding
    assert shape.flops(attention=False) == pytest.approx(counted, rel=0.02)
    assert shape.flops() - shape.flops(attention=False) == pytest.approx(3 * 8 * 4 * 32 * 64 * 32 * 2.5)


def test_estimate_scales_with_measured_rate():
    small, big = TrainShape(2, 64, 32, 64), TrainShape(4, 128, 32, 64)
    e = estimate([(small, 100, 10.0)], [(big, 1000)])
    assert e.cpu_flops == pytest.approx(small.flops() * 100 / 10.0)
    assert e.paper_cpu_hours == pytest.approx(big.flops() * 1000 / e.cpu_flops / 3600)
    assert e.paper_gpu_hours > 0
