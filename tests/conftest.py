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

