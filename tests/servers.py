"""Pytest fixtures for REAL local servers: SeaweedFS S3 and an MLflow tracking server on S3.

Reuse them from any conftest::

    from servers import s3_server, mlflow_server, s3_env, mlflow_server_env  # noqa: F401

(``tests/`` is on ``sys.path`` while pytest runs, as it holds the root conftest.)

* ``s3_server`` (session): ``scripts.servers.S3Server`` — ``.endpoint``, ``.bucket``, ``.client()``,
  ``.client_env()``; random credentials generated for this session.
* ``mlflow_server`` (session): ``scripts.servers.MlflowServer`` with artifacts proxied to
  ``s3://<bucket>/mlflow`` — ``.uri``.
* ``s3_env`` / ``mlflow_server_env`` (function): set the environment (``AWS_*``,
  ``MLFLOW_S3_ENDPOINT_URL``, ``MLFLOW_TRACKING_URI``) for the test and restore it afterwards.

The servers' logs are in the session's temporary folder; a failure to start names the log.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_servers_module():
    name = "lungseg_scripts_servers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "servers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


servers = _load_servers_module()
S3Server = servers.S3Server
MlflowServer = servers.MlflowServer


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    # explicit random credentials: never the caller's real AWS keys
    import secrets

    with S3Server(
        tmp_path_factory.mktemp("s3"),
        bucket="lungseg",  # the bucket named in .dvc/config and docs
        access_key="lsgtest" + secrets.token_hex(6),
        secret_key=secrets.token_urlsafe(24),
    ) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server"), s3=s3_server) as server:
        yield server


@pytest.fixture
def s3_env(monkeypatch, s3_server):
    for key, value in s3_server.client_env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def mlflow_server_env(monkeypatch, s3_env, mlflow_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return mlflow_server
