"""Shared fixtures. The real datasets live in ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LUNGSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLE = REPO / "data" / "sample"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets (see their README); a missing folder is an error, not a skip."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA}: the shared real datasets are missing (set LUNGSEG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE / "medseg-covid100"
