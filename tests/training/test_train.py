"""Training on the real bundled sample: learning, exact resume after SIGKILL, bad input, MLflow."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from train_helpers import cli_env, lungseg_cmd, write_params
from lungseg.config import load_params
from lungseg.errors import CheckpointError, ConfigError, DataError, TrainingError
from lungseg.tracking import scoped_tracking_uri
from lungseg.training import build_model, load_checkpoint, train


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_train_writes_contract_and_logs_everything_to_mlflow(tmp_path, tiny_data):
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=4))
    result = train(params, tiny_data, tmp_path / "out")
    out = tmp_path / "out"
    assert {"checkpoint.pt", "best.pt", "history.csv", "train_metrics.json", "mlflow_run.json",
            "learning_curves.png"} <= {p.name for p in out.iterdir()}
    assert not (tmp_path / "out.partial").exists()
    hist = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    assert hist["epoch"].tolist() == [1, 2, 3, 4]
    assert hist["train_loss"][-1] < hist["train_loss"][0]  # it learns on real data

    client = mlflow.MlflowClient(_uri(tmp_path))
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.model"] == "unet" and run.data.params["train.epochs"] == "4"
    assert len(run.data.tags["data_hash"]) == 64 and run.data.tags["data_hash_source"] == "manifest"
    assert run.data.tags["git_commit"]
    assert [m.step for m in client.get_metric_history(result.run_id, "val_dice")] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"history.csv", "train_metrics.json", "plots", "checkpoints"} <= artifacts
    ckpts = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    assert ckpts == {"checkpoints/best.pt", "checkpoints/checkpoint.pt"}
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {"plots/learning_curves.png"}
    import json

    info = json.loads((out / "mlflow_run.json").read_text())
    assert info["lost_logging"] == 0 and info["run_id"] == result.run_id
    assert info["model"] == client.get_run(result.run_id).data.tags["model"]  # fills register's {model}
    with scoped_tracking_uri(_uri(tmp_path)):
        model = mlflow.pytorch.load_model(info["model_uri"])
    batch = torch.from_numpy(np.load(tiny_data / "images.npy")[:3])
    best = build_model(load_checkpoint(out / "best.pt")["model_identity"])
    best.load_state_dict(load_checkpoint(out / "best.pt")["model_state"])
    best.eval()
    with torch.no_grad():
        pred = model(batch)  # a batch of 3 (the logged example had 2: the batch size is not frozen)
        assert pred.shape == (3, 1, 32, 32)
        assert torch.equal(pred, best(batch))  # the logged model is the best.pt weights


def _run_cli(params: Path, data: Path, out: Path, *extra: str, env=None) -> subprocess.Popen:
    return subprocess.Popen(lungseg_cmd("train", "--data", str(data), "--output", str(out), "--params", str(params),
                                        *extra), env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_killed_run_resumes_exactly(tmp_path, tiny_data):
    """SIGKILL a real `lungseg train` after epoch ≥1, resume, and match an uninterrupted run bitwise."""
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=4, model="lgnet")
    killed = tmp_path / "killed"
    proc = _run_cli(params, tiny_data, killed)
    ckpt = tmp_path / "killed.partial" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    stopped_at = load_checkpoint(ckpt)["epoch"]
    assert 1 <= stopped_at < 4
    assert not killed.exists()  # nothing half-written where the output goes

    resumed = _run_cli(params, tiny_data, killed, "--resume")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming {ckpt} after epoch {stopped_at}" in log

    straight = _run_cli(params, tiny_data, tmp_path / "straight")
    log2 = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, log2
    a = load_checkpoint(killed / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 4
    for key in b["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    def no_time(history):  # per-epoch wall time is the only field allowed to differ
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert no_time(a["history"]) == no_time(b["history"]) and len(a["history"]) == 4
    for group_a, group_b in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(group_a[key], group_b[key]), key
    assert a["scheduler_state"] == b["scheduler_state"]
    assert a["mlflow_run_id"] != b["mlflow_run_id"]  # the resumed run continued its own MLflow run


def test_resume_with_other_architecture_is_refused(tmp_path, tiny_data):
    train(load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1)), tiny_data, tmp_path / "out")
    partial = tmp_path / "out.partial"
    partial.mkdir()
    shutil.copy(tmp_path / "out" / "checkpoint.pt", partial / "checkpoint.pt")
    other = load_params(write_params(tmp_path / "q.yaml", _uri(tmp_path), epochs=2, model="prnet"))
    with pytest.raises(CheckpointError, match=r"checkpoint is for unet\(.*\), but the configuration asks for prnet"):
        train(other, tiny_data, tmp_path / "out", resume=True)
    assert load_checkpoint(tmp_path / "out" / "checkpoint.pt")["model_identity"]["name"] == "unet"  # untouched


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def test_nan_loss_stops_with_clear_error_and_keeps_previous_output(tmp_path, tiny_data):
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1))
    train(params, tiny_data, tmp_path / "out")
    before = (tmp_path / "out" / "checkpoint.pt").read_bytes()
    poisoned = tmp_path / "poisoned"
    shutil.copytree(tiny_data, poisoned)
    images = np.load(poisoned / "images.npy")
    images[0, 0, 0, 0] = np.nan  # a NaN pixel that slipped past validation
    np.save(poisoned / "images.npy", images)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1"):
        train(load_params(write_params(tmp_path / "p2.yaml", _uri(tmp_path), epochs=1, augment=False)), poisoned,
              tmp_path / "out")
    assert (tmp_path / "out" / "checkpoint.pt").read_bytes() == before


def test_missing_split_and_bad_config(tmp_path, tiny_data):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    (broken / "masks.npy").unlink()
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1))
    with pytest.raises(DataError, match="masks.npy"):
        train(params, broken, tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        train(load_params(write_params(tmp_path / "q.yaml", _uri(tmp_path), model="nope")), tiny_data, tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown preset"):
        train(load_params(write_params(tmp_path / "r.yaml", _uri(tmp_path), preset="fast")), tiny_data, tmp_path / "o")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "lungseg.cli", "train", "--data", str(tmp_path / "nowhere"),
                           "--output", str(tmp_path / "o"), "--params", str(params)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in proc.stderr
