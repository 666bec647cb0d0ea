"""Rollout tests run tiny models: one torch thread is as fast as two, and far faster when the
machine is shared (OpenMP threads spin-wait for a busy core). The previous setting is restored."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
