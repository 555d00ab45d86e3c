"""Integration tests: real SeaweedFS S3 + MLflow server (fixtures from tests/servers.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import env

from servers import mlflow_server, mlflow_server_env, s3_env, s3_server  # noqa: F401  (fixtures)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def run_lungseg(tmp_path):
    """``lungseg ARG...`` in a subprocess (``python -m lungseg.cli``, in ``tmp_path``, with the variables of
    :func:`pipeline_helpers.env` and the keyword arguments as more): the completed process, its output
    decoded as UTF-8; ``timeout`` (seconds) only guards against a hang. An argument may be a path."""

    def run(*args, timeout: float = 300, **variables: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lungseg.cli", *map(str, args)],
            cwd=tmp_path,
            env={**env(), **variables},
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
        )

    return run
