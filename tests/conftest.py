"""Fixtures and session configuration for the test suite (the shared helpers are in helpers.py)."""

from __future__ import annotations

import pytest
from helpers import x64


@pytest.fixture
def float64():
    with x64():
        yield
