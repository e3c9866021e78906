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
