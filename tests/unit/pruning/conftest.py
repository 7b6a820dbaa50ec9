"""Shared fixtures of the pruning tests."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every pruning test runs with one torch thread (tests/conftest.py)."""
