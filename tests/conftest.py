"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test problems are tiny: one thread is as fast and does not collapse when other
    processes share the cores (per-operator OpenMP hand-off dominates otherwise)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
