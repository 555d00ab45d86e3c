"""Integration tests: real SeaweedFS S3 + MLflow server (fixtures from tests/servers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from servers import mlflow_server, mlflow_server_env, s3_env, s3_server  # noqa: F401  (fixtures)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
