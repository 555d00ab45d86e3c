"""What ``lungseg pipeline compile | submit | run-local`` do.

* :func:`compile_pipeline` writes the KFP v2 IR YAML (committed as ``pipelines/lungseg_pipeline.yaml``;
  ``tests/pipelines`` fails when it drifts from the code), optionally for another image — pinned
  by digest (``--image name@sha256:…`` or ``--image-record`` of a pushed build).
* :func:`submit` sends the pipeline with the params file's sections as arguments to a KFP endpoint
  through ``kfp.Client``.
* Input: a DVC version (``--data path@rev``: resolved with DVC's API and staged as an immutable,
  content-addressed copy — :func:`stage_data`, :mod:`lungseg.lineage` — whose version every stage
  records) or a plain folder / ``s3://`` prefix (recorded as unversioned).
* :func:`run_local` runs the *same* pipeline here, with KFP's local cache on (a re-run after a
  failure resumes at the failed task), either as subprocesses of this Python environment
  (``kfp.local.SubprocessRunner``) or in the component image (``kfp.local.DockerRunner``).
  A local run is a *trial*: unless ``tracking_uri`` is given it tracks and registers into its own
  MLflow store ``WORKDIR/mlflow.db`` — never the store of ``MLFLOW_TRACKING_URI`` or
  ``mlflow.tracking_uri``, so it cannot move the production ``champion``.

What it reports goes to the ``pipelines.ops`` logger (the command line prints it on stderr).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lungseg.envvars import scoped_environ
from lungseg.errors import ConfigError, LungsegError

log = logging.getLogger(__name__)

SECTIONS = ("preprocess", "train", "evaluate", "register", "mlflow")
RUNNERS = ("subprocess", "docker")
#: where ``submit --data`` stages a DVC version for the cluster (``<prefix>/<DVC hash>/``)
DEFAULT_STAGE_URI = "s3://lungseg/staged"
#: the trial run's own MLflow store and artifact folder, inside the work folder
TRIAL_STORE = "mlflow.db"
TRIAL_ARTIFACTS = "mlartifacts"
#: passed from the caller's environment into the containers of the docker runner (the cluster
#: gets the same variables from Kubernetes secrets): S3 and MLflow credentials, thread counts
CONTAINER_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


class PipelineFailed(LungsegError):
    """A pipeline task failed (the message names it); earlier task outputs are kept and cached."""


def pipeline_arguments(params, *, dataset: str, input_uri: str, data_version=None) -> dict[str, Any]:
    """The pipeline's arguments: the input, the reader, the input's data version (JSON; empty when
    unversioned) and one JSON string per params section."""
    sections = params.written()  # the keys the file wrote: the paper preset decides by them
    args: dict[str, Any] = {
        "input_uri": input_uri,
        "dataset": dataset,
        "data_version": json.dumps(data_version.to_dict(), sort_keys=True) if data_version else "",
    }
    args.update({f"{name}_params": json.dumps(sections[name], sort_keys=True) for name in SECTIONS})
    return args


def resolve_image(image: str | None = None, image_record: str | Path | None = None) -> str | None:
    """The image a compile/submit asks for: ``image`` (checked), the pushed digest in
    ``image_record``, or None (the default image)."""
    from components.image import check_reference, reference_from_record

    if image and image_record:
        raise ConfigError("--image and --image-record: give one of them")
    if image_record:
        return reference_from_record(image_record)
    return check_reference(image) if image else None


def _pipeline(image: str | None, nodes: int = 1, gpus_per_node: int = 1):
    """The pipeline for ``image`` (None: the default) and ``nodes × gpus_per_node`` GPUs
    (more than one: the train step is a Kubeflow Trainer ``TrainJob``, :mod:`pipelines.distributed`)."""
    from pipelines.lungseg_pipeline import lungseg_pipeline, make_pipeline

    if nodes * gpus_per_node != 1 or image:
        from components.image import IMAGE

        return make_pipeline(image or IMAGE, nodes=nodes, gpus_per_node=gpus_per_node)
    return lungseg_pipeline


def compile_pipeline(
    output: str | Path,
    *,
    pipeline_parameters: dict[str, Any] | None = None,
    image: str | None = None,
    nodes: int = 1,
    gpus_per_node: int = 1,
) -> Path:
    from kfp import compiler

    from pipelines.distributed import check_shape

    check_shape(nodes, gpus_per_node)  # before anything is written
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        _pipeline(image, nodes, gpus_per_node), str(output), pipeline_parameters=pipeline_parameters
    )
    return output


def stage_data(data: str, target: str | Path, repo: str | Path = "."):
    """``path@rev`` of the DVC/git repository ``repo`` → its version staged at ``target``
    (:func:`lungseg.lineage.stage`: content-addressed, reused when already there)."""
    from lungseg import lineage

    version = lineage.resolve(data, repo)
    staged = lineage.stage(version, target, repo)
    log.info("data %s = %s → %s", version.spec(), version.md5, staged.staged_uri)
    return staged


def submit(
    params,
    *,
    host: str,
    experiment: str,
    dataset: str,
    input_uri: str | None = None,
    image: str | None = None,
    data: str | None = None,
    repo: str | Path = ".",
    stage_uri: str = DEFAULT_STAGE_URI,
    nodes: int = 1,
    gpus_per_node: int = 1,
) -> str:
    """Submit one run to the KFP API at ``host``; returns the run id. The input is either a DVC
    version ``data`` (``path@rev``, staged under ``stage_uri`` first) or a plain ``input_uri``
    (recorded as unversioned)."""
    import kfp

    from pipelines.distributed import check_shape
    from pipelines.lungseg_pipeline import PIPELINE_NAME

    check_shape(nodes, gpus_per_node)
    version = None
    if data is not None:
        if not stage_uri.startswith("s3://"):
            raise ConfigError(f"--stage-uri {stage_uri!r}: the cluster reads staged data from S3 (s3://bucket/prefix)")
        version = stage_data(data, stage_uri, repo)
        input_uri = version.staged_uri
    if not input_uri or not input_uri.startswith(("s3://", "gs://", "minio://", "https://")):
        raise LungsegError(f"--input-uri {input_uri!r}: the cluster cannot read a local path; upload it (s3://…)")
    arguments = pipeline_arguments(params, dataset=dataset, input_uri=input_uri, data_version=version)
    try:
        client = kfp.Client(host=host)
        run = client.create_run_from_pipeline_func(
            _pipeline(image, nodes, gpus_per_node),
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


# ------------------------------------------------------------------------------------ run-local
def trial_tracking_uri(workdir: str | Path) -> str:
    """The trial run's own MLflow store: ``sqlite:///WORKDIR/mlflow.db``."""
    return f"sqlite:///{Path(workdir).resolve() / TRIAL_STORE}"


def _local_store_file(uri: str) -> Path | None:
    """The database file of a local (sqlite) store; None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


def prepare_store(uri: str, experiment: str) -> list[str]:
    """Make sure ``experiment`` exists in ``uri`` and return the local folders its artifacts go to.

    For a local (sqlite) store, the artifacts stay beside the store (``<store folder>/mlartifacts``)
    rather than in whatever folder a component runs in — a container's would vanish with it: a new
    store is created with that default artifact root (MLflow's ``Default`` experiment, where
    ``log_model`` puts logged models, included), a new experiment gets it too. Returns the local
    artifact folders of ``experiment`` and ``Default`` (the docker runner mounts them)."""
    from urllib.parse import urlparse

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from lungseg.tracking import short_http_retries

    db = _local_store_file(uri)
    folder = db.parent if db is not None else None
    root = folder / TRIAL_ARTIFACTS if folder is not None else None
    try:
        # a server that is down fails in seconds, not after MLflow's minutes of retries (as in training)
        with short_http_retries():
            if db is not None and not db.exists():
                from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

                folder.mkdir(parents=True, exist_ok=True)
                SqlAlchemyStore(uri, root.as_uri())  # creates the schema and the Default experiment
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                client.create_experiment(experiment, artifact_location=root.as_uri() if root is not None else None)
                exp = client.get_experiment_by_name(experiment)
            locations = [exp.artifact_location, client.get_experiment("0").artifact_location]
    except MlflowException as exc:
        raise PipelineFailed(f"MLflow store {uri}: {exc.message}") from exc
    local_dirs = []
    for loc in locations:
        if loc and loc.startswith("file:"):
            local_dirs.append(urlparse(loc).path)
        elif loc and loc.startswith("/"):
            local_dirs.append(loc)
    return local_dirs


def run_local(
    params,
    *,
    dataset: str,
    input_dir: str | Path | None = None,
    workdir: str | Path,
    runner: str = "subprocess",
    image: str | None = None,
    tracking_uri: str | None = None,
    data: str | None = None,
    repo: str | Path = ".",
    stage_uri: str | None = None,
) -> dict[str, Any]:
    """Run the pipeline in ``workdir`` with the ``subprocess`` or ``docker`` runner.

    The input: ``data`` = a DVC version ``path@rev`` of ``repo``, staged first under ``stage_uri``
    (default ``WORKDIR/data``; an ``s3://`` prefix stages it there, as for a cluster) and recorded
    with every run; or ``input_dir`` = a local folder or an ``s3://`` prefix (read by the preprocess
    component with boto3 from ``AWS_*``/``AWS_ENDPOINT_URL_S3``), recorded as unversioned. Task outputs go
    under ``workdir/outputs``; the
    local cache (``workdir/cache``) makes a re-run skip every task whose inputs and parameters are
    unchanged. MLflow: ``tracking_uri`` if given (a relative sqlite path is relative to the current
    folder), else the trial store :func:`trial_tracking_uri`.
    """
    from kfp import local

    from lungseg.tracking import absolute_sqlite

    if runner not in RUNNERS:
        raise ConfigError(f"--runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    if (data is None) == (input_dir is None):
        raise ConfigError("give the input as --data PATH@REV (a DVC version) or --input FOLDER|s3://…, not both")
    version = None
    if data is not None:
        version = stage_data(data, stage_uri or Path(workdir).resolve() / "data", repo)
        input_dir = version.staged_uri
    input_uri = str(input_dir)
    if not input_uri.startswith("s3://"):
        path = Path(input_dir).resolve()
        if not path.is_dir():
            raise LungsegError(f"{path}: raw dataset folder not found")
        input_uri = str(path)
    workdir = Path(workdir).resolve()
    trial = tracking_uri is None
    uri = trial_tracking_uri(workdir) if trial else absolute_sqlite(tracking_uri)
    params = params.model_copy(update={"mlflow": params.mlflow.model_copy(update={"tracking_uri": uri})})
    if runner == "docker":
        from components.image import CPU_IMAGE, check_reference

        image = check_reference(image or CPU_IMAGE)
        _check_docker(image)  # before anything is written
    elif image:
        raise ConfigError("--image: only the docker runner runs an image")
    workdir.mkdir(parents=True, exist_ok=True)
    artifact_dirs = prepare_store(uri, params.mlflow.experiment)
    if runner == "docker":
        task_runner = _docker_runner(image, workdir, input_uri, uri, artifact_dirs)
    else:
        task_runner = local.SubprocessRunner(use_venv=False)
    local.init(
        runner=task_runner,
        pipeline_root=str(workdir / "outputs"),
        enable_caching=True,
        cache_root=str(workdir / "cache"),
        raise_on_error=True,
    )
    if runner == "docker":
        pipeline = _pipeline(image)
    else:  # the components run here, not in an image: no run may record one
        from pipelines.lungseg_pipeline import make_pipeline

        pipeline = make_pipeline(record_image=False)
    arguments = pipeline_arguments(params, dataset=dataset, input_uri=input_uri, data_version=version)
    before = set((workdir / "outputs").glob("*")) if (workdir / "outputs").is_dir() else set()
    handler = _show_cache_hits()
    try:
        # the subprocess runner's components inherit this environment: the store chosen above wins
        with scoped_environ({"MLFLOW_TRACKING_URI": uri}):
            task = pipeline(**arguments)
    except RuntimeError as exc:
        raise PipelineFailed(
            f"{exc} (task logs above; outputs of the tasks that succeeded are in "
            f"{workdir / 'outputs'} and cached for the re-run)"
        ) from exc
    finally:
        logging.getLogger().removeHandler(handler)
    new = sorted(set((workdir / "outputs").glob("*")) - before)
    return {
        "decision": task.output,
        "run_dir": str(new[-1]) if new else None,
        "tracking_uri": uri,
        "trial_store": trial,
        "runner": runner,
        "image": image if runner == "docker" else None,
        "data_version": version.to_dict() if version else None,
    }


def _check_docker(image: str) -> None:
    """A Docker daemon answers and has ``image`` (pulled when it can be); else a one-line error."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker raises DockerException, requests' and urllib3's errors
        raise PipelineFailed(
            f"--runner docker: no Docker daemon answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'default')}): {exc}"
        ) from exc
    try:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            try:
                client.images.pull(image)
            except docker.errors.APIError as exc:
                raise PipelineFailed(
                    f"image {image}: not on this Docker daemon and cannot be pulled "
                    f"({exc.explanation or exc}); build it with `make image`"
                ) from exc
    finally:
        client.close()


def _docker_runner(image: str, workdir: Path, input_uri: str, tracking_uri: str, artifact_dirs: list[str]):
    """``kfp.local.DockerRunner`` for ``image``: host network (the MLflow and S3 servers of the host
    are reachable), the caller's uid (outputs stay the caller's files), and bind mounts at the same
    paths for everything the tasks read or write besides the pipeline root (which KFP mounts):
    the work folder, a local raw input (read-only) and a local MLflow store with its artifacts."""
    from docker.types import Mount
    from kfp import local

    binds: dict[str, bool] = {str(workdir): False}  # path → read-only
    if not input_uri.startswith("s3://"):
        binds[input_uri] = True
    db = _local_store_file(tracking_uri)
    if db is not None:
        binds.setdefault(str(db.parent), False)
    for folder in artifact_dirs:
        binds.setdefault(folder, False)
    for path in list(binds):
        Path(path).mkdir(parents=True, exist_ok=True)
    # a writable folder inside another writable mount is already there
    keep = {
        p: ro
        for p, ro in binds.items()
        if ro or not any(q != p and not binds[q] and Path(q) in Path(p).parents for q in binds)
    }
    mounts = [Mount(target=p, source=p, type="bind", read_only=ro) for p, ro in sorted(keep.items())]
    env = {k: os.environ[k] for k in CONTAINER_ENV if os.environ.get(k)}
    env.update(HOME="/tmp", MLFLOW_TRACKING_URI=tracking_uri, PYTHONUTF8="1", MLFLOW_DISABLE_TELEMETRY="true")
    return local.DockerRunner(
        network_mode="host",
        user=f"{os.getuid()}:{os.getgid()}",
        mounts=mounts,
        environment=env,
        working_dir=str(workdir),
    )


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
