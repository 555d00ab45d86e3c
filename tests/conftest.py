"""Shared fixtures. The real datasets live in ``../shared/data`` beside the checkout."""

from __future__ import annotations

import locale
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LUNGSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLE = REPO / "data" / "sample"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def locale_kept_by_the_test():
    """Around one test (a generator: before, ``yield``, after): fail it by name, putting the locale back, if
    it left the process's LC_CTYPE changed. SimpleITK's DICOM writer sets it to C; outside UTF-8 mode
    (pytest without ``make``, no PYTHONUTF8) Python's default encoding is then ASCII, and some later
    test's text I/O failed far from the cause (tests/data/test_locale.py)."""
    before = locale.setlocale(locale.LC_CTYPE)
    yield
    after = locale.setlocale(locale.LC_CTYPE)
    if after != before:
        locale.setlocale(locale.LC_CTYPE, before)
        pytest.fail(f"the test left the process locale changed: LC_CTYPE {before} -> {after} (put it back)")


@pytest.fixture(autouse=True)
def _locale_kept():
    yield from locale_kept_by_the_test()


@pytest.fixture(autouse=True)
def _sys_path_kept():
    """``sys.path`` as it was before the test. Loading a portable lungseg model puts its ``code_paths`` copy
    (a partial ``lungseg`` package) in front of ``sys.path`` for good; a later test on the same worker that
    spawns processes (DDP, ``mp.spawn``) then had them import that copy: ``No module named
    'lungseg.artifacts.checkpoint'``, depending on which test file ran before on the worker."""
    import sys

    before = list(sys.path)
    yield
    sys.path[:] = before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets (see their README); a missing folder is an error, not a skip."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA}: the shared real datasets are missing (set LUNGSEG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE / "medseg-covid100"


@pytest.fixture(scope="session")
def one_torch_thread():
    """Torch on one thread (requested by the training/evaluation folders): the machine's two cores are
    shared with other jobs, and two OpenMP threads fighting a busy core are tens of times slower."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The bundled real MedSeg sample (22 slices) preprocessed at 32², once per session."""
    from train_helpers import processed_sample

    return processed_sample(tmp_path_factory, 32)
