"""Fixtures for the reward tests."""

from __future__ import annotations

import os

import pytest
from rewards_testlib import sandbox_processes


@pytest.fixture
def no_leftovers():
    """Fails the test when a sandboxed process outlives it."""
    yield
    left = sandbox_processes()
    assert not left, f"sandboxed processes left behind: {left}"


@pytest.fixture(scope="session")
def is_root() -> bool:
    return os.geteuid() == 0
