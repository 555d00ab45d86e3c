"""Training tests run torch on one thread (``one_torch_thread`` in tests/conftest.py); their
data is the session's ``tiny_data``. The library logs its messages (``lungseg.training.*``); the
tests that call it directly read them on stderr as the command line shows them, through the command
line's own handler (:func:`lungseg.cli._logging.configure_logging`)."""

from __future__ import annotations

import pytest

from lungseg.cli._logging import configure_logging


@pytest.fixture(scope="session", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(autouse=True)
def _messages_on_stderr():
    configure_logging()
    yield
