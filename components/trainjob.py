"""The distributed train step on Kubernetes: a Kubeflow Trainer ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``).

Two sides, both running in the project image:

* the **launcher** — the KFP task ``train_distributed_op`` (:mod:`components.stages`), a small CPU
  pod: :func:`fill` puts the run's values (the processed data's ``s3://`` URI, where the output
  goes, the ``train``/``mlflow`` sections) into the ``TrainJob`` manifest that
  :func:`pipelines.distributed.train_job_manifest` built at compile time, :func:`submit_and_wait`
  creates it with the Kubernetes API and waits for its ``Complete``/``Failed`` condition, and the
  output is fetched into the task's ``model`` artifact;
* every **node** of the job runs ``python -m components.trainjob`` (:func:`node_main`): it downloads
  the processed data, writes the params file, runs ``torchrun -m lungseg.cli train`` — torchrun
  takes the group's shape from the ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
  ``PET_MASTER_ADDR``, ``PET_MASTER_PORT`` variables Kubeflow Trainer's torch runtime sets, and
  gives each process the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` that ``lungseg train``
  detects (:mod:`lungseg.training.distributed`) — and node 0 uploads the output folder
  (written by global rank 0) to the output URI.

Nothing here can run without a cluster; the pure parts (:func:`fill`, :func:`job_state`,
:func:`node_command`) are tested, the manifest is checked in ``tests/pipelines/test_distributed.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
TRAINJOB_PLURAL = "trainjobs"
#: the environment of a job's nodes that the launcher fills in (names; values per run)
DATA_URI_ENV = "LUNGSEG_DATA_URI"
OUTPUT_URI_ENV = "LUNGSEG_OUTPUT_URI"
TRAIN_PARAMS_ENV = "LUNGSEG_TRAIN_PARAMS"
MLFLOW_PARAMS_ENV = "LUNGSEG_MLFLOW_PARAMS"
GPUS_PER_NODE_ENV = "LUNGSEG_GPUS_PER_NODE"
RUN_VALUES = (DATA_URI_ENV, OUTPUT_URI_ENV, TRAIN_PARAMS_ENV, MLFLOW_PARAMS_ENV)
#: what each node runs
NODE_COMMAND = ["python", "-m", "components.trainjob"]
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class JobFailed(Exception):
    """The TrainJob ended ``Failed`` or did not end in time (the message says which and why)."""


def fill(manifest: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """A copy of ``manifest`` with the node environment variables named in ``values`` set to them.
    Every name must already be in the manifest's ``spec.trainer.env`` (a ``KeyError`` otherwise:
    the manifest and this launcher disagree)."""
    job = json.loads(json.dumps(manifest))
    env = job["spec"]["trainer"]["env"]
    names = {e["name"]: e for e in env}
    for name, value in values.items():
        names[name]["value"] = value
    return job


def job_state(obj: dict[str, Any]) -> tuple[str | None, str]:
    """``("Complete" | "Failed" | None, message)`` from a TrainJob's ``status.conditions``."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and str(cond.get("status")) == "True":
            return cond["type"], cond.get("message") or cond.get("reason") or ""
    return None, ""


def submit_and_wait(
    manifest: dict[str, Any], *, timeout_s: float, poll_s: float = 30.0, namespace: str | None = None
) -> str:
    """Create the TrainJob in this pod's namespace and wait for it; returns its name, raises
    :class:`JobFailed` when it fails or runs past ``timeout_s``."""
    from kubernetes import client, config

    config.load_incluster_config()
    ns = namespace or SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    api = client.CustomObjectsApi()
    created = api.create_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, ns, TRAINJOB_PLURAL, manifest)
    name = created["metadata"]["name"]
    print(f"created TrainJob {ns}/{name} ({manifest['spec']['trainer']['numNodes']} node(s))", flush=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, message = job_state(
            api.get_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, ns, TRAINJOB_PLURAL, name)
        )
        if state == "Complete":
            return name
        if state == "Failed":
            raise JobFailed(
                f"TrainJob {ns}/{name} failed: {message} (kubectl logs -n {ns} -l "
                f"jobset.sigs.k8s.io/jobset-name={name})"
            )
        time.sleep(poll_s)
    raise JobFailed(f"TrainJob {ns}/{name} did not finish within {timeout_s:.0f} s; it is left running for inspection")


def node_command(env: dict[str, str], data: Path, output: Path, params: Path) -> list[str]:
    """The torchrun command of one node. The group's shape comes from the ``PET_*`` variables of
    Kubeflow Trainer; without ``PET_NPROC_PER_NODE`` (an older runtime) one process per GPU of
    :data:`GPUS_PER_NODE_ENV`."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if "PET_NPROC_PER_NODE" not in env and env.get(GPUS_PER_NODE_ENV):
        cmd.append(f"--nproc_per_node={env[GPUS_PER_NODE_ENV]}")
    return [*cmd, "-m", "lungseg.cli", "train", "--data", str(data), "--output", str(output), "--params", str(params)]


def upload_folder(folder: Path, uri: str) -> int:
    """Every file under ``folder`` to the ``s3://`` prefix ``uri``; returns the number of files."""
    import boto3

    from lungseg.lineage import split_s3

    bucket, prefix = split_s3(uri)
    s3 = boto3.session.Session().client("s3")
    n = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/"))
        n += 1
    return n


def node_main(env: dict[str, str] | None = None) -> int:
    """One node of the TrainJob (see the module docstring); returns torchrun's exit status."""
    import yaml

    from components.inputs import download_prefix

    env = dict(os.environ if env is None else env)
    work = Path(tempfile.mkdtemp(prefix="lungseg-trainjob-"))
    data, output, params = work / "data", work / "model", work / "params.yaml"
    n = download_prefix(env[DATA_URI_ENV], data)
    print(f"read {n} files from {env[DATA_URI_ENV]}", flush=True)
    sections = {"train": json.loads(env[TRAIN_PARAMS_ENV]), "mlflow": json.loads(env[MLFLOW_PARAMS_ENV])}
    params.write_text(yaml.safe_dump(sections, sort_keys=True), encoding="utf-8")
    rc = subprocess.call(node_command(env, data, output, params), env=env)
    if rc != 0:
        return rc
    if env.get("PET_NODE_RANK", "0") == "0":  # global rank 0 runs on node 0 and wrote the output there
        n = upload_folder(output, env[OUTPUT_URI_ENV])
        print(f"wrote {n} files to {env[OUTPUT_URI_ENV]}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - runs in a TrainJob node
    sys.exit(node_main())
