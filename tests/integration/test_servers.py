"""The real servers: S3 (SeaweedFS) with our credentials, MLflow with artifacts on S3,
concurrent registrations, and the DVC remote pushed to / pulled from S3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from lungseg.registry import scoped_mlflow_uri
from registry_helpers import log_tiny_model, write_candidate
from servers import S3Server, servers

REPO = Path(__file__).resolve().parents[2]


def test_s3_requires_the_generated_credentials(s3_server):
    import boto3
    from botocore.exceptions import ClientError

    s3 = s3_server.client()
    s3.put_object(Bucket=s3_server.bucket, Key="probe/hello.txt", Body=b"hello")
    assert s3.get_object(Bucket=s3_server.bucket, Key="probe/hello.txt")["Body"].read() == b"hello"
    stranger = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id="nobody",
        aws_secret_access_key="wrong-secret",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError):
        stranger.list_objects_v2(Bucket=s3_server.bucket)


def test_busy_port_and_busy_data_dir_are_refused(s3_server, tmp_path):
    """weed would silently move to another port: we refuse instead, and never share a data dir."""
    with pytest.raises(servers.ServerError, match="in use"):
        S3Server(tmp_path / "other", port=s3_server.ports["s3"]).start()
    with pytest.raises(servers.ServerError, match="still used"):
        S3Server(s3_server.workdir).start()


def test_model_logged_through_server_lands_on_s3_and_loads_back(mlflow_server_env, s3_server):
    run_info = log_tiny_model(mlflow_server_env.uri, experiment="server-roundtrip")
    keys = [
        o["Key"]
        for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="mlflow/").get("Contents", [])
    ]
    assert any(k.endswith("MLmodel") for k in keys), keys
    assert any(k.endswith("model.pth") for k in keys), keys
    with scoped_mlflow_uri(mlflow_server_env.uri):
        loaded = mlflow.pytorch.load_model(run_info["model_uri"])
    x = torch.rand(1, 1, 16, 16)  # the registry tests' tiny lungseg U-Net (sizes in multiples of 16)
    assert loaded.eval()(x).shape == (1, 1, 16, 16)


def test_two_concurrent_registrations_leave_a_consistent_registry(mlflow_server_env, tmp_path):
    """Two `lungseg register` processes at once: the better one ends as champion, every alias
    points to an existing READY version, the lock is released."""
    uri = mlflow_server_env.uri
    name = "lsg-concurrent"
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"register": {"model_name": name}, "mlflow": {"tracking_uri": uri}}), encoding="utf-8")
    fingerprint = "sha256:" + "c" * 64
    dirs = {}
    for tag, dice in (("low", 0.41), ("high", 0.77)):
        dirs[tag] = write_candidate(tmp_path / tag, log_tiny_model(uri), dice=dice, fingerprint=fingerprint)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lungseg.cli",
                "register",
                "--model",
                str(m),
                "--evaluation",
                str(e),
                "--output",
                str(tmp_path / f"{tag}.json"),
                "--params",
                str(params),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
            encoding="utf-8",
        )
        for tag, (m, e) in dirs.items()
    ]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    decisions = {tag: json.loads((tmp_path / f"{tag}.json").read_text(encoding="utf-8")) for tag in dirs}
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == decisions["high"]["version"]
    assert champion.status == "READY"
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    assert set(versions) == {d["version"] for d in decisions.values()}
    model = client.get_registered_model(name)
    for alias, version in model.aliases.items():
        assert str(version) in versions and versions[str(version)].status == "READY", (alias, version)
    assert not [m for m in client.search_registered_models() if m.name == f"{name}.lock"]
    # whichever came first, the low one was either challenger or a champion later dethroned
    low = decisions["low"]
    assert low["decision"] == "challenger" or decisions["high"]["champion_before"] == pytest.approx(0.41)
    with scoped_mlflow_uri(uri):  # the registered version is the served lungseg model (pyfunc, serving settings)
        loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert "serving" in loaded.metadata.metadata["lungseg"]


def _git_dvc_repo(path: Path) -> dict:
    env = dict(
        os.environ,
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True, env=env)
    # the project's own remote configuration, unchanged
    shutil.copy(REPO / ".dvc" / "config", path / ".dvc" / "config")
    return env


def test_dvc_remote_push_and_pull_through_s3(s3_env, tmp_path):
    """`dvc push` to the project's S3 remote and `dvc pull` into a fresh clone of the repo."""
    src = tmp_path / "src"
    env = _git_dvc_repo(src)
    remote_url = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "list"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        encoding="utf-8",
    ).stdout
    assert "s3://" in remote_url
    # the endpoint of this local server goes into .dvc/config.local (git-ignored), never the config
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(
        [*dvc, "remote", "modify", "--local", "storage", "endpointurl", s3_env.endpoint], cwd=src, env=env, check=True
    )
    data = src / "data" / "processed"
    data.mkdir(parents=True)
    payload = os.urandom(200_000)
    (data / "images.npy").write_bytes(payload)
    (data / "meta.json").write_text('{"dataset": "probe"}', encoding="utf-8")
    subprocess.run([*dvc, "add", "data/processed"], cwd=src, env=env, check=True, capture_output=True)
    push = subprocess.run([*dvc, "push"], cwd=src, env=env, capture_output=True, text=True, encoding="utf-8")
    assert push.returncode == 0, push.stderr
    assert "2 files pushed" in push.stdout or "pushed" in push.stdout, push.stdout
    prefix = (
        subprocess.run(
            [*dvc, "remote", "list"], cwd=src, env=env, capture_output=True, text=True, check=True, encoding="utf-8"
        )
        .stdout.split()[1]
        .removeprefix("s3://")
    )
    bucket_name, _, key_prefix = prefix.partition("/")
    assert bucket_name == s3_env.bucket, "the test server serves the bucket named in .dvc/config"
    listed = s3_env.client().list_objects_v2(Bucket=bucket_name, Prefix=key_prefix + "/")
    assert listed.get("KeyCount", 0) >= 3  # two files + the .dir manifest

    # a fresh checkout: no cache, no data; pull restores the exact bytes
    clone = tmp_path / "clone"
    subprocess.run(["git", "add", "-A"], cwd=src, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=src, env=env, check=True)
    subprocess.run(["git", "clone", "-q", str(src), str(clone)], env=env, check=True)
    assert not (clone / "data" / "processed").exists()
    subprocess.run(
        [*dvc, "remote", "modify", "--local", "storage", "endpointurl", s3_env.endpoint], cwd=clone, env=env, check=True
    )
    pull = subprocess.run([*dvc, "pull"], cwd=clone, env=env, capture_output=True, text=True, encoding="utf-8")
    assert pull.returncode == 0, pull.stderr
    assert (clone / "data" / "processed" / "images.npy").read_bytes() == payload
    assert json.loads((clone / "data" / "processed" / "meta.json").read_text(encoding="utf-8")) == {"dataset": "probe"}
