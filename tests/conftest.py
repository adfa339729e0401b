"""Fixtures shared by the unit tests (the host tests have their own in tests/host/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored afterwards: small models run no slower, and the
    other core stays free on the 2-core CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
