"""The compiled KFP pipeline: committed YAML in sync with the code, GPU/secrets/caching settings,
and the arguments `lungseg pipeline submit` sends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lungseg.config import load_params
from pipelines import ops
from pipelines.lungseg_pipeline import (
    GPU_NODE_LABEL,
    MLFLOW_SECRET,
    S3_READ_ENV,
    S3_SECRET,
    TRAIN_RETRIES,
    TRAIN_RETRY_BACKOFF,
    TRAIN_TIMEOUT_S,
)

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "pipelines" / "lungseg_pipeline.yaml"
DEFAULT_IMAGE = "ghcr.io/lungseg/lungseg:0.1.0"


def _load(path: Path) -> dict:
    """The pipeline spec and the Kubernetes platform spec (two YAML documents), merged."""
    doc: dict = {}
    for part in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        doc.update(part)
    return doc


def _compile_in_subprocess(out: Path, image: str | None = None, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LUNGSEG_IMAGE"}
    if image:
        env["LUNGSEG_IMAGE"] = image
    subprocess.run(
        [sys.executable, "-m", "lungseg.cli", "pipeline", "compile", "--output", str(out), *extra],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    return _load(out)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    return {"doc": _compile_in_subprocess(out), "path": out}


@pytest.mark.slow
def test_committed_yaml_matches_the_code(spec):
    assert COMMITTED.is_file(), "run `lungseg pipeline compile` and commit pipelines/lungseg_pipeline.yaml"
    assert _load(COMMITTED) == spec["doc"], (
        "pipelines/lungseg_pipeline.yaml is stale: run `lungseg pipeline compile` and commit it"
    )


def _executors(doc):
    return doc["deploymentSpec"]["executors"]


def _k8s(doc):
    return doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_stages_are_chained_through_artifacts(spec):
    tasks = spec["doc"]["root"]["dag"]["tasks"]
    assert set(tasks) == {"importer", "preprocess-op", "train-op", "evaluate-op", "register-op"}
    assert tasks["train-op"]["dependentTasks"] == ["preprocess-op"]
    assert set(tasks["evaluate-op"]["dependentTasks"]) == {"preprocess-op", "train-op"}
    assert set(tasks["register-op"]["dependentTasks"]) == {"evaluate-op", "train-op"}
    train_in = tasks["train-op"]["inputs"]["artifacts"]["data"]["taskOutputArtifact"]
    assert train_in == {"outputArtifactKey": "processed", "producerTask": "preprocess-op"}
    # each stage receives only its own params section (+ mlflow), like the DVC stages
    assert set(tasks["train-op"]["inputs"]["parameters"]) == {"train_params", "mlflow_params"}
    assert set(tasks["preprocess-op"]["inputs"]["parameters"]) == {"dataset", "preprocess_params", "data_version"}
    # the KFP run id goes to the register task alone: it is never cached, the others would never hit
    reg_params = tasks["register-op"]["inputs"]["parameters"]
    assert reg_params["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert not any(
        "kfp_run_id" in tasks[t]["inputs"]["parameters"] for t in ("preprocess-op", "train-op", "evaluate-op")
    )
    # the registry has side effects: never replayed from the cache; the rest is cached
    assert not tasks["register-op"]["cachingOptions"].get("enableCache", False)
    assert tasks["train-op"]["cachingOptions"]["enableCache"] is True


def test_every_component_runs_the_project_image_and_imports_lungseg(spec):
    execs = {k: v for k, v in _executors(spec["doc"]).items() if k != "exec-importer"}
    assert len(execs) == 4
    calls = {
        "exec-preprocess-op": "from lungseg.data.preprocess import preprocess",
        "exec-train-op": "from lungseg.training import train",
        "exec-evaluate-op": "from lungseg.evaluation import evaluate",
        "exec-register-op": "from lungseg.registry import register",
    }
    for name, ex in execs.items():
        container = ex["container"]
        assert container["image"] == DEFAULT_IMAGE
        source = "\n".join(container["command"])
        assert calls[name] in source
        assert "pip install" not in source, "the image already has kfp: nothing is installed at run time"


def test_train_asks_for_a_gpu_node(spec):
    acc = _executors(spec["doc"])["exec-train-op"]["container"]["resources"]["accelerator"]
    assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    train = _k8s(spec["doc"])["exec-train-op"]
    assert train["nodeSelector"]["labels"] == {GPU_NODE_LABEL[0]: GPU_NODE_LABEL[1]}
    assert train["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    for other in ("exec-preprocess-op", "exec-evaluate-op", "exec-register-op"):
        assert "accelerator" not in _executors(spec["doc"])[other]["container"].get("resources", {})


def test_gpu_step_is_retried_and_bounded_in_time(spec):
    """A preempted or failed GPU pod is retried with backoff; a hung one is stopped (activeDeadlineSeconds)."""
    tasks = spec["doc"]["root"]["dag"]["tasks"]
    retry = tasks["train-op"]["retryPolicy"]
    assert retry["maxRetryCount"] == TRAIN_RETRIES >= 1
    assert (retry["backoffDuration"], retry["backoffFactor"], retry["backoffMaxDuration"]) == TRAIN_RETRY_BACKOFF
    assert int(_k8s(spec["doc"])["exec-train-op"]["activeDeadlineSeconds"]) == TRAIN_TIMEOUT_S
    for other in ("preprocess-op", "evaluate-op", "register-op"):
        assert "retryPolicy" not in tasks[other]  # register has registry side effects: never blindly re-run
        assert "activeDeadlineSeconds" not in _k8s(spec["doc"]).get(f"exec-{other}", {})


def _secret_env(k8s: dict, executor: str) -> dict[str, tuple[str, str]]:
    """env var → (secret name, secret key) of one executor."""
    return {e["envVar"]: (s["secretName"], e["secretKey"]) for s in k8s[executor]["secretAsEnv"] for e in s["keyToEnv"]}


def test_credentials_come_from_kubernetes_secrets_only(spec):
    k8s = _k8s(spec["doc"])
    for name in ("exec-train-op", "exec-evaluate-op", "exec-register-op"):
        envs = _secret_env(k8s, name)
        assert envs["MLFLOW_TRACKING_URI"][0] == MLFLOW_SECRET
        assert envs["AWS_ACCESS_KEY_ID"][0] == envs["AWS_SECRET_ACCESS_KEY"][0] == S3_SECRET
    # preprocess reads an s3:// input with boto3: S3 credentials and endpoint only, no MLflow ones
    pre = _secret_env(k8s, "exec-preprocess-op")
    assert pre == {env: (S3_SECRET, key) for key, env in S3_READ_ENV.items()}
    assert pre["AWS_ENDPOINT_URL_S3"] == (S3_SECRET, "endpoint_url")  # the variable boto3 reads for S3
    for ex in _executors(spec["doc"]).values():
        env = ex.get("container", {}).get("env", [])
        assert not [e for e in env if "KEY" in e["name"] or "PASSWORD" in e["name"] or "AWS" in e["name"]], env


def _images(doc) -> set[str]:
    return {ex["container"]["image"] for k, ex in _executors(doc).items() if k != "exec-importer"}


@pytest.mark.slow
def test_image_name_is_configurable_at_compile_time(tmp_path):
    doc = _compile_in_subprocess(tmp_path / "p.yaml", image="registry.example:5000/lungseg:dev")
    assert _images(doc) == {"registry.example:5000/lungseg:dev"}


DIGEST_REF = "registry.example:5000/lungseg@sha256:" + "5e" * 32


@pytest.mark.slow
def test_compile_pins_every_component_to_an_image_digest(tmp_path, spec):
    doc = _compile_in_subprocess(tmp_path / "pinned.yaml", None, "--image", DIGEST_REF)
    assert _images(doc) == {DIGEST_REF}
    # only the image differs from the default compile (and the environment naming it)
    for executor in _executors(doc).values():
        if "container" in executor:
            executor["container"]["image"] = DEFAULT_IMAGE
            executor["container"]["env"] = [{"name": "LUNGSEG_IMAGE", "value": DEFAULT_IMAGE}]
    assert doc == spec["doc"]


@pytest.mark.slow
def test_compile_pins_the_digest_of_a_pushed_build(tmp_path):
    record = tmp_path / "cuda.json"
    record.write_text(json.dumps({"tag": DEFAULT_IMAGE, "repo_digest": DIGEST_REF}), encoding="utf-8")
    doc = _compile_in_subprocess(tmp_path / "p.yaml", None, "--image-record", str(record))
    assert _images(doc) == {DIGEST_REF}


def test_compile_refuses_an_unpushed_build_or_a_bad_reference(tmp_path, capsys):
    from lungseg.cli import main

    record = tmp_path / "cpu.json"
    record.write_text(json.dumps({"tag": DEFAULT_IMAGE + "-cpu", "repo_digest": None}), encoding="utf-8")
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--output", str(out), "--image-record", str(record)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no registry digest: push it first" in err and err.count("\n") == 1
    assert main(["pipeline", "compile", "--output", str(out), "--image", "Not An Image"]) == 2
    assert "not an image reference" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_every_task_is_told_the_image_it_runs_in(spec, tmp_path):
    """The stages record it with their MLflow runs (lineage); a pinned compile names the digest."""
    for name, ex in _executors(spec["doc"]).items():
        if name != "exec-importer":
            assert ex["container"]["env"] == [{"name": "LUNGSEG_IMAGE", "value": DEFAULT_IMAGE}]
    doc = _compile_in_subprocess(tmp_path / "pinned.yaml", None, "--image", DIGEST_REF)
    envs = [ex["container"]["env"] for k, ex in _executors(doc).items() if k != "exec-importer"]
    assert envs == [[{"name": "LUNGSEG_IMAGE", "value": DIGEST_REF}]] * 4
    # a run of the components outside any image (run-local's subprocess runner) claims none
    from google.protobuf.json_format import MessageToDict

    from pipelines.lungseg_pipeline import make_pipeline

    local = MessageToDict(make_pipeline(record_image=False).pipeline_spec)["deploymentSpec"]["executors"]
    assert not [e for e in local.values() if e.get("container", {}).get("env")]


@pytest.mark.slow
def test_another_image_leaves_the_default_pipeline_alone():
    from pipelines.lungseg_pipeline import lungseg_pipeline, make_pipeline

    other = make_pipeline(DIGEST_REF)

    def images(p):
        return {
            e["container"]["image"] for e in p.pipeline_spec.deployment_spec["executors"].values() if "container" in e
        }

    assert images(other) == {DIGEST_REF}
    assert images(lungseg_pipeline) == {DEFAULT_IMAGE}


def test_submit_arguments_carry_the_params_file(tmp_path):
    """What `submit` sends to kfp.Client: compiled with those arguments, the spec holds the params
    file's values (the call stops at the network: see test_submit_unreachable_host)."""
    params = load_params(REPO / "params.yaml")
    args = ops.pipeline_arguments(params, dataset="medseg", input_uri="s3://lungseg/raw/medseg-covid100")
    assert json.loads(args["train_params"])["model"] == params.train.model
    assert json.loads(args["preprocess_params"])["hu_window"] == list(params.preprocess.hu_window)
    assert json.loads(args["train_params"])["epochs"] == params.train.epochs  # an int stays an int
    out = ops.compile_pipeline(tmp_path / "with-args.yaml", pipeline_parameters=args)
    defaults = _load(out)["root"]["inputDefinitions"]["parameters"]
    assert defaults["input_uri"]["defaultValue"] == "s3://lungseg/raw/medseg-covid100"
    assert json.loads(defaults["train_params"]["defaultValue"])["epochs"] == params.train.epochs
    assert json.loads(defaults["register_params"]["defaultValue"])["model_name"] == params.register.model_name


@pytest.mark.slow
def test_submit_unreachable_host_is_a_clear_error(tmp_path):
    from lungseg.cli import main

    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.cli",
            "pipeline",
            "submit",
            "--host",
            "http://127.0.0.1:9",
            "--input-uri",
            "s3://lungseg/raw/medseg",
            "--params",
            str(REPO / "params.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        encoding="utf-8",
    )
    assert code.returncode == 2
    assert "error: could not submit to Kubeflow Pipelines at http://127.0.0.1:9" in code.stderr
    assert (
        main(
            [
                "pipeline",
                "submit",
                "--host",
                "http://127.0.0.1:9",
                "--input-uri",
                str(tmp_path),
                "--params",
                str(REPO / "params.yaml"),
            ]
        )
        == 2
    )
