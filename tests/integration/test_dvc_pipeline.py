"""`dvc repro` of the whole pipeline in a copy of the project (tiny params), the DVC cache and
resume after a failure, the README's sweep (for one model: every model trains with the committed
params in tests/training/test_readme_sweep.py), queued experiments, plots and metrics
as DVC shows them, repository-relative tracking, and the outputs pushed to / pulled from S3."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from pipeline_helpers import copy_project, env, run

DVC = [sys.executable, "-m", "dvc"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    repo = copy_project(tmp_path_factory.mktemp("dvc") / "project")
    result = run([*DVC, "repro"], repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo


def test_repro_produces_every_stage_output(project):
    for out in (
        "data/processed/medseg/images.npy",
        "data/processed/medseg/manifest.csv",
        "models/medseg/best.pt",
        "models/medseg/checkpoint.pt",
        "models/medseg/history.csv",
        "reports/medseg/per_image.csv",
        "reports/medseg/metrics.json",
    ):
        assert (project / out).is_file(), out
    lock = yaml.safe_load((project / "dvc.lock").read_text(encoding="utf-8"))
    assert set(lock["stages"]) == {"store", "preprocess", "train", "evaluate", "register"}
    # each stage depends on its own params section only (+ mlflow where it logs)
    assert set(lock["stages"]["preprocess"]["params"]["params.yaml"]) == {"preprocess"}
    assert set(lock["stages"]["train"]["params"]["params.yaml"]) == {"train", "mlflow"}
    assert set(lock["stages"]["register"]["params"]["params.yaml"]) == {"register", "mlflow"}
    decision = json.loads((project / "reports/medseg-registration.json").read_text(encoding="utf-8"))
    trained = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))["train"]["model"]
    # register.model_name is "lungseg-{model}": filled with the architecture the train stage recorded
    assert decision["decision"] == "champion" and decision["model_name"] == f"lungseg-{trained}"
    metrics = run([*DVC, "metrics", "show", "--json"], project)
    assert metrics.returncode == 0 and "headline.json" in metrics.stdout
    # what the run recorded names the repository's store relative to the repository
    info = json.loads((project / "models/medseg/mlflow_run.json").read_text(encoding="utf-8"))
    assert info["tracking_uri"] == "sqlite:///mlflow.db" and decision["tracking_uri"] == "sqlite:///mlflow.db"
    uri = f"sqlite:///{project / 'mlflow.db'}"
    assert MlflowClient(uri).get_run(info["run_id"]).data.tags["data_dir"] == "data/processed/medseg"
    # right after `dvc repro`, dvc.lock matches the code and params (what tests/test_dvc_lock.py asks)
    from test_dvc_lock import _changes

    status = run([*DVC, "status", "--json"], project)
    assert status.returncode == 0 and _changes(json.loads(status.stdout or "{}"), set()) == [], status.stdout


def test_metrics_show_is_the_headline_and_plots_have_axes(project):
    """`dvc metrics show` printed 80+ columns and `dvc plots show` drew fpr/threshold/seconds against
    the row number."""
    metrics = json.loads(run([*DVC, "metrics", "show", "--json"], project).stdout)
    files = next(iter(metrics.values()))["data"]
    assert set(files) == {"models/medseg/train_metrics.json", "reports/medseg/headline.json"}
    headline = files["reports/medseg/headline.json"]["data"]
    assert len(headline) <= 10 and {"dice_mean", "dice_pooled", "n_images"} <= set(headline)
    assert sum(len(f["data"]) for f in files.values()) <= 20

    shown = run([*DVC, "plots", "show", "--json"], project)
    assert shown.returncode == 0, shown.stderr
    axes = {}  # plot name → "image" or its vega-lite spec as text
    for name, entries in json.loads(shown.stdout)["data"].items():
        for entry in entries:
            axes[name] = "image" if entry["type"] == "image" else json.dumps(entry["content"])
    assert {"models/medseg/learning_curves.png", "reports/medseg/curves.png", "reports/medseg/overlays.png"} <= {
        n for n, a in axes.items() if a == "image"
    }
    expected = {
        "learning curves (loss)": ("epoch", "val_loss"),
        "learning curves (Dice)": ("epoch", "val_dice"),
        "ROC (pooled over the test pixels)": ("fpr", "tpr"),
        "precision-recall (pooled)": ("recall", "precision"),
        "threshold sweep (pooled)": ("threshold", "dice"),
    }
    for name, (x, y) in expected.items():
        assert name in axes, sorted(axes)
        assert f'"field": "{x}"' in axes[name] and f'"{y}"' in axes[name], (name, axes[name][:2000])
        assert '"field": "step"' not in axes[name], name  # not against the row number


def test_second_repro_is_fully_cached(project):
    """Nothing is trained or evaluated again; register runs at every repro (never restored from DVC's run
    cache: a decision is about the store as it is now) and finds its decision made — the same version."""
    before = json.loads((project / "reports/medseg-registration.json").read_text(encoding="utf-8"))
    again = run([*DVC, "repro"], project)
    assert again.returncode == 0, again.stderr
    for stage in ("preprocess", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, again.stdout
    assert "Running stage 'register'" in again.stdout
    after = json.loads((project / "reports/medseg-registration.json").read_text(encoding="utf-8"))
    assert (after["model_name"], after["version"]) == (before["model_name"], before["version"])


def test_failed_stage_keeps_earlier_outputs_and_rerun_resumes(project):
    params_file = project / "params.yaml"
    good = params_file.read_text(encoding="utf-8")
    kept = {p: _md5(project / p) for p in ("data/processed/medseg/images.npy", "models/medseg/best.pt")}
    report = _md5(project / "reports/medseg/metrics.json")
    params = yaml.safe_load(good)
    params["evaluate"]["split"] = "no-such-split"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    failed = run([*DVC, "repro"], project)
    assert failed.returncode != 0
    assert "no-such-split" in failed.stderr + failed.stdout  # the stage's own one-line error
    assert "failed to reproduce 'evaluate'" in (failed.stderr + failed.stdout)
    for path, digest in kept.items():
        assert _md5(project / path) == digest, f"{path} changed by a failed later stage"

    params_file.write_text(good, encoding="utf-8")
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
    # the train stage of every model with the committed params: tests/training/test_readme_sweep.py
    decision = json.loads((project / "reports/medseg-registration.json").read_text(encoding="utf-8"))
    assert decision["model_name"] == "lungseg-prnet"  # register.model_name's {model}: the swept model


@pytest.fixture(scope="module")
def exp_project(tmp_path_factory):
    """A second copy for experiments (they change the workspace's params.yaml and outputs)."""
    repo = copy_project(tmp_path_factory.mktemp("dvc-exp") / "project")
    result = run([*DVC, "repro"], repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo


def _runs(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("select run_uuid from runs")}


def test_queued_experiments_keep_their_runs_and_registrations(exp_project):
    """`dvc exp run --queue` + `--run-all` (docs/pipeline.md) logged to a temporary mlflow.db that
    DVC deletes with the experiment's workspace: the runs and registrations vanished."""
    db = exp_project / "mlflow.db"
    before = _runs(db)
    for lr in ("0.01", "0.003"):  # not params.yaml's lr: an experiment equal to the baseline is not re-run
        queued = run([*DVC, "exp", "run", "--queue", "-S", f"train.lr={lr}", "--name", f"queued-lr{lr}"], exp_project)
        assert queued.returncode == 0, queued.stderr
    ran = run([*DVC, "exp", "run", "--run-all"], exp_project, timeout=3600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    show = run([*DVC, "exp", "show", "--json"], exp_project).stdout
    assert "queued-lr0.01" in show and "queued-lr0.003" in show
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    new = _runs(db) - before
    trained = [client.get_run(r) for r in new if client.get_run(r).data.tags.get("lungseg.stage") == "train"]
    assert sorted(r.data.params["train.lr"] for r in trained) == ["0.003", "0.01"], [r.data.params for r in trained]
    for r in trained:  # the model's artifacts are in the repository's store, not in the deleted workspace
        assert ".dvc/tmp" not in client.get_experiment(r.info.experiment_id).artifact_location
        assert r.info.status == "FINISHED"
    model = yaml.safe_load((exp_project / "params.yaml").read_text(encoding="utf-8"))["train"]["model"]
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name = 'lungseg-{model}'")
    assert {r.info.run_id for r in trained} <= {v.run_id for v in versions}
    assert not list((exp_project / ".dvc" / "tmp").rglob("mlflow.db"))
    # the registered models' files outlived the experiments' temporary workspaces
    import mlflow

    from lungseg.tracking import scoped_tracking_uri

    for v in versions:
        if v.run_id in {r.info.run_id for r in trained}:
            with scoped_tracking_uri(uri):
                assert mlflow.pyfunc.load_model(f"models:/lungseg-{model}/{v.version}") is not None


def test_a_copied_repository_writes_into_its_own_store(project, tmp_path):
    """mlflow_run.json held the absolute path of the original's mlflow.db: a copy of the repository
    logged its evaluation into the original's store."""
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True)
    original = _md5(project / "mlflow.db")
    res = run([*DVC, "repro", "--force", "--single-item", "evaluate"], copy)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _md5(project / "mlflow.db") == original  # the original's store is not written to
    logged = json.loads((copy / "reports/medseg/mlflow_logging.json").read_text(encoding="utf-8"))
    assert logged["run_id"] in _runs(copy / "mlflow.db") and _md5(copy / "mlflow.db") != original


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
    status = run([*DVC, "status", "--json"], clone)  # store and register are "always changed": by design
    assert json.loads(status.stdout or "{}") in (
        {},
        {"store": ["always changed"]},
        {"store": ["always changed"], "register": ["always changed"]},
    ), status.stdout
