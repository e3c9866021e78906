"""Shared fixtures for the icgd tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator per test so every test is reproducible on its own."""
    g = torch.Generator()
    g.manual_seed(1234)
    return g



@pytest.fixture
def one_thread():
    """For tests of tiny tensors: one intra-op thread avoids OpenMP hand-offs that dominate on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_SMOKE_RUNS: dict[str, tuple] = {}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """`smoke_run(name)` -> (folder, metrics.json record) of `icgd reproduce name --scale smoke`, run once per test
    session on one thread and shared by tests/test_reproduce.py and the per-experiment tests."""
    import json

    from icgd.experiments.reproduce import run_experiment

    def get(name: str) -> tuple:
        if name not in _SMOKE_RUNS:
            out = tmp_path_factory.mktemp(name)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                run_experiment(name, "smoke", out, log=lambda s: None)
            finally:
                torch.set_num_threads(threads)
            _SMOKE_RUNS[name] = (out, json.loads((out / "metrics.json").read_text()))
        return _SMOKE_RUNS[name]

    return get
