"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models run as fast on one thread, and two threads slow ~10x when the 2 cores are
    shared with other processes (OpenMP threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
