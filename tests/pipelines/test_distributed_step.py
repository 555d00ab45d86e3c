"""The pipeline for more than one GPU: its train step submits a Kubeflow Trainer ``TrainJob`` whose
manifest is checked here (no cluster runs it), the node's torchrun takes the job's ``PET_*``
variables and hands ``lungseg train`` the ``RANK``/``WORLD_SIZE`` it detects, and one GPU keeps the
one-GPU pipeline."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.trainjob import (
    GPUS_PER_NODE_ENV,
    NODE_COMMAND,
    RUN_VALUES,
    node_command,
)
from pipelines.distributed import TORCH_RUNTIME
from pipelines.lungseg_pipeline import (
    MLFLOW_SECRET,
    MLFLOW_SECRET_ENV,
    S3_READ_ENV,
    S3_SECRET,
    S3_SECRET_ENV,
    TRAIN_RETRIES,
    TRAIN_TIMEOUT_S,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = "ghcr.io/lungseg/lungseg:0.1.0"


def _compile(out: Path, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LUNGSEG_IMAGE"}
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg.cli", "pipeline", "compile", "--output", str(out), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict = {}
    for part in yaml.safe_load_all(out.read_text(encoding="utf-8")):
        doc.update(part)
    return doc


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> dict:
    return _compile(tmp_path_factory.mktemp("kfp") / "multi.yaml", "--nodes", "2", "--gpus-per-node", "4")


def _manifest(doc: dict) -> dict:
    params = doc["root"]["dag"]["tasks"]["train-distributed-op"]["inputs"]["parameters"]
    return json.loads(params["job_manifest"]["runtimeValue"]["constant"])


@pytest.mark.slow
def test_one_gpu_in_all_compiles_the_one_gpu_pipeline(tmp_path):
    one = _compile(tmp_path / "one.yaml", "--nodes", "1", "--gpus-per-node", "1")
    default = _compile(tmp_path / "default.yaml")
    assert one == default and "train-op" in one["root"]["dag"]["tasks"]
    assert "comp-train-distributed-op" not in one["components"]


@pytest.mark.slow  # compiles the multi-GPU pipeline (~5 s): make test-fast stays under a minute
def test_more_gpus_make_the_train_step_a_trainjob_launcher(multi):
    tasks = multi["root"]["dag"]["tasks"]
    assert set(tasks) == {"importer", "preprocess-op", "train-distributed-op", "evaluate-op", "register-op"}
    for consumer in ("evaluate-op", "register-op"):  # the same model artifact as train_op's
        model_in = tasks[consumer]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
        assert model_in == {"outputArtifactKey": "model", "producerTask": "train-distributed-op"}
    launcher = tasks["train-distributed-op"]
    assert launcher["retryPolicy"]["maxRetryCount"] == TRAIN_RETRIES
    assert launcher["inputs"]["parameters"]["timeout_s"]["runtimeValue"]["constant"] == TRAIN_TIMEOUT_S
    k8s = multi["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-distributed-op"]
    assert int(k8s["activeDeadlineSeconds"]) == TRAIN_TIMEOUT_S
    container = multi["deploymentSpec"]["executors"]["exec-train-distributed-op"]["container"]
    assert "accelerator" not in container.get("resources", {})  # the GPUs are the TrainJob's, not this pod's
    assert "nodeSelector" not in k8s and container["image"] == DEFAULT_IMAGE
    source = "\n".join(container["command"])
    assert "submit_and_wait(job" in source and "download_prefix(staging, model.path)" in source


@pytest.mark.slow  # compiles the multi-GPU pipeline (~5 s): make test-fast stays under a minute
def test_the_trainjob_manifest(multi):
    job = _manifest(multi)
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["generateName"] == "lungseg-train-"
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": TORCH_RUNTIME,
    }
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "4"}
    assert trainer["image"] == DEFAULT_IMAGE and trainer["command"] == NODE_COMMAND
    env = {e["name"]: e for e in trainer["env"]}
    assert all(env[name]["value"] == "" for name in RUN_VALUES)  # the launcher fills them per run
    assert env[GPUS_PER_NODE_ENV]["value"] == "4" and env["LUNGSEG_IMAGE"]["value"] == DEFAULT_IMAGE
    refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert refs["MLFLOW_TRACKING_URI"] == {"name": MLFLOW_SECRET, "key": "tracking_uri"}
    assert refs["MLFLOW_TRACKING_PASSWORD"] == {"name": MLFLOW_SECRET, "key": "password", "optional": True}
    for key, var in {**S3_SECRET_ENV, **S3_READ_ENV}.items():  # MLflow's artifact store and boto3's download
        assert refs[var] == {"name": S3_SECRET, "key": key}
    assert set(refs) == set(MLFLOW_SECRET_ENV.values()) | set(S3_SECRET_ENV.values()) | set(S3_READ_ENV.values())
    plain = [e for e in trainer["env"] if "value" in e and ("KEY" in e["name"] or "PASSWORD" in e["name"])]
    assert not plain  # credentials only from secrets


def test_bad_gpu_counts_are_refused_in_one_line(tmp_path):
    out = tmp_path / "p.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg.cli", "pipeline", "compile", "--output", str(out), "--gpus-per-node", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "error: gpus_per_node: must be an integer ≥ 1, got 0"
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_nodes_torchrun_turns_the_trainjob_variables_into_what_lungseg_detects(tmp_path):
    """Kubeflow Trainer's torch runtime sets PET_*; the node command's torchrun must start that many
    processes with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set, which lungseg's setup joins as a group."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os, sys\n"
        "from lungseg.config import TrainConfig\n"
        "from lungseg.training.distributed import launched, setup\n"
        "ddp = setup(TrainConfig(device='cpu'))\n"
        "print(json.dumps({'launched': launched(), 'rank': ddp.rank, 'world': ddp.world_size,"
        " 'backend': ddp.backend}), flush=True)\n"
        "ddp.close()\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
    }
    cmd = node_command(env, tmp_path / "data", tmp_path / "out", tmp_path / "p.yaml")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "-m"] and cmd[4:6] == ["lungseg.cli", "train"]
    assert "--nproc_per_node=4" in node_command({GPUS_PER_NODE_ENV: "4"}, Path("d"), Path("o"), Path("p"))
    probe_cmd = [*cmd[:3], str(probe)]  # the same torchrun, with the probe in place of `-m lungseg.cli train …`
    proc = subprocess.run(probe_cmd, env=env, capture_output=True, text=True, timeout=300, encoding="utf-8")
    assert proc.returncode == 0, proc.stderr
    seen = sorted(
        # two processes share one stdout: their lines may interleave without a newline between them
        (json.loads(obj) for obj in re.findall(r"\{[^{}]*\}", proc.stdout)),
        key=lambda r: r["rank"],
    )
    assert seen == [{"launched": True, "rank": r, "world": 2, "backend": "gloo"} for r in (0, 1)]
