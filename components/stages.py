"""The four stages as lightweight components. Each: typed artifacts in/out, the stage's own
``params.yaml`` section as a JSON-string parameter (JSON, not a KFP ``dict``: KFP carries dicts
as protobuf Structs, which turn every integer into a float that the typed config rightly rejects) (so KFP
caching, like DVC, re-runs a stage only
when its section or its inputs change), one library call, and a one-line ``error: ...`` + exit 2
for user errors (the same contract as the CLI).

``train_distributed_op`` replaces ``train_op`` when the pipeline is compiled for more than one GPU
(a Kubeflow Trainer ``TrainJob``: :mod:`components.trainjob`, :mod:`pipelines.distributed`).

The components are made for :data:`components.image.IMAGE`; :func:`for_image` makes the same ones
for another image (``lungseg pipeline compile --image``, ``run-local --runner docker``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess_op(
    dataset: str, raw: Input[Dataset], preprocess_params: str, processed: Output[Dataset], data_version: str = ""
):
    """Raw CT data → the canonical processed folder (``lungseg.data.preprocess.preprocess``).
    An ``s3://`` input that the runner did not download is read with boto3 (``components.inputs``).
    ``data_version``: the DVC version (JSON of ``lungseg.lineage.DataVersion``) the run was started
    for — the input must hash to it — or empty for an unversioned input."""
    import json

    from components.inputs import local_folder
    from components.runtime import run_stage, stage_params
    from lungseg.data.preprocess import preprocess

    def call():
        params = stage_params(preprocess=preprocess_params)
        with local_folder(raw.uri, raw.path) as raw_dir:
            return preprocess(
                dataset,
                raw_dir,
                processed.path,
                params.preprocess,
                data_version=json.loads(data_version) if data_version else None,
            )

    summary = run_stage(call)
    processed.metadata["dataset"] = dataset
    print(summary.describe())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(
    data: Input[Dataset], train_params: str, mlflow_params: str, model: Output[Model], metrics: Output[Metrics]
):
    """Train on the processed set (``lungseg.training.train``), tracked in MLflow."""
    from pathlib import Path

    from components.runtime import publish_metrics, run_stage, stage_params
    from lungseg.artifacts.run_file import RUN_FILE, RunFile
    from lungseg.training import train

    params = run_stage(lambda: stage_params(train=train_params, mlflow=mlflow_params))
    result = run_stage(lambda: train(params, data_dir=data.path, output_dir=model.path))
    out = Path(model.path)
    publish_metrics(metrics, out / "train_metrics.json")
    run = RunFile.from_file(out / RUN_FILE)
    model.metadata.update({"model": params.train.model, "mlflow_run_id": run.run_id, "model_uri": run.model_uri})
    print(result.describe())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_distributed_op(
    data: Input[Dataset],
    train_params: str,
    mlflow_params: str,
    job_manifest: str,
    model: Output[Model],
    metrics: Output[Metrics],
    timeout_s: int = 86400,
):
    """Train on several GPUs/nodes: the Kubeflow Trainer ``TrainJob`` of ``job_manifest`` (built by
    ``pipelines.distributed``) runs ``torchrun -m lungseg.cli train`` on every node
    (``components.trainjob``); this task fills in the run's values, submits it, waits, and fetches
    the output (written by rank 0) into ``model`` — the same folder ``train_op`` produces."""
    import json
    from pathlib import Path

    from components.inputs import download_prefix
    from components.runtime import publish_metrics, run_stage, stage_params
    from components.trainjob import (
        DATA_URI_ENV,
        MLFLOW_PARAMS_ENV,
        OUTPUT_URI_ENV,
        TRAIN_PARAMS_ENV,
        JobFailed,
        fill,
        submit_and_wait,
    )
    from lungseg.artifacts.run_file import RUN_FILE, RunFile

    params = run_stage(lambda: stage_params(train=train_params, mlflow=mlflow_params))  # before any GPU is asked for
    staging = model.uri.rstrip("/") + ".trainjob"
    job = fill(
        json.loads(job_manifest),
        {
            DATA_URI_ENV: data.uri,
            OUTPUT_URI_ENV: staging,
            TRAIN_PARAMS_ENV: train_params,
            MLFLOW_PARAMS_ENV: mlflow_params,
        },
    )
    try:
        submit_and_wait(job, timeout_s=timeout_s)
    except JobFailed as exc:
        print(f"error: {exc}")
        raise SystemExit(1) from exc
    run_stage(lambda: download_prefix(staging, model.path))
    out = Path(model.path)
    publish_metrics(metrics, out / "train_metrics.json")
    run = RunFile.from_file(out / RUN_FILE)
    model.metadata.update({"model": params.train.model, "mlflow_run_id": run.run_id, "model_uri": run.model_uri})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    model: Input[Model],
    data: Input[Dataset],
    evaluate_params: str,
    mlflow_params: str,
    report: Output[dsl.Artifact],
    metrics: Output[Metrics],
):
    """Per-image metrics, summary and figures (``lungseg.evaluation.evaluate``)."""
    from pathlib import Path

    from components.runtime import publish_metrics, run_stage, stage_params
    from lungseg.evaluation import evaluate

    params = run_stage(lambda: stage_params(evaluate=evaluate_params, mlflow=mlflow_params))
    result = run_stage(lambda: evaluate(params, model_dir=model.path, data_dir=data.path, output_dir=report.path))
    publish_metrics(metrics, Path(report.path) / "metrics.json")
    print(result.describe())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(
    model: Input[Model],
    report: Input[dsl.Artifact],
    register_params: str,
    mlflow_params: str,
    decision: Output[dsl.Artifact],
    kfp_run_id: str = "",
) -> str:
    """Register the version; ``champion`` moves only if it is better (``lungseg.registry.register``).
    Returns the decision (``champion`` or ``challenger``). ``kfp_run_id`` (the pipeline run's id;
    this task is never cached) is recorded on the version (``lungseg.lineage.KFP_RUN_ENV``)."""
    import os

    from components.runtime import run_stage, stage_params
    from lungseg.lineage import KFP_RUN_ENV
    from lungseg.registry import register

    if kfp_run_id:
        os.environ[KFP_RUN_ENV] = kfp_run_id
    params = run_stage(lambda: stage_params(register=register_params, mlflow=mlflow_params))
    result = run_stage(lambda: register(params, model_dir=model.path, evaluation_dir=report.path, output=decision.path))
    decision.metadata.update({"version": result.version, "decision": result.decision, "alias": result.alias})
    print(result.describe())
    return result.decision


STAGES = {
    "preprocess_op": preprocess_op,
    "train_op": train_op,
    "train_distributed_op": train_distributed_op,
    "evaluate_op": evaluate_op,
    "register_op": register_op,
}


def for_image(image: str) -> dict[str, PythonComponent]:
    """The components (same names, same code) running in ``image`` instead of :data:`IMAGE`."""
    if image == IMAGE:
        return dict(STAGES)
    return {
        name: dsl.component(comp.python_func, base_image=image, install_kfp_package=False)
        for name, comp in STAGES.items()
    }
