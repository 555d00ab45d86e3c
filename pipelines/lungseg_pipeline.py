"""preprocess → train (GPU) → evaluate → register, as a KFP v2 pipeline.

Pipeline parameters: ``input_uri`` (the raw dataset: ``s3://…`` in a cluster, a local folder for
``run-local``), ``dataset`` (reader name), ``data_version`` (the DVC version ``input_uri`` is a staged
copy of, as JSON of :class:`lungseg.lineage.DataVersion`; empty = an unversioned input) and one JSON
string per ``params.yaml`` section (``train_params`` …). The register task records the KFP run id
(it is never cached; putting the run id into a cached task would defeat the cache). Defaults are
the typed defaults of :mod:`lungseg.config` (code, not ``params.yaml``, so the committed YAML only
changes with the code); ``submit``/``run-local`` always pass the sections of the params file.

Kubernetes specifics (ignored by the local runners): the train task asks for one
``nvidia.com/gpu``, is pinned to GPU nodes and tolerates their taint, is retried
(:data:`TRAIN_RETRIES`, exponential backoff) and stopped after :data:`TRAIN_TIMEOUT_S`; the MLflow
tasks get credentials from the Kubernetes secrets :data:`MLFLOW_SECRET` and :data:`S3_SECRET`, and
the preprocess task the S3 credentials it reads an ``s3://`` input with (:data:`S3_READ_ENV`).

:func:`make_pipeline` builds the pipeline for another image (``compile --image``,
``run-local --runner docker``) or for more than one GPU (``compile --nodes N --gpus-per-node G``:
the train task then submits a Kubeflow Trainer ``TrainJob`` of N pods with G GPUs each and waits
for it, :mod:`pipelines.distributed`; with N × G = 1 the pipeline is the one-GPU one, unchanged);
:data:`lungseg_pipeline` is the one for the default image and one GPU.
"""

import json

from kfp import dsl, kubernetes
from kfp.dsl import Dataset

from components import IMAGE, for_image
from lungseg.config import Params

PIPELINE_NAME = "lungseg"
DEFAULTS = {name: json.dumps(section, sort_keys=True) for name, section in Params().to_dict().items()}

#: Kubernetes secret → environment of the MLflow-using tasks (see docs/pipeline.md)
MLFLOW_SECRET = "lungseg-mlflow"
MLFLOW_SECRET_ENV = {
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
}
S3_SECRET = "lungseg-s3"
S3_SECRET_ENV = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "endpoint_url": "MLFLOW_S3_ENDPOINT_URL",
}
#: the same secret → what boto3 reads when preprocess fetches an ``s3://`` input itself
#: (``components.inputs``): the endpoint as ``AWS_ENDPOINT_URL_S3``, which boto3 honours
S3_READ_ENV = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "endpoint_url": "AWS_ENDPOINT_URL_S3",
}
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
GPU_TAINT_KEY = "nvidia.com/gpu"
#: a failed train pod (preempted or drained GPU node, GPU error, OOM kill) is run again, up to this
#: many times, after 5 min, then 10 min (KFP retries the task; training restarts from scratch,
#: as the checkpoint lives in the failed pod's output folder)
TRAIN_RETRIES = 2
TRAIN_RETRY_BACKOFF = ("300s", 2.0, "3600s")
#: the train pod's activeDeadlineSeconds: a hung job (stuck data loader or collective) frees its GPU.
#: One paper-size LG-Net training is ~8 min of H100 time (docs/results.md); 24 h leaves room for
#: thousands of scans while still bounding a hang.
TRAIN_TIMEOUT_S = 24 * 3600


def _with_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # username/password are optional keys: an unauthenticated tracking server needs none
    kubernetes.use_secret_as_env(
        task, secret_name=MLFLOW_SECRET, secret_key_to_env={"tracking_uri": MLFLOW_SECRET_ENV["tracking_uri"]}
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=MLFLOW_SECRET,
        secret_key_to_env={k: v for k, v in MLFLOW_SECRET_ENV.items() if k != "tracking_uri"},
        optional=True,
    )
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_SECRET_ENV)
    return task


#: every task's environment names the image it runs in, which the stages record with their MLflow
#: runs (``lungseg.lineage.IMAGE_ENV``: the tag ``lungseg.image``)
IMAGE_ENV = "LUNGSEG_IMAGE"


def make_pipeline(image: str = IMAGE, *, record_image: bool = True, nodes: int = 1, gpus_per_node: int = 1):
    """The pipeline with every component running in ``image``; ``record_image=False`` for runners
    that do not run the image (``kfp.local.SubprocessRunner``), so no run claims to come from it.
    ``nodes × gpus_per_node > 1``: the train step is a distributed ``TrainJob`` (compile-time
    values: the job's shape is part of the compiled, reviewed pipeline, like the one-GPU step's
    resource requests)."""
    from pipelines.distributed import is_distributed

    distributed = is_distributed(nodes, gpus_per_node)
    ops = for_image(image)
    preprocess_op, train_op, evaluate_op, register_op = (
        ops["preprocess_op"],
        ops["train_op"],
        ops["evaluate_op"],
        ops["register_op"],
    )

    @dsl.pipeline(name=PIPELINE_NAME, description="Lung CT segmentation: preprocess → train → evaluate → register")
    def lungseg_pipeline(
        input_uri: str,
        dataset: str = "medseg",
        preprocess_params: str = DEFAULTS["preprocess"],
        train_params: str = DEFAULTS["train"],
        evaluate_params: str = DEFAULTS["evaluate"],
        register_params: str = DEFAULTS["register"],
        mlflow_params: str = DEFAULTS["mlflow"],
        data_version: str = "",
    ) -> str:
        raw = dsl.importer(artifact_uri=input_uri, artifact_class=Dataset, reimport=False)
        raw.set_display_name("raw data")

        pre = preprocess_op(
            dataset=dataset, raw=raw.output, preprocess_params=preprocess_params, data_version=data_version
        )
        pre.set_display_name("preprocess").set_cpu_request("2").set_memory_request("4G")
        kubernetes.use_secret_as_env(pre, secret_name=S3_SECRET, secret_key_to_env=S3_READ_ENV)

        if distributed:
            train = _distributed_train(ops, pre, train_params, mlflow_params, image, record_image, nodes, gpus_per_node)
        else:
            train = train_op(data=pre.outputs["processed"], train_params=train_params, mlflow_params=mlflow_params)
            train.set_display_name("train").set_cpu_request("4").set_memory_request("16G")
            train.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
            kubernetes.add_node_selector(train, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])
            kubernetes.add_toleration(train, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
        backoff, factor, max_backoff = TRAIN_RETRY_BACKOFF
        train.set_retry(
            num_retries=TRAIN_RETRIES, backoff_duration=backoff, backoff_factor=factor, backoff_max_duration=max_backoff
        )
        kubernetes.set_timeout(train, TRAIN_TIMEOUT_S)
        _with_credentials(train)

        ev = evaluate_op(
            model=train.outputs["model"],
            data=pre.outputs["processed"],
            evaluate_params=evaluate_params,
            mlflow_params=mlflow_params,
        )
        ev.set_display_name("evaluate").set_cpu_request("2").set_memory_request("8G")
        _with_credentials(ev)

        reg = register_op(
            model=train.outputs["model"],
            report=ev.outputs["report"],
            register_params=register_params,
            mlflow_params=mlflow_params,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        reg.set_display_name("register")
        reg.set_caching_options(False)  # a registry side effect: never replayed from the cache
        _with_credentials(reg)
        if record_image:
            for task in (pre, train, ev, reg):
                task.set_env_variable(IMAGE_ENV, image)
        return reg.outputs["Output"]  # "champion" or "challenger"

    return lungseg_pipeline


def _distributed_train(
    ops, pre, train_params, mlflow_params, image: str, record_image: bool, nodes: int, gpus_per_node: int
) -> dsl.PipelineTask:
    """The train task for more than one GPU: a small CPU pod that submits the ``TrainJob`` of
    :func:`pipelines.distributed.train_job_manifest` (its GPUs are the job's, not this pod's),
    waits for it and outputs the same ``model``/``metrics`` as ``train_op``. Retries and the
    timeout are the one-GPU step's (a retry submits a new TrainJob, which trains from scratch)."""
    from pipelines.distributed import train_job_manifest

    manifest = train_job_manifest(
        image=image,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        mlflow_secret=MLFLOW_SECRET,
        mlflow_secret_env=MLFLOW_SECRET_ENV,
        s3_secret=S3_SECRET,
        s3_secret_env=S3_SECRET_ENV,
        s3_read_env=S3_READ_ENV,
        extra_env={IMAGE_ENV: image} if record_image else None,
    )
    train = ops["train_distributed_op"](
        data=pre.outputs["processed"],
        train_params=train_params,
        mlflow_params=mlflow_params,
        job_manifest=json.dumps(manifest, sort_keys=True),
        timeout_s=TRAIN_TIMEOUT_S,
    )
    train.set_display_name(f"train ({nodes}×{gpus_per_node} GPUs, TrainJob)")
    train.set_cpu_request("1").set_memory_request("1G")
    return train


#: the pipeline for the default image (what ``lungseg pipeline compile`` writes without ``--image``)
lungseg_pipeline = make_pipeline()
