"""One torch thread for the method tests: on a shared, oversubscribed machine two OpenMP threads make
the tiny UNet 10-100x slower, and these tests are many small forward/backward passes."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
