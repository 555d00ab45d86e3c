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

from lungseg.artifacts.checkpoint import build_model, load_checkpoint
from lungseg.config import load_params
from lungseg.errors import CheckpointError, ConfigError, DataError, TrainingError
from lungseg.tracking import scoped_tracking_uri
from lungseg.training import train
from train_helpers import cli_env, lungseg_cmd, write_params


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.slow
def test_train_writes_contract_and_logs_everything_to_mlflow(tmp_path, tiny_data):
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=4))
    result = train(params, tiny_data, tmp_path / "out")
    out = tmp_path / "out"
    assert {
        "checkpoint.pt",
        "best.pt",
        "history.csv",
        "train_metrics.json",
        "mlflow_run.json",
        "learning_curves.png",
    } <= {p.name for p in out.iterdir()}
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

    info = json.loads((out / "mlflow_run.json").read_text(encoding="utf-8"))
    assert info["lost_logging"] == 0 and info["run_id"] == result.run_id
    assert info["model"] == client.get_run(result.run_id).data.tags["model"]  # fills register's {model}
    with scoped_tracking_uri(_uri(tmp_path)):
        model = mlflow.pyfunc.load_model(info["model_uri"])  # the portable model (lungseg.artifacts.pyfunc)
        example = model.metadata.load_input_example(mlflow.artifacts.download_artifacts(info["model_uri"]))
    meta = model.metadata.metadata["lungseg"]
    best_ckpt = load_checkpoint(out / "best.pt")
    assert meta["identity"] == best_ckpt["model_identity"] and meta["preprocess"] == best_ckpt["preprocess"]
    assert meta["preprocess"]["image_size"] == 32 and meta["threshold"] == 0.5
    images = np.load(tiny_data / "images.npy")
    from lungseg.artifacts.pyfunc import synthetic_slices

    np.testing.assert_array_equal(example, synthetic_slices())  # the input example is synthetic, never a patient
    batch = images[:3, 0]  # (3, 32, 32) slices in [0, 1]
    best = build_model(best_ckpt["model_identity"])
    best.load_state_dict(best_ckpt["model_state"])
    best.eval()
    with torch.no_grad():
        expected = torch.sigmoid(best(torch.from_numpy(batch)[:, None]))[:, 0].numpy()
    probs = model.predict(batch)  # a batch of 3 (the example had 2: the batch size is not frozen)
    assert probs.shape == (3, 32, 32)
    np.testing.assert_allclose(probs, expected, atol=1e-6)  # the logged model is the best.pt weights


def _run_cli(params: Path, data: Path, out: Path, *extra: str, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        lungseg_cmd("train", "--data", str(data), "--output", str(out), "--params", str(params), *extra),
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
    )


@pytest.mark.slow
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
    import json

    partial_run = json.loads((tmp_path / "killed.partial" / "mlflow_run.json").read_text(encoding="utf-8"))
    assert partial_run["status"] == "running" and partial_run["run_id"] == load_checkpoint(ckpt)["mlflow_run_id"]

    resumed = _run_cli(params, tiny_data, killed, "--resume")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming {ckpt} after epoch {stopped_at}" in log
    assert "precise BN: on, 14 images" in log  # lgnet has BatchNorm: its statistics recomputed every epoch (#22)

    straight = _run_cli(params, tiny_data, tmp_path / "straight")
    log2 = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, log2
    a = load_checkpoint(killed / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 4
    assert a["config"]["precise_bn"] == b["config"]["precise_bn"] == "auto"
    for key in b["model_state"]:  # the recomputed BatchNorm statistics (running_mean/var) included
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key

    def no_time(history):  # per-epoch wall time is the only field allowed to differ
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert no_time(a["history"]) == no_time(b["history"]) and len(a["history"]) == 4
    for group_a, group_b in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(group_a[key], group_b[key]), key
    assert a["scheduler_state"] == b["scheduler_state"]
    # the resumed process continued the MLflow run the killed one started, and finished it
    assert a["mlflow_run_id"] == partial_run["run_id"]
    run = mlflow.MlflowClient(_uri(tmp_path)).get_run(partial_run["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["best_val_dice"] == a["best"]


def _history_rows(path: Path) -> int:
    try:
        return len(path.read_text(encoding="utf-8").strip().splitlines()) - 1
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_a_run_killed_between_checkpoints_re_runs_the_lost_epochs_exactly(tmp_path, tiny_data):
    """checkpoint_every=3 with background writes: SIGKILL after epoch 4 (checkpoint.pt holds epoch 3),
    resume re-runs epoch 4 and ends bitwise like an uninterrupted run with the defaults (a checkpoint
    every epoch, written at once). min_epochs=6: no epoch before the last improves, so no best.pt
    forces an extra checkpoint."""
    common = dict(epochs=6, model="lgnet", min_epochs=6)
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), checkpoint_every=3, checkpoint_async=True, **common)
    killed = tmp_path / "killed"
    partial = tmp_path / "killed.partial"
    proc = _run_cli(params, tiny_data, killed)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _history_rows(partial / "history.csv") >= 4 and (partial / "checkpoint.pt").is_file():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    assert load_checkpoint(partial / "checkpoint.pt")["epoch"] == 3  # the only checkpoint written so far
    assert 4 <= _history_rows(partial / "history.csv") < 6  # epoch 4 (or 5) trained and lost
    assert not (partial / "best.pt").exists() and not killed.exists()

    resumed = _run_cli(params, tiny_data, killed, "--resume")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming {partial / 'checkpoint.pt'} after epoch 3" in log and "changed train settings" not in log
    assert "epoch 4/6" in log  # re-run
    assert "precise BN: on, 14 images" in log  # the re-run epoch's BatchNorm statistics recomputed too (#22)

    straight = _run_cli(write_params(tmp_path / "q.yaml", _uri(tmp_path), **common), tiny_data, tmp_path / "straight")
    log2 = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, log2
    for name in ("checkpoint.pt", "best.pt"):
        a, b = load_checkpoint(killed / name), load_checkpoint(tmp_path / "straight" / name)
        assert a["epoch"] == b["epoch"] == 6, name
        for key in b["model_state"]:
            assert torch.equal(a["model_state"][key], b["model_state"][key]), (name, key)
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    no_time = [{k: v for k, v in row.items() if k != "seconds"} for row in b["history"]]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in a["history"]] == no_time
    for group_a, group_b in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(group_a[key], group_b[key]), key
    assert a["scheduler_state"] == b["scheduler_state"] and a["best_epoch"] == 6
    assert not [p.name for p in killed.iterdir() if ".tmp-" in p.name]  # no temporaries in the output


def test_a_non_finite_loss_names_the_checkpoint_the_run_can_resume_from(tmp_path):
    """With checkpoint_every > 1 the last checkpoint is not always the previous epoch's: the epoch
    names the step (NonFiniteLoss), the loop adds the checkpoint it knows was written."""
    from lungseg.training.epoch import NonFiniteLoss, non_finite
    from lungseg.training.rundir import last_good

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(NonFiniteLoss, match=r"^loss became nan at epoch 5, step 2 \(lr 0.01\)$"):
        non_finite(float("nan"), 5, 2, optimizer)
    ckpt = tmp_path / "checkpoint.pt"
    assert last_good(ckpt, 3) == f"the last good checkpoint is {ckpt} (epoch 3)"  # (its write may be finishing)
    assert last_good(ckpt, 0) == "no checkpoint was written yet"


@pytest.mark.slow
def test_the_loop_names_the_last_written_checkpoint_of_a_non_finite_epoch(tmp_path, tiny_data, monkeypatch):
    """checkpoint_every 2: a loss going NaN in epoch 4 points back to epoch 2's checkpoint.pt."""
    import lungseg.training.loop as loop
    from lungseg.training.epoch import NonFiniteLoss

    real = loop.train_epoch

    def nan_in_epoch_4(net, loss_fn, optimizer, *args, **kwargs):
        if args[-1] == 4:
            raise NonFiniteLoss(float("nan"), 4, 3, optimizer.param_groups[0]["lr"])
        return real(net, loss_fn, optimizer, *args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", nan_in_epoch_4)
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=5, checkpoint_every=2))
    ckpt = tmp_path / "out.partial" / "checkpoint.pt"
    with pytest.raises(TrainingError, match=rf"epoch 4, step 3 \(lr .*\); the last good checkpoint is {ckpt}") as err:
        train(params, tiny_data, tmp_path / "out")
    saved = load_checkpoint(ckpt)["epoch"]  # 2, or 3 when its Dice improved (best.pt goes with checkpoint.pt)
    assert saved in (2, 3) and str(err.value).endswith(f"(epoch {saved})")


def test_the_data_stays_where_it_was_on_the_cpu_and_goes_to_the_gpu_when_it_fits(tiny_data):
    from lungseg.config import TrainConfig
    from lungseg.data.dataset import load_split
    from lungseg.training.epoch import DATA_ON_DEVICE_SHARE, keep_on_device, stage_data

    train_set, val_set = load_split(tiny_data, "train"), load_split(tiny_data, "val")
    for setting in ("auto", True, False):  # the CPU trains where the arrays are: today's tensors, no copy
        x, y, xv, yv = stage_data(train_set, val_set, TrainConfig(data_on_device=setting), torch.device("cpu"))
        assert x.data_ptr() == train_set.images.ctypes.data and xv.data_ptr() == val_set.images.ctypes.data
        assert y.dtype == yv.dtype == torch.long and torch.equal(y, torch.from_numpy(train_set.masks).long())
    gib = 2**30
    assert DATA_ON_DEVICE_SHARE == 0.25
    assert keep_on_device("auto", 2 * gib, 8 * gib) and not keep_on_device("auto", 2 * gib + 1, 8 * gib)
    assert keep_on_device(True, 9 * gib, 8 * gib) and not keep_on_device(False, 1, 8 * gib)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_data_on_the_device_trains_like_the_data_in_host_memory(tmp_path, tiny_data, capsys):
    """Where the arrays live changes where batches are indexed, not what is trained: the same
    augmented batches, so the same history up to GPU float non-determinism."""
    rows = {}
    for setting in (True, False):
        params = load_params(
            write_params(tmp_path / f"{setting}.yaml", _uri(tmp_path), epochs=2, device="cuda", data_on_device=setting)
        )
        rows[setting] = train(params, tiny_data, tmp_path / f"out-{setting}").history
    err = capsys.readouterr().err
    assert "lungseg: training data on cuda" in err and "training data kept in host memory" in err
    for a, b in zip(rows[True], rows[False]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


@pytest.mark.slow
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


@pytest.mark.slow
def test_nan_loss_stops_with_clear_error_and_keeps_previous_output(tmp_path, tiny_data):
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1))
    train(params, tiny_data, tmp_path / "out")
    before = (tmp_path / "out" / "checkpoint.pt").read_bytes()
    poisoned = tmp_path / "poisoned"
    shutil.copytree(tiny_data, poisoned)
    images = np.load(poisoned / "images.npy")
    images[0, 0, 0, 0] = np.nan  # a NaN pixel that slipped past validation
    np.save(poisoned / "images.npy", images)
    nan_at = r"loss became nan at epoch 1, step \d+ \(lr .*\); no checkpoint was written yet"
    with pytest.raises(TrainingError, match=nan_at):
        train(
            load_params(write_params(tmp_path / "p2.yaml", _uri(tmp_path), epochs=1, augment=False)),
            poisoned,
            tmp_path / "out",
        )
    assert (tmp_path / "out" / "checkpoint.pt").read_bytes() == before
    client = mlflow.MlflowClient(_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # the poisoned run ended FAILED


@pytest.mark.slow
def test_a_failure_after_the_last_epoch_ends_the_run_failed(tmp_path, tiny_data, monkeypatch):
    """The run is ended by its ``with`` block: an error while the results are logged (here the disk
    filling up as the curves are drawn) marks it FAILED, not left RUNNING, and nothing is published."""
    from lungseg.training import rundir

    def full_disk(path, history):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(rundir, "plot_history", full_disk)
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1))
    with pytest.raises(OSError, match="No space left on device"):
        train(params, tiny_data, tmp_path / "out")
    assert not (tmp_path / "out").exists() and (tmp_path / "out.partial" / "best.pt").is_file()
    client = mlflow.MlflowClient(_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [1]


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


@pytest.mark.slow
def test_cli_reports_bad_input_in_one_line(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.cli",
            "train",
            "--data",
            str(tmp_path / "nowhere"),
            "--output",
            str(tmp_path / "o"),
            "--params",
            str(params),
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in proc.stderr


@pytest.mark.slow
def test_resume_continues_a_finished_run(tmp_path, tiny_data):
    """`--resume` of a finished run with more epochs restarted from epoch 1 in a new MLflow run; now it
    goes on from the last epoch in the same run (or refuses when there is nothing left to train)."""
    import json

    out = tmp_path / "out"
    first = train(load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=2)), tiny_data, out)
    before = load_checkpoint(out / "checkpoint.pt")
    more = load_params(write_params(tmp_path / "q.yaml", _uri(tmp_path), epochs=3))
    result = train(more, tiny_data, out, resume=True)
    after = load_checkpoint(out / "checkpoint.pt")
    assert result.run_id == first.run_id and after["epoch"] == 3 and len(after["history"]) == 3
    assert after["history"][:2] == before["history"]  # epochs 1-2 kept as they were
    client = mlflow.MlflowClient(_uri(tmp_path))
    assert [m.step for m in client.get_metric_history(first.run_id, "val_dice")] == [1, 2, 3]
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["lungseg.continued_to_epochs"] == "3"
    info = json.loads((out / "mlflow_run.json").read_text(encoding="utf-8"))
    assert info["run_id"] == first.run_id and "status" not in info
    assert not (tmp_path / "out.partial").exists()

    snapshot = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"out: this run has already trained 3 epoch\(s\) \(train.epochs = 3\)"):
        train(more, tiny_data, out, resume=True)
    assert (out / "checkpoint.pt").read_bytes() == snapshot and not (tmp_path / "out.partial").exists()
    proc = subprocess.run(
        lungseg_cmd(
            "train", "--data", str(tiny_data), "--output", str(out), "--params", str(tmp_path / "q.yaml"), "--resume"
        ),
        env=cli_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_killed_runs_partial_is_reported_and_its_run_marked_killed(tmp_path, tiny_data, capsys):
    """What SIGKILL leaves (a .partial with a checkpoint, an MLflow run still RUNNING) was silently
    deleted by the next run without --resume; now it is named and the stale run is marked KILLED."""
    out = tmp_path / "out"
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1))
    old = train(params, tiny_data, out)
    shutil.copytree(out, tmp_path / "out.partial")  # the state of a run killed after its epoch 1
    client = mlflow.MlflowClient(_uri(tmp_path))
    client.update_run(old.run_id, status="RUNNING")
    capsys.readouterr()
    new = train(params, tiny_data, out)
    err = capsys.readouterr().err
    assert (
        f"discarding {tmp_path / 'out.partial'}, left by an earlier run that did not finish (1 finished epoch(s); "
        f"MLflow run {old.run_id} marked KILLED)" in err
    )
    assert client.get_run(old.run_id).info.status == "KILLED"
    assert client.get_run(new.run_id).info.status == "FINISHED" and new.run_id != old.run_id


def test_output_naming_a_file_is_refused_before_training(tmp_path, tiny_data):
    afile = tmp_path / "afile"
    afile.write_text("keep", encoding="utf-8")
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1))
    with pytest.raises(DataError, match="afile: exists and is not a folder"):
        train(params, tiny_data, afile)
    assert afile.read_text(encoding="utf-8") == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "p.yaml"]  # no run, no store, no .partial


@pytest.mark.slow
def test_model_options_of_another_model_are_ignored_with_a_warning(tmp_path, tiny_data, capsys):
    """A flat `model_kwargs: {max_tokens: 256}` (LG-Net's option) on a U-Net: trained, option ignored
    and said so (it was a TypeError traceback)."""
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1, model_kwargs={"max_tokens": 256}))
    train(params, tiny_data, tmp_path / "out")
    assert "train.model_kwargs max_tokens: not an option of unet, ignored" in capsys.readouterr().err
    assert "max_tokens" not in load_checkpoint(tmp_path / "out" / "best.pt")["model_identity"]["kwargs"]


@pytest.mark.slow
def test_min_epochs_is_a_warm_up_for_best_and_early_stopping(tmp_path, tiny_data):
    """Before min_epochs the validation Dice neither selects best.pt nor counts towards early stopping
    (a lucky epoch-2 value on the sample's 2 validation slices was kept as the model)."""
    params = load_params(
        write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=3, early_stopping_patience=1, min_epochs=3)
    )
    result = train(params, tiny_data, tmp_path / "out")
    assert result.epochs_run == 3 and result.best_epoch == 3 and not result.stopped_early
    assert load_checkpoint(tmp_path / "out" / "best.pt")["epoch"] == 3


# ------------------------------------------------------------------------- review findings (#23, #21)
def test_a_users_folder_named_like_the_work_folder_is_not_discarded(tmp_path, tiny_data, capsys):
    """`lungseg train --output out` deleted a user's `out.partial` (it took it for a killed run's)."""
    from lungseg.cli import main

    mine = tmp_path / "out.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious", encoding="utf-8")
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1)
    assert main(["train", "--data", str(tiny_data), "--output", str(tmp_path / "out"), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "out.partial: exists, is not empty and was not written by lungseg" in err and err.count("\n") == 1
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "precious" and not (tmp_path / "out").exists()
    # the work folder of a run killed under an older lungseg (no marker, but its mlflow_run.json) is still ours
    (mine / "notes.txt").unlink()
    (mine / "mlflow_run.json").write_text('{"run_id": "0123456789abcdef"}', encoding="utf-8")
    assert main(["train", "--data", str(tiny_data), "--output", str(tmp_path / "out"), "--params", str(params)]) == 0
    assert "discarding" in capsys.readouterr().err and (tmp_path / "out" / "best.pt").is_file()


@pytest.mark.slow
def test_a_resume_that_changes_what_the_restored_optimizer_carries_is_refused(tmp_path, tiny_data):
    """A resume with another lr warned, trained at the old lr and recorded the new one in checkpoint.pt."""
    train(load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1)), tiny_data, tmp_path / "out")
    partial = tmp_path / "out.partial"
    shutil.copytree(tmp_path / "out", partial)  # as a killed run leaves it (with its marker)
    changed = load_params(write_params(tmp_path / "q.yaml", _uri(tmp_path), epochs=2, lr=0.005))
    with pytest.raises(
        ConfigError, match=r"checkpoint\.pt: --resume restores the optimizer .* train\.lr 0\.003 → 0\.005"
    ):
        train(changed, tiny_data, tmp_path / "out", resume=True)
    same = load_params(write_params(tmp_path / "r.yaml", _uri(tmp_path), epochs=2))
    assert train(same, tiny_data, tmp_path / "out", resume=True).epochs_run == 2


def test_a_bad_attention_option_is_one_line_before_training(tmp_path, tiny_data, capsys):
    """max_tokens: -5 passed the load check and crashed the first forward pass with a traceback (exit 1)."""
    import yaml

    from lungseg.cli import main

    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1, model="lgnet")
    data = yaml.safe_load(params.read_text(encoding="utf-8"))
    data["train"]["model_kwargs"] = {"lgnet": {"max_tokens": -5}}
    params.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["train", "--data", str(tiny_data), "--output", str(tmp_path / "out"), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_tokens must be >= 1 or None, got -5" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.slow
def test_the_store_used_is_logged_and_a_registered_run_is_not_continued(tmp_path, tiny_data, monkeypatch):
    """The logged mlflow.tracking_uri was params.yaml's even when MLFLOW_TRACKING_URI chose another store;
    --resume of a finished run whose weights are a registered version moved its best_val_dice/best_epoch."""
    from mlflow import MlflowClient

    used = f"sqlite:///{tmp_path / 'used.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", used)
    params = load_params(write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1))
    result = train(params, tiny_data, tmp_path / "out")
    client = MlflowClient(tracking_uri=used, registry_uri=used)
    logged = client.get_run(result.run_id).data.params
    assert logged["mlflow.tracking_uri"] == used and logged["mlflow.tracking_uri_in_params"] == _uri(tmp_path)
    client.create_registered_model("lungseg-unet")
    client.create_model_version("lungseg-unet", f"runs:/{result.run_id}/model", run_id=result.run_id)
    more = load_params(write_params(tmp_path / "q.yaml", _uri(tmp_path), epochs=2))
    with pytest.raises(ConfigError, match=rf"out: its run {result.run_id} is registered \(lungseg-unet v1\)"):
        train(more, tiny_data, tmp_path / "out", resume=True)
    assert client.get_run(result.run_id).data.params["train.epochs"] == "1"
    assert load_checkpoint(tmp_path / "out" / "checkpoint.pt")["epoch"] == 1  # untouched
