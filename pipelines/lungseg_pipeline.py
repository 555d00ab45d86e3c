"""preprocess → train (GPU) → evaluate → register, as a KFP v2 pipeline.

Pipeline parameters: ``input_uri`` (the raw dataset: ``s3://…`` in a cluster, a local folder for
``run-local``), ``dataset`` (reader name) and one JSON string per ``params.yaml`` section (``train_params`` …). Defaults are
the typed defaults of :mod:`lungseg.config` (code, not ``params.yaml``, so the committed YAML only
changes with the code); ``submit``/``run-local`` always pass the sections of the params file.

Kubernetes specifics (ignored by the local runner): the train task asks for one
``nvidia.com/gpu``, is pinned to GPU nodes and tolerates their taint; the MLflow tasks get
credentials from the Kubernetes secrets :data:`MLFLOW_SECRET` and :data:`S3_SECRET`.
"""


import json

from kfp import dsl, kubernetes
from kfp.dsl import Dataset

from components import evaluate_op, preprocess_op, register_op, train_op
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
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
GPU_TAINT_KEY = "nvidia.com/gpu"


def _with_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # username/password are optional keys: an unauthenticated tracking server needs none
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env={"tracking_uri": MLFLOW_SECRET_ENV["tracking_uri"]})
    kubernetes.use_secret_as_env(
        task, secret_name=MLFLOW_SECRET,
        secret_key_to_env={k: v for k, v in MLFLOW_SECRET_ENV.items() if k != "tracking_uri"}, optional=True,
    )  # fmt: skip
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_SECRET_ENV)
    return task


@dsl.pipeline(name=PIPELINE_NAME, description="Lung CT segmentation: preprocess → train → evaluate → register")
def lungseg_pipeline(
    input_uri: str,
    dataset: str = "medseg",
    preprocess_params: str = DEFAULTS["preprocess"],
    train_params: str = DEFAULTS["train"],
    evaluate_params: str = DEFAULTS["evaluate"],
    register_params: str = DEFAULTS["register"],
    mlflow_params: str = DEFAULTS["mlflow"],
) -> str:
    raw = dsl.importer(artifact_uri=input_uri, artifact_class=Dataset, reimport=False)
    raw.set_display_name("raw data")

    pre = preprocess_op(dataset=dataset, raw=raw.output, preprocess_params=preprocess_params)
    pre.set_display_name("preprocess").set_cpu_request("2").set_memory_request("4G")

    train = train_op(data=pre.outputs["processed"], train_params=train_params, mlflow_params=mlflow_params)
    train.set_display_name("train").set_cpu_request("4").set_memory_request("16G")
    train.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    kubernetes.add_node_selector(train, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])
    kubernetes.add_toleration(train, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
    _with_credentials(train)

    ev = evaluate_op(model=train.outputs["model"], data=pre.outputs["processed"], evaluate_params=evaluate_params,
                     mlflow_params=mlflow_params)  # fmt: skip
    ev.set_display_name("evaluate").set_cpu_request("2").set_memory_request("8G")
    _with_credentials(ev)

    reg = register_op(model=train.outputs["model"], report=ev.outputs["report"], register_params=register_params,
                      mlflow_params=mlflow_params)  # fmt: skip
    reg.set_display_name("register")
    reg.set_caching_options(False)  # a registry side effect: never replayed from the cache
    _with_credentials(reg)
    return reg.outputs["Output"]  # "champion" or "challenger"
