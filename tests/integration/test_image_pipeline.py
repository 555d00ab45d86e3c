"""The component image for real: the CPU flavour built from the Dockerfile (scripts/image.py; an image
of the same inputs is reused), and the whole pipeline run in it with kfp.local.DockerRunner
(`lungseg pipeline run-local --runner docker`) against real servers: the raw data read from the
SeaweedFS S3 store (an importer `s3://` URI on a custom endpoint, as a cluster reads it), MLflow
tracking and registry on the MLflow server with its artifacts on that S3.

The pipeline runs pinned by digest, as a cluster would run it: the image is pushed to a real local
registry (`docker-registry`, the Distribution registry packaged by Debian, on 127.0.0.1), its
registry digest recorded, the pipeline compiled with `--image-record` and run with that
`name@sha256:…` reference.

Needs a Docker daemon: DOCKER_HOST (or the default socket), or — as root with dockerd installed —
a private one started here under $LUNGSEG_DOCKER_DIR or .docker/ (kept between sessions, so the
built image is reused), and `docker-registry` for the pinned run. Without them the tests are
skipped saying why; with LUNGSEG_REQUIRE_DOCKER=1 (.ci/run sets it) they fail instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import yaml
from mlflow import MlflowClient
from pipeline_helpers import REPO, tiny_params

SAMPLE = REPO / "data" / "sample" / "medseg-covid100"
REQUIRED = os.environ.get("LUNGSEG_REQUIRE_DOCKER") == "1"


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"LUNGSEG_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def image_script():
    name = "lungseg_scripts_image"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "image.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def docker_host(image_script):
    """A reachable Docker daemon for this module: the caller's, or a private one we start (and stop)."""
    if shutil.which("docker") and image_script.daemon_reachable():
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    if not (shutil.which("dockerd") and shutil.which("docker") and os.geteuid() == 0):
        _unavailable(
            "no Docker daemon answers and none can be started here (needs root and "
            "`apt-get install docker.io`; or set DOCKER_HOST)"
        )
    daemon = image_script.Daemon(os.environ.get("LUNGSEG_DOCKER_DIR", REPO / ".docker"))
    started = not daemon.running()
    daemon.start()
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = daemon.host
    try:
        yield daemon.host
    finally:
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved
        if started:
            daemon.stop()


@pytest.fixture(scope="module")
def cpu_image(image_script, docker_host) -> dict:
    """The CPU image of the current Dockerfile and sources (built, or reused when its inputs match)."""
    return image_script.build("cpu")


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory, docker_host):
    """A real image registry on 127.0.0.1 (plain HTTP: Docker trusts loopback registries), for this module."""
    import time
    import urllib.error
    import urllib.request

    from servers import servers

    exe = shutil.which("docker-registry")
    if exe is None:
        _unavailable(
            "`docker-registry` is not installed (apt-get install docker-registry): the pinned run needs a registry"
        )
    root = tmp_path_factory.mktemp("registry")
    port = servers.free_ports(1)[0]
    config = root / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "http": {"addr": f"127.0.0.1:{port}"},
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
            }
        ),
        encoding="utf-8",
    )
    with open(root / "registry.log", "ab") as log:
        proc = subprocess.Popen(
            [exe, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not start; see {root / 'registry.log'}")
            time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        servers._stop_group(proc)


@pytest.fixture
def run_in_docker(run_lungseg, docker_host):
    """``lungseg pipeline run-local --runner docker --image IMAGE --input INPUT --workdir WORKDIR --params
    PARAMS EXTRA...`` (:func:`run_lungseg`, ``variables`` added to its environment) against this module's daemon."""

    def run(image, input_, workdir, params, *extra, timeout: float = 300, **variables: str):
        return run_lungseg(
            "pipeline",
            "run-local",
            "--runner",
            "docker",
            "--image",
            image,
            "--input",
            input_,
            "--workdir",
            workdir,
            "--params",
            params,
            *extra,
            timeout=timeout,
            DOCKER_HOST=docker_host,
            **variables,
        )

    return run


@pytest.mark.slow
def test_the_image_runs_the_cli_as_uid_1000(cpu_image):
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            cpu_image["tag"],
            "sh",
            "-c",
            "id -u && lungseg --version && python -c 'import torch; print(torch.__version__)' && "
            "python -c 'import pytest' 2>&1 | tail -1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        encoding="utf-8",
    )
    assert out.returncode == 0, out.stderr
    uid, version, torch_version, no_pytest = out.stdout.strip().splitlines()
    assert uid == "1000"
    import lungseg

    assert version == f"lungseg {lungseg.__version__}"
    assert torch_version == "2.13.0+cpu"
    assert "No module named 'pytest'" in no_pytest  # test tools stay out of the image
    assert cpu_image["image_id"].startswith("sha256:") and cpu_image["size_bytes"] > 0


def test_an_image_the_daemon_cannot_get_is_one_line(tmp_path, run_in_docker):
    image = f"lungseg-missing-{uuid.uuid4().hex[:8]}:0"
    run = run_in_docker(image, SAMPLE, tmp_path / "kfp", REPO / "params.yaml")
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: image lungseg-missing-") and "build it with `make image`" in last
    assert not (tmp_path / "kfp").exists()  # nothing was written


@pytest.fixture
def pinned_image(image_script, cpu_image, local_registry) -> str:
    """The CPU image pushed to the local registry: its digest reference, as the build record holds it."""
    record = image_script.record_path("cpu")
    saved = record.read_text(encoding="utf-8")
    pushed = image_script.push("cpu", repository=f"{local_registry}/lungseg")
    ref = pushed["repo_digest"]
    try:
        assert ref.startswith(f"{local_registry}/lungseg@sha256:") and pushed["image_id"] == cpu_image["image_id"]
        yield ref
    finally:
        record.write_text(saved, encoding="utf-8")  # the record keeps no digest of this throw-away registry
        subprocess.run(
            ["docker", "image", "rm", f"{local_registry}/lungseg:{cpu_image['tag'].rsplit(':', 1)[1]}", ref],
            capture_output=True,
            timeout=120,
        )


@pytest.mark.slow
def test_the_pipeline_runs_in_the_image_from_s3_into_the_mlflow_server(
    tmp_path, cpu_image, pinned_image, s3_env, mlflow_server, run_lungseg, run_in_docker
):
    s3 = s3_env
    # compiled for the cluster, every component is pinned to the pushed digest
    compiled = tmp_path / "pinned.yaml"
    compile_run = run_lungseg(
        "pipeline", "compile", "--output", compiled, "--image-record", REPO / ".image" / "cpu.json"
    )
    assert compile_run.returncode == 0, compile_run.stderr
    spec = next(yaml.safe_load_all(compiled.read_text(encoding="utf-8")))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}
    assert images == {pinned_image}
    prefix = f"raw/{uuid.uuid4().hex[:12]}/medseg-covid100"
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file())
    for path in files:
        s3.client().upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(SAMPLE).as_posix()}")
    params_file = tmp_path / "params.yaml"
    params = tiny_params()
    params["register"]["model_name"] = "lsg-image"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    workdir = tmp_path / "kfp"
    # the caller's S3 credentials and endpoint (s3_env) are in the environment, passed on to the containers
    extra = ("--dataset", "medseg", "--tracking-uri", mlflow_server.uri)
    s3_input = f"s3://{s3.bucket}/{prefix}"
    run = run_in_docker(pinned_image, s3_input, workdir, params_file, *extra, timeout=1500, OMP_NUM_THREADS="1")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    # each of the four tasks ran in the pinned image; preprocess read the input from S3 itself
    assert run.stdout.count(f"Found image {pinned_image!r}") == 4, run.stdout[-3000:]
    assert f"read {len(files)} files from s3://{s3.bucket}/{prefix}" in run.stdout
    assert "'decision': 'champion'" in run.stdout and "'runner': 'docker'" in run.stdout

    # the champion is on the MLflow server; its model files are in S3 and load on the host
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    champion = client.get_model_version_by_alias("lsg-image", "champion")
    assert champion.status == "READY"
    run_info = client.get_run(champion.run_id)
    assert run_info.data.tags.get("model") == "lgnet" or run_info.data.params.get("model") == "lgnet"
    keys = [
        o["Key"]
        for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix="mlflow/")
        for o in page.get("Contents", [])
    ]
    assert any(champion.run_id in k for k in keys), "no artifact of the training run in S3"
    assert any(k.endswith("/MLmodel") for k in keys), "the logged model is not in S3"
    import mlflow.pyfunc
    import numpy as np

    from lungseg.tracking import scoped_tracking_uri

    with scoped_tracking_uri(mlflow_server.uri):
        model = mlflow.pyfunc.load_model("models:/lsg-image@champion")  # the portable model training logs
    probs = model.predict(np.zeros((1, 32, 32), np.float32))
    assert probs.shape == (1, 32, 32) and probs.dtype == np.float32 and ((probs >= 0) & (probs <= 1)).all()
    # the containers ran as the caller: the outputs on the host are the caller's files
    decision = next((workdir / "outputs").rglob("decision"))
    assert decision.stat().st_uid == os.getuid()
