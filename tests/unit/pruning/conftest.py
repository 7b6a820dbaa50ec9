"""Shared fixtures of the pruning tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: one intra-op thread is faster, and fair on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
