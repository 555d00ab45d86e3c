"""The train step on more than one GPU: a Kubeflow Trainer ``TrainJob`` manifest, built at compile time.

Why ``TrainJob`` (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``) and not ``PyTorchJob``
(Training Operator v1, ``kubeflow.org/v1``): a Kubeflow platform deployed from the current
manifests installs Kubeflow Trainer by default (its installation guide: "You can skip these steps
if the Kubeflow platform is already deployed using manifests or package distributions, as it
includes Kubeflow Trainer by default"), while the Training Operator v1 is kept on its
``release-1.9`` branch only (its docs page is "Legacy Kubeflow Training Operator (v1)" and the
migration guide maps ``PyTorchJob`` to ``TrainJob`` + the ``torch-distributed`` runtime). The
job is a ``TrainJob`` that references the ``torch-distributed`` ``ClusterTrainingRuntime``
Kubeflow Trainer ships; its torch plugin starts ``numNodes`` pods and gives each the ``PET_*``
variables that ``torchrun`` reads (nodes, processes per node = the GPUs of ``resourcesPerNode``,
node rank, master address and port). ``torchrun`` in turn gives every process ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` — what ``lungseg train``
detects (:mod:`lungseg.training.distributed`).

:func:`train_job_manifest` is the manifest with the run's values left empty (the data and output
URIs, the ``train``/``mlflow`` sections); the pipeline's ``train_distributed_op`` task fills them
in, submits it and waits (:mod:`components.trainjob`). Compiled into the pipeline only when
``nodes × gpus_per_node > 1`` (``lungseg pipeline compile --nodes N --gpus-per-node G``); the
one-GPU pipeline is unchanged. Not run here: there is no cluster (see docs/pipeline.md).
"""

from __future__ import annotations

from typing import Any

from components.trainjob import (
    GPUS_PER_NODE_ENV,
    NODE_COMMAND,
    RUN_VALUES,
    TRAINER_GROUP,
    TRAINER_VERSION,
)

#: the ClusterTrainingRuntime for PyTorch that Kubeflow Trainer installs
TORCH_RUNTIME = "torch-distributed"
JOB_NAME_PREFIX = "lungseg-train-"
#: requests of one node besides its GPUs (the data loader and augmentation run on its CPUs)
CPU_PER_GPU = 4
MEMORY_PER_GPU_GI = 16


def check_shape(nodes: int, gpus_per_node: int) -> None:
    """``nodes`` and ``gpus_per_node`` must be ≥ 1 (a :class:`ConfigError` otherwise)."""
    from lungseg.errors import ConfigError

    for name, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: must be an integer ≥ 1, got {value!r}")


def is_distributed(nodes: int, gpus_per_node: int) -> bool:
    """Whether the train step runs as a ``TrainJob`` (more than one GPU in all)."""
    check_shape(nodes, gpus_per_node)
    return nodes * gpus_per_node > 1


def train_job_manifest(
    *,
    image: str,
    nodes: int,
    gpus_per_node: int,
    mlflow_secret: str,
    mlflow_secret_env: dict[str, str],
    s3_secret: str,
    s3_secret_env: dict[str, str],
    s3_read_env: dict[str, str],
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``TrainJob`` of ``nodes`` pods with ``gpus_per_node`` GPUs each running ``image``.

    Environment of every node: the run's values (:data:`components.trainjob.RUN_VALUES`, empty
    here, filled by the launcher), the GPU count, ``extra_env`` (the image record), the MLflow
    credentials (``username``/``password`` optional, as for the one-GPU step) and the S3
    credentials twice — as MLflow's artifact store and as boto3's endpoint for the data download.
    """
    check_shape(nodes, gpus_per_node)
    env: list[dict[str, Any]] = [{"name": name, "value": ""} for name in RUN_VALUES]
    env.append({"name": GPUS_PER_NODE_ENV, "value": str(gpus_per_node)})
    env += [{"name": k, "value": v} for k, v in sorted((extra_env or {}).items())]
    env += [{"name": "OMP_NUM_THREADS", "value": str(CPU_PER_GPU)}]

    def secret(name: str, key: str, var: str, optional: bool = False) -> dict[str, Any]:
        ref = {"name": name, "key": key, **({"optional": True} if optional else {})}
        return {"name": var, "valueFrom": {"secretKeyRef": ref}}

    env += [secret(mlflow_secret, key, var, optional=key != "tracking_uri") for key, var in mlflow_secret_env.items()]
    env += [secret(s3_secret, key, var) for key, var in s3_secret_env.items()]
    have = {e["name"] for e in env}
    env += [secret(s3_secret, key, var) for key, var in s3_read_env.items() if var not in have]
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "generateName": JOB_NAME_PREFIX,
            "labels": {"app.kubernetes.io/part-of": "lungseg", "lungseg/stage": "train"},
        },
        "spec": {
            "runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": "ClusterTrainingRuntime", "name": TORCH_RUNTIME},
            "trainer": {
                "image": image,
                "command": list(NODE_COMMAND),
                "numNodes": nodes,
                "resourcesPerNode": {
                    "requests": {
                        "cpu": str(CPU_PER_GPU * gpus_per_node),
                        "memory": f"{MEMORY_PER_GPU_GI * gpus_per_node}Gi",
                    },
                    "limits": {"nvidia.com/gpu": str(gpus_per_node)},
                },
                "env": env,
            },
        },
    }


__all__ = ["TORCH_RUNTIME", "check_shape", "is_distributed", "train_job_manifest"]
