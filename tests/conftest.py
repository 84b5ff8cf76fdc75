"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run on one intra-op thread: on a loaded 2-core machine more threads spin (up to
    50x slower) and results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
