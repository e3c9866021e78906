"""Memory estimates (icgd.memory): absurd constructions and training runs are refused up front with the estimate in
the message; the estimated parameter storage is exact for deep_gd and the training models, close for the others."""

from __future__ import annotations

import pytest
import torch

from icgd.constructions import akyurek_gd, convex_gd, deep_gd, deep_gd_softmax, ridge
from icgd.constructions.akyurek import akyurek_memory
from icgd.constructions.bai import convex_gd_memory
from icgd.constructions.wu import deep_gd_memory
from icgd.constructions.wu_softmax import deep_gd_softmax_memory
from icgd.errors import ConfigError, ResourceError
from icgd.layers import MLP
from icgd.memory import GIB, MemoryEstimate, memory_limit, physical_memory, tensor_bytes
from icgd.nets import NetSpec
from icgd.train import build_config, train
from icgd.train.config import model_params, train_memory
from icgd.train.loop import build_model


@pytest.fixture
def no_env_limit(monkeypatch):
    monkeypatch.delenv("ICGD_MEMORY_LIMIT", raising=False)


def test_absurd_deep_gd_is_refused_before_anything_is_built(monkeypatch):
    monkeypatch.setenv("ICGD_MEMORY_LIMIT", "16")
    with pytest.raises(ResourceError) as info:
        deep_gd(NetSpec(3, 4096, 3, 3), eta=0.1, steps=10, knots=100000, box=1.0, x_bound=1.0)
    msg = str(info.value)
    assert "deep_gd(width=4096, depth=3, knots=100000)" in msg and "GiB" in msg and "reduce width" in msg
    estimate = deep_gd_memory(NetSpec(3, 4096, 3, 3), knots=100000, box=1.0).total
    assert f"{estimate / GIB:.3g} GiB" in msg and estimate > 16 * GIB


def test_default_limit_is_the_machines_memory(no_env_limit):
    ram = physical_memory()
    assert ram is None or memory_limit("cpu") == ram
    with pytest.raises(ResourceError, match="GiB"):  # ~1e13 weights: more than any machine
        deep_gd(NetSpec(3, 10**6, 12, 3), eta=0.1, steps=1, box=1.0, x_bound=1.0)
    with pytest.raises(ResourceError, match=r"ridge\(d_in=5, n_max=10000000\)"):
        ridge(5, lam=0.1, n_max=10**7)


def test_limit_can_be_switched_off_or_set(monkeypatch):
    monkeypatch.setenv("ICGD_MEMORY_LIMIT", "off")
    assert memory_limit() is None
    MemoryEstimate("x", {"a": 10**20}).check()
    monkeypatch.setenv("ICGD_MEMORY_LIMIT", "2.5")
    assert memory_limit() == int(2.5 * GIB)
    for bad in ("-1", "nan", "a lot"):
        monkeypatch.setenv("ICGD_MEMORY_LIMIT", bad)
        with pytest.raises(ConfigError, match="ICGD_MEMORY_LIMIT"):
            memory_limit()


@pytest.mark.parametrize("spec,kw", [
    (NetSpec(3, 4, 3, 2), dict(box=1.0, x_bound=1.0)),
    (NetSpec(2, 5, 2, 1, "relu"), dict(fit_range=3.0)),
    (NetSpec(2, 3, 1, 2, "tanh", output_activation=False), dict(box=0.5, x_bound=1.0)),
    (NetSpec(4, 6, 4, 3, "identity"), dict(fit_range=2.0)),
    (NetSpec(3, 4, 3, 2, "softplus"), dict(box=1.0, x_bound=1.0, dtype=torch.float32, knots=17)),
])
def test_deep_gd_parameter_bytes_are_exact(spec, kw, one_thread):
    model = deep_gd(spec, eta=0.1, steps=3, **kw)
    est = deep_gd_memory(spec, knots=kw.get("knots", 64), box=kw.get("box"), dtype=kw.get("dtype", torch.float64))
    assert est.parts["params"] == tensor_bytes(model)


@pytest.mark.parametrize("spec,kw", [
    (NetSpec(3, 4, 3, 2), dict(box=1.0, x_bound=1.0)),
    (NetSpec(2, 3, 2, 2, "gelu", output_activation=False), dict(box=0.5, x_bound=1.0, units=16, order=2)),
    (NetSpec(4, 6, 4, 3, "identity"), dict(fit_range=2.0)),
])
def test_deep_gd_softmax_parameter_bytes_within_ten_percent(spec, kw, one_thread):
    model = deep_gd_softmax(spec, eta=0.1, steps=2, **kw)
    est = deep_gd_softmax_memory(spec, units=kw.get("units", 64), order=kw.get("order", 4), box=kw.get("box"))
    assert 0.9 < est.parts["params"] / tensor_bytes(model) < 1.1


def test_linear_constructions_within_a_small_factor(one_thread):
    for d, knots, loss in [(3, 64, "squared"), (5, 256, "logistic")]:
        ratio = convex_gd_memory(d, knots=knots, loss=loss).parts["params"] / tensor_bytes(
            convex_gd(d, loss=loss, eta=0.1, steps=2, knots=knots))
        assert 0.5 < ratio < 2.5
    for model, alg, d, n in [(ridge(3, lam=0.1, n_max=10), "ridge", 3, 10),
                             (akyurek_gd(5, eta=0.1, n_max=40), "sgd", 5, 40)]:
        assert 0.5 < akyurek_memory(d, n, algorithm=alg).parts["params"] / tensor_bytes(model) < 2.0


def test_forward_pass_is_refused_when_activations_do_not_fit(monkeypatch, one_thread):
    spec = NetSpec(2, 3, 2, 1)
    model = deep_gd(spec, eta=0.1, steps=1, box=1.0, x_bound=1.0)
    w0 = torch.zeros(spec.num_params, dtype=torch.float64)
    small = deep_gd_memory(spec, box=1.0, batch=1, tokens=4, build=False).total
    monkeypatch.setenv("ICGD_MEMORY_LIMIT", str(2 * small / GIB))
    model.trace(torch.rand(1, 4, 2) * 0.5, torch.rand(1, 4, 1) * 0.5, w0)  # fits
    with pytest.raises(ResourceError, match=r"forward pass of 64 prompt\(s\) × 100 tokens"):
        model.trace(torch.rand(64, 100, 2) * 0.5, torch.rand(64, 100, 1) * 0.5, w0)


def test_sparse_mlp_from_indices_equals_the_dense_one():
    g = torch.Generator().manual_seed(0)
    W1 = torch.randn(6, 5, generator=g, dtype=torch.float64) * (torch.rand(6, 5, generator=g) < 0.3)
    W2 = torch.randn(5, 6, generator=g, dtype=torch.float64) * (torch.rand(5, 6, generator=g) < 0.3)
    h = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    dense = MLP.from_weights(W1, W2)
    sparse = MLP.from_weights(W1.to_sparse(), W2.to_sparse())
    assert sparse.W1.is_sparse and sparse.width == 6 and not sparse.W1.requires_grad
    assert torch.allclose(dense(h), sparse(h), rtol=0, atol=1e-14)


@pytest.mark.parametrize("preset,extra", [
    ("garg-linear-smoke", []), ("wu-nn-relu-smoke", ["mlp=false", "layernorm=false"]),
    ("garg-linear-smoke", ["token_format=\"concat\"", "d_out=2", "n_layer=3"]),
    ("lsa-smoke", []), ("lsa-smoke", ["shared=true", "n_layer=3", "n_head=2"]),
])
def test_training_parameter_count_is_exact(preset, extra):
    cfg = build_config(preset, overrides=extra)
    assert model_params(cfg) == sum(p.numel() for p in build_model(cfg).parameters())
    assert train_memory(cfg).parts["params+grads+adam"] == 4 * 4 * model_params(cfg)


def test_absurd_training_run_is_refused_before_the_run_folder(tmp_path, no_env_limit):
    cfg = build_config("garg-linear-smoke", overrides=["n_embd=32768", "n_layer=256", "batch_size=4096"])
    with pytest.raises(ResourceError, match="reduce n_embd"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
