"""`dvc repro` of the whole pipeline in a copy of the project (tiny params), the DVC cache and
resume after a failure, an experiment sweep, and the outputs pushed to / pulled from S3."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import copy_project, env, require_stages, run

DVC = [sys.executable, "-m", "dvc"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    require_stages()
    repo = copy_project(tmp_path_factory.mktemp("dvc") / "project")
    result = run([*DVC, "repro"], repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo


def test_repro_produces_every_stage_output(project):
    for out in ("data/processed/medseg/images.npy", "data/processed/medseg/manifest.csv",
                "models/medseg/best.pt", "models/medseg/checkpoint.pt", "models/medseg/history.csv",
                "reports/medseg/per_image.csv", "reports/medseg/metrics.json"):  # fmt: skip
        assert (project / out).is_file(), out
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"preprocess", "train", "evaluate", "register"}
    # each stage depends on its own params section only (+ mlflow where it logs)
    assert set(lock["stages"]["preprocess"]["params"]["params.yaml"]) == {"preprocess"}
    assert set(lock["stages"]["train"]["params"]["params.yaml"]) == {"train", "mlflow"}
    assert set(lock["stages"]["register"]["params"]["params.yaml"]) == {"register", "mlflow"}
    decision = json.loads((project / "reports/medseg-registration.json").read_text())
    trained = yaml.safe_load((project / "params.yaml").read_text())["train"]["model"]
    # register.model_name is "lungseg-{model}": filled with the architecture the train stage recorded
    assert decision["decision"] == "champion" and decision["model_name"] == f"lungseg-{trained}"
    metrics = run([*DVC, "metrics", "show", "--json"], project)
    assert metrics.returncode == 0 and "metrics.json" in metrics.stdout


def test_second_repro_is_fully_cached(project):
    again = run([*DVC, "repro"], project)
    assert again.returncode == 0, again.stderr
    for stage in ("preprocess", "train", "evaluate", "register"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, again.stdout


def test_failed_stage_keeps_earlier_outputs_and_rerun_resumes(project):
    params_file = project / "params.yaml"
    good = params_file.read_text()
    kept = {p: _md5(project / p) for p in ("data/processed/medseg/images.npy", "models/medseg/best.pt")}
    report = _md5(project / "reports/medseg/metrics.json")
    params = yaml.safe_load(good)
    params["evaluate"]["split"] = "no-such-split"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run([*DVC, "repro"], project)
    assert failed.returncode != 0
    assert "no-such-split" in failed.stderr + failed.stdout  # the stage's own one-line error
    assert "failed to reproduce 'evaluate'" in (failed.stderr + failed.stdout)
    for path, digest in kept.items():
        assert _md5(project / path) == digest, f"{path} changed by a failed later stage"

    params_file.write_text(good)
    resumed = run([*DVC, "repro"], project)
    assert resumed.returncode == 0, resumed.stderr
    assert "Stage 'preprocess' didn't change, skipping" in resumed.stdout
    assert "Stage 'train' didn't change, skipping" in resumed.stdout
    # evaluate with the good params ran before: DVC's run cache restores its outputs, no re-run
    assert "Stage 'evaluate' is cached - skipping run, checking out outputs" in resumed.stdout, resumed.stdout
    assert _md5(project / "reports/medseg/metrics.json") == report
    for path, digest in kept.items():
        assert _md5(project / path) == digest


def test_experiment_sweep_over_the_model(project):
    res = run([*DVC, "exp", "run", "-S", "train.model=prnet", "--name", "prnet-tiny"], project)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Stage 'preprocess' didn't change, skipping" in res.stdout  # the sweep reuses the data
    show = run([*DVC, "exp", "show", "--json"], project)
    assert show.returncode == 0
    assert "prnet-tiny" in show.stdout and '"model": "prnet"' in show.stdout.replace("'", '"')


def test_pipeline_outputs_push_to_and_pull_from_s3(project, s3_env, tmp_path):
    dvc_local = [*DVC, "remote", "modify", "--local", "storage", "endpointurl", s3_env.endpoint]
    assert run(dvc_local, project).returncode == 0
    push = run([*DVC, "push"], project)
    assert push.returncode == 0, push.stderr
    e = env()
    subprocess.run(["git", "add", "-A"], cwd=project, env=e, check=True)
    subprocess.run(["git", "commit", "-qm", "repro"], cwd=project, env=e, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], env=e, check=True)
    assert run([*dvc_local[:-1], s3_env.endpoint], clone).returncode == 0
    pull = run([*DVC, "pull"], clone)
    assert pull.returncode == 0, pull.stderr
    for out in ("models/medseg/best.pt", "data/processed/medseg/images.npy", "reports/medseg/metrics.json"):
        assert _md5(clone / out) == _md5(project / out), out
    status = run([*DVC, "status"], clone)
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout
