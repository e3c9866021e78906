"""Shared fixtures for the icgd tests: seeded generators and float64 random tensors."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator per test so every test is reproducible on its own."""
    g = torch.Generator()
    g.manual_seed(1234)
    return g

