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

#: The longest test files, longest first: each file's setup + call + teardown times summed from
#: ``pytest -n 2 --dist loadfile --durations=0`` (the whole suite, 2 busy cores, Dec 2026; seconds in
#: the comments). ``make test`` runs files whole on 2 workers (``--dist loadfile``), so the wall time is
#: the busier worker's: handed out first, these few long files are spread over both workers and the run
#: ends on short files. xdist's own order (files with the most tests first) handed them out last, and
#: one worker ran e.g. test_server_workflow alone for minutes while the other had finished. Only the
#: order of whole files changes; the tests of a file keep theirs. Keep the list to files over ~1 min.
LONGEST_FIRST = (
    "tests/integration/test_dvc_pipeline.py",  # 702
    "tests/integration/test_lineage_pipeline.py",  # 595
    "tests/integration/test_image_pipeline.py",  # 583 (with Docker, as CI runs it)
    "tests/training/test_launch.py",  # 451
    "tests/training/test_train.py",  # 367
    "tests/test_packaging.py",  # 341
    "tests/integration/test_server_workflow.py",  # 288
    "tests/integration/test_kfp_local.py",  # 275
    "tests/training/test_distributed.py",  # 236
    "tests/training/test_readme_sweep.py",  # 164
    "tests/inference/test_export.py",  # 135
    "tests/test_tracking.py",  # 127
    "tests/bench/test_bench_ddp.py",  # 115
    "tests/training/test_precise_bn.py",  # 97
    "tests/inference/test_precision_backend.py",  # 91
    "tests/evaluation/test_evaluate.py",  # 79
    "tests/training/test_compile.py",  # 76
    "tests/pipelines/test_pipeline_spec.py",  # 76
    "tests/test_registry_kill.py",  # 72
)


def pytest_configure(config):
    # xdist's default --loadscope-reorder sorts files by their number of tests, which would undo
    # LONGEST_FIRST (the long end-to-end files have one to seven tests each); the order is then the
    # collection's, as pytest_collection_modifyitems leaves it
    if getattr(config.option, "loadscopereorder", None):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The files of :data:`LONGEST_FIRST` first, in its order; the others after them in collection order
    (a stable sort on the file: each file's tests stay together and in their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


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
