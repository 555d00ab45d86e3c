"""`lungseg pipeline run-local` without running the pipeline: where a trial run tracks and registers,
and its one-line errors (the runs themselves: tests/integration/test_kfp_local.py and
tests/integration/test_image_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from lungseg.cli import main
from pipelines import ops

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "medseg-covid100"


def test_the_trial_store_is_inside_the_work_folder(tmp_path):
    assert ops.trial_tracking_uri(tmp_path / "kfp") == f"sqlite:///{tmp_path / 'kfp' / 'mlflow.db'}"


@pytest.mark.slow
def test_a_new_local_store_keeps_its_artifacts_beside_it(tmp_path, monkeypatch):
    """Not in the folder a component happens to run in (a container's vanishes with it): the
    experiment and MLflow's Default experiment (where log_model puts logged models) both point
    under <store folder>/mlartifacts."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    dirs = ops.prepare_store(uri, "lungseg")
    root = tmp_path / "store" / "mlartifacts"
    assert dirs == [str(root), str(root / "0")]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("lungseg").artifact_location == root.as_uri()
    assert ops.prepare_store(uri, "lungseg") == dirs  # idempotent
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_an_unreachable_tracking_server_is_one_line(tmp_path, capsys):
    code = main(
        [
            "pipeline",
            "run-local",
            "--input",
            str(SAMPLE),
            "--workdir",
            str(tmp_path / "kfp"),
            "--tracking-uri",
            "http://127.0.0.1:9",
            "--params",
            str(REPO / "params.yaml"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow store http://127.0.0.1:9: ") and err.count("\n") == 1
    assert not (tmp_path / "kfp" / "outputs").exists()


def test_docker_runner_without_a_daemon_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-such.sock'}")
    code = main(
        [
            "pipeline",
            "run-local",
            "--runner",
            "docker",
            "--input",
            str(SAMPLE),
            "--workdir",
            str(tmp_path / "kfp"),
            "--params",
            str(REPO / "params.yaml"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: --runner docker: no Docker daemon answers (DOCKER_HOST=unix://") and err.count("\n") == 1
    )
    assert not (tmp_path / "kfp").exists()  # nothing was written


def test_bad_runner_arguments_are_config_errors(tmp_path, capsys):
    args = [
        "pipeline",
        "run-local",
        "--input",
        str(SAMPLE),
        "--workdir",
        str(tmp_path / "kfp"),
        "--params",
        str(REPO / "params.yaml"),
    ]
    assert main([*args, "--image", "lungseg:cpu"]) == 2
    assert "--image: only the docker runner runs an image" in capsys.readouterr().err
    assert not (tmp_path / "kfp").exists()
    assert main([*args, "--runner", "docker", "--image", "Not An Image"]) == 2
    assert "not an image reference" in capsys.readouterr().err
    assert main([*args[:2], "--input", str(tmp_path / "missing"), *args[4:]]) == 2
    assert "raw dataset folder not found" in capsys.readouterr().err
