"""Training tests run torch on one thread (``one_torch_thread`` in tests/conftest.py); their
data is the session's ``tiny_data``."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_thread(one_torch_thread):
    yield
