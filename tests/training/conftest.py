"""Fixtures of the training tests. Torch runs on one thread: the machine's two cores are shared
with other jobs, and two OpenMP threads fighting a busy core are tens of times slower than one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import processed_sample  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The bundled real MedSeg sample (22 slices) preprocessed at 32²."""
    return processed_sample(tmp_path_factory, 32)
