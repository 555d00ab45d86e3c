"""What ``lungseg pipeline compile | submit | run-local`` do.

* :func:`compile_pipeline` writes the KFP v2 IR YAML (committed as ``pipelines/lungseg_pipeline.yaml``;
  ``tests/pipelines`` fails when it drifts from the code).
* :func:`submit` sends the pipeline with the params file's sections as arguments to a KFP endpoint
  through ``kfp.Client``.
* :func:`run_local` runs the *same* pipeline function here with ``kfp.local.SubprocessRunner``
  (lightweight components in this Python environment; Kubernetes settings are ignored), with
  KFP's local cache on, so a re-run after a failure resumes at the failed task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lungseg.errors import LungsegError

SECTIONS = ("preprocess", "train", "evaluate", "register", "mlflow")


class PipelineFailed(LungsegError):
    """A pipeline task failed (the message names it); earlier task outputs are kept and cached."""


def pipeline_arguments(params, *, dataset: str, input_uri: str) -> dict[str, Any]:
    """The pipeline's arguments: the input, the reader and one JSON string per params section."""
    sections = params.to_dict()
    args: dict[str, Any] = {"input_uri": input_uri, "dataset": dataset}
    args.update({f"{name}_params": json.dumps(sections[name], sort_keys=True) for name in SECTIONS})
    return args


def compile_pipeline(output: str | Path, *, pipeline_parameters: dict[str, Any] | None = None) -> Path:
    from kfp import compiler

    from pipelines.lungseg_pipeline import lungseg_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(lungseg_pipeline, str(output), pipeline_parameters=pipeline_parameters)
    return output


def submit(params, *, host: str, experiment: str, dataset: str, input_uri: str) -> str:
    """Submit one run to the KFP API at ``host``; returns the run id."""
    import kfp

    from pipelines.lungseg_pipeline import PIPELINE_NAME, lungseg_pipeline

    if not input_uri.startswith(("s3://", "gs://", "minio://", "https://")):
        raise LungsegError(f"--input-uri {input_uri!r}: the cluster cannot read a local path; upload it (s3://…)")
    arguments = pipeline_arguments(params, dataset=dataset, input_uri=input_uri)
    try:
        client = kfp.Client(host=host)
        run = client.create_run_from_pipeline_func(
            lungseg_pipeline,
            arguments=arguments,
            experiment_name=experiment,
            run_name=f"{PIPELINE_NAME}-{params.train.model}",
            enable_caching=True,
        )
    except Exception as exc:  # kfp/kfp_server_api/urllib3 raise many unrelated types for "unreachable"
        if isinstance(exc, LungsegError):
            raise
        raise PipelineFailed(f"could not submit to Kubeflow Pipelines at {host}: {type(exc).__name__}: {exc}") from exc
    return run.run_id


def run_local(params, *, dataset: str, input_dir: str | Path, workdir: str | Path) -> dict[str, Any]:
    """Run the pipeline with ``kfp.local.SubprocessRunner(use_venv=False)`` in ``workdir``.

    Task outputs go under ``workdir/outputs``; the local cache (``workdir/cache``) makes a re-run
    skip every task whose inputs and parameters are unchanged. MLflow goes where
    ``MLFLOW_TRACKING_URI`` (or ``params.mlflow.tracking_uri``) says; a relative sqlite URI is
    relative to the current folder, as for ``dvc repro``.
    """
    from kfp import local

    from pipelines.lungseg_pipeline import lungseg_pipeline

    input_dir = Path(input_dir).resolve()
    if not input_dir.is_dir():
        raise LungsegError(f"{input_dir}: raw dataset folder not found")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workdir / "outputs"),
        enable_caching=True,
        cache_root=str(workdir / "cache"),
        raise_on_error=True,
    )
    arguments = pipeline_arguments(params, dataset=dataset, input_uri=str(input_dir))
    before = set((workdir / "outputs").glob("*")) if (workdir / "outputs").is_dir() else set()
    handler = _show_cache_hits()
    try:
        task = lungseg_pipeline(**arguments)
    except RuntimeError as exc:
        raise PipelineFailed(f"{exc} (task logs above; outputs of the tasks that succeeded are in "
                             f"{workdir / 'outputs'} and cached for the re-run)") from exc  # fmt: skip
    finally:
        logging.getLogger().removeHandler(handler)
    new = sorted(set((workdir / "outputs").glob("*")) - before)
    return {"decision": task.output, "run_dir": str(new[-1]) if new else None}


class _CacheHitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "cache hit" in record.getMessage()


def _show_cache_hits() -> logging.Handler:
    """KFP logs a task served from the local cache at INFO on the root logger: show just those."""
    handler = logging.StreamHandler()
    handler.addFilter(_CacheHitFilter())
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler
