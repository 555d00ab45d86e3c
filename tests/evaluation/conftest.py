"""Fixtures of the evaluation tests (the same processed sample as tests/training, made once)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_helpers import processed_sample  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread_eval():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return processed_sample(tmp_path_factory, 32)
