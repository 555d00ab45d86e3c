"""The checkpoint files (lungseg.artifacts.checkpoint): TrainState produces checkpoint.pt and best.pt,
format-1 files (with a disabled GradScaler's state) still load and resume exactly."""

from __future__ import annotations

import pytest
import torch

from lungseg.artifacts.checkpoint import (
    BEST_KEYS,
    CHECKPOINT_FORMAT,
    RunInfo,
    TrainState,
    load_checkpoint,
    model_identity,
)
from lungseg.config import TrainConfig, load_params
from lungseg.training import rundir, train
from train_helpers import write_params


def _info() -> RunInfo:
    cfg = TrainConfig(model="unet", base_channels=4)
    return RunInfo(
        model_identity=model_identity(cfg, 1, 1),
        config={"epochs": 3},
        params={},
        num_classes=1,
        data_hash="h",
        image_size=32,
        preprocess={"image_size": 32},
    )


def _row(epoch: int, val_dice: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 1.0,
        "train_dice": 0.5,
        "val_loss": 1.0,
        "val_dice": val_dice,
        "lr": 0.1,
        "seconds": 0.1,
    }


def test_train_state_selects_the_best_epoch_and_stops_early():
    state = TrainState(_info())
    assert not state.end_epoch(_row(1, 0.9), min_epochs=2, patience=2)  # warm-up: neither best nor stale
    assert (state.best, state.stale, state.epoch) == (-1.0, 0, 1)
    assert state.end_epoch(_row(2, 0.5), min_epochs=2, patience=2)
    assert not state.end_epoch(_row(3, 0.4), min_epochs=2, patience=2) and not state.stopped_early
    assert not state.end_epoch(_row(4, 0.5), min_epochs=2, patience=2)  # not better than 0.5: stale 2
    assert state.stopped_early and (state.best, state.best_epoch, state.stale) == (0.5, 2, 2)
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4]


def test_train_state_writes_both_files(tmp_path):
    net = torch.nn.Conv2d(1, 1, 3)
    optimizer = torch.optim.Adam(net.parameters())
    state = TrainState(_info(), run_id="r1")
    improved = state.end_epoch(_row(1, 0.3), min_epochs=0, patience=0)
    state.save(tmp_path, net, optimizer, None, improved=improved)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert ckpt["format"] == CHECKPOINT_FORMAT == 2 and "scaler_state" not in ckpt  # no GradScaler for the format
    assert ckpt["epoch"] == 1 and ckpt["best"] == 0.3 and ckpt["mlflow_run_id"] == "r1" and ckpt["stale"] == 0
    assert set(best) == set(BEST_KEYS) and torch.equal(best["model_state"]["weight"], net.weight.detach())
    assert ckpt["scheduler_state"] is None and set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}
    before = (tmp_path / "best.pt").read_bytes()
    state.end_epoch(_row(2, 0.1), min_epochs=0, patience=0)
    state.save(tmp_path, net, optimizer, None, improved=False)
    assert (tmp_path / "best.pt").read_bytes() == before and load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2


@pytest.mark.slow
def test_a_format_1_checkpoint_resumes_exactly(tmp_path, tiny_data, monkeypatch):
    """A checkpoint in the format written before TrainState (format 1: with the state of a disabled
    GradScaler, without preset_deviations) continues to the same weights as an uninterrupted run;
    history.csv is written once per epoch."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    one = load_params(write_params(tmp_path / "p1.yaml", uri, epochs=1, scheduler="none"))
    two = load_params(write_params(tmp_path / "p2.yaml", uri, epochs=2, scheduler="none"))
    train(one, tiny_data, tmp_path / "old")
    for name in ("checkpoint.pt", "best.pt"):  # rewrite both files in format 1
        ckpt = torch.load(tmp_path / "old" / name, weights_only=False)
        ckpt.pop("preset_deviations")
        ckpt["format"] = 1
        if name == "checkpoint.pt":
            ckpt["scaler_state"] = torch.amp.GradScaler("cuda", enabled=False).state_dict()
        torch.save(ckpt, tmp_path / "old" / name)
    assert "scaler_state" in torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=False)

    writes = []
    real = rundir.write_history
    monkeypatch.setattr(
        rundir, "write_history", lambda path, history: (writes.append(len(history)), real(path, history))
    )
    train(two, tiny_data, tmp_path / "old", resume=True)  # continue the finished (format-1) run to epoch 2
    assert writes == [2]  # one history write per epoch, none extra at the end
    train(two, tiny_data, tmp_path / "straight")
    a = load_checkpoint(tmp_path / "old" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["format"] == 2
    for key in b["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    assert [r["val_dice"] for r in a["history"]] == [r["val_dice"] for r in b["history"]]


def test_optimizer_state_follows_its_parameters_after_a_resume():
    """--resume restores the optimizer while the model is still on the CPU; model.to(cuda) moves the
    parameters, not Adam's moments. optimizer_to_params puts the state where (device and floating
    dtype) the parameters now are; a dtype change stands in for the CPU→CUDA move here (both keep
    the Parameter objects, and without the helper the step fails the same way)."""
    from lungseg.artifacts.checkpoint import optimizer_to_params

    trained = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(trained.parameters())
    trained(torch.randn(4, 3)).sum().backward()
    opt.step()

    def restored():
        net = torch.nn.Linear(3, 2)
        optimizer = torch.optim.Adam(net.parameters())
        optimizer.load_state_dict(opt.state_dict())  # before the move, as train() does
        net.double()
        return net, optimizer

    net, optimizer = restored()
    net(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    with pytest.raises(RuntimeError):
        optimizer.step()  # the bug: state left behind

    net, optimizer = restored()
    optimizer_to_params(optimizer)
    for p in net.parameters():
        state = optimizer.state[p]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == p.dtype == torch.float64
        assert state["exp_avg"].device == p.device
        torch.testing.assert_close(
            state["exp_avg"], opt.state[dict(zip(net.parameters(), trained.parameters()))[p]]["exp_avg"].double()
        )  # the values kept
    net(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    optimizer.step()
    empty = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    optimizer_to_params(empty)  # a fresh optimizer (no state yet) is left alone
    assert not empty.state


def test_the_full_checkpoint_is_due_every_n_epochs_at_the_end_and_with_every_best():
    state = TrainState(_info())
    due = []
    for epoch in range(1, 8):
        state.end_epoch(_row(epoch, 0.1), min_epochs=99, patience=0)  # warm-up throughout: never improves
        due.append(state.checkpoint_due(3, 7, improved=False))
    assert [e for e, d in zip(range(1, 8), due) if d] == [3, 6, 7]  # every 3rd and the last
    assert all(TrainState(_info(), epoch=e).checkpoint_due(1, 7, improved=False) for e in range(1, 8))  # default
    assert TrainState(_info(), epoch=4).checkpoint_due(3, 7, improved=True)  # best.pt is never newer
    assert TrainState(_info(), epoch=4, stopped_early=True).checkpoint_due(3, 7, improved=False)


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.rand(2, 1, 5, 5)).sum().backward()
    optimizer.step()
    return net, optimizer


def test_a_background_write_holds_the_state_of_its_epoch(tmp_path, monkeypatch):
    """The writer thread is held until training has changed everything in place (weights, Adam's
    moments and step, the history): the files still hold the state at the end of the epoch, equal
    to what a synchronous write of that state gives."""
    import threading

    from lungseg.artifacts import checkpoint as ck

    net, optimizer = _trained()
    state = TrainState(_info(), run_id="r")
    improved = state.end_epoch(_row(1, 0.4), min_epochs=0, patience=0)
    (tmp_path / "sync").mkdir()
    state.save(tmp_path / "sync", net, optimizer, None, improved=improved)  # the reference: written at once

    release, real = threading.Event(), ck.save_checkpoint
    held = []

    def held_save(obj, path):
        held.append(path.name)
        assert release.wait(30)
        real(obj, path)

    monkeypatch.setattr(ck, "save_checkpoint", held_save)
    writer = ck.CheckpointWriter(background=True)
    state.save(tmp_path, net, optimizer, None, improved=improved, writer=writer)
    net(torch.rand(2, 1, 5, 5)).sum().backward()  # the next epoch trains meanwhile
    optimizer.step()
    state.end_epoch(_row(2, 0.1), min_epochs=0, patience=0)
    assert not (tmp_path / "checkpoint.pt").exists()  # still held
    release.set()
    writer.wait()
    assert held == ["best.pt", "checkpoint.pt"]  # best first, as a synchronous save
    for name in ("checkpoint.pt", "best.pt"):
        got, want = load_checkpoint(tmp_path / name), load_checkpoint(tmp_path / "sync" / name)
        assert got["epoch"] == want["epoch"] == 1
        for key in want["model_state"]:
            assert torch.equal(got["model_state"][key], want["model_state"][key]), key
    got, want = load_checkpoint(tmp_path / "checkpoint.pt"), load_checkpoint(tmp_path / "sync" / "checkpoint.pt")
    assert got["history"] == want["history"] and len(got["history"]) == 1
    for i, moments in want["optimizer_state"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(got["optimizer_state"]["state"][i][key], moments[key]), (i, key)
    assert not torch.equal(got["model_state"]["weight"], net.weight.detach())  # training did move on
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "checkpoint.pt", "sync"]  # no temporaries


def test_a_background_write_error_is_raised_at_the_next_write_and_never_lost(tmp_path, capsys):
    from lungseg.artifacts.checkpoint import CheckpointWriter

    writer = CheckpointWriter(background=True)
    unpicklable = {"fn": lambda: None}  # torch.save fails on it, in the writer thread
    writer.write([(unpicklable, tmp_path / "checkpoint.pt")])
    with pytest.raises(Exception, match="lambda|pickle"):
        writer.write([({"epoch": 2}, tmp_path / "checkpoint.pt")])  # the previous write's error, raised here
    assert list(tmp_path.iterdir()) == []  # nothing half-written, and the new write was not started
    writer.write([({"epoch": 3}, tmp_path / "checkpoint.pt")])  # raised once: the writer goes on
    writer.wait()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False) == {"epoch": 3}

    writer.write([(unpicklable, tmp_path / "best.pt")])
    with pytest.raises(Exception, match="lambda|pickle"):
        writer.wait()  # the end of a run: the last write's error
    writer.write([(unpicklable, tmp_path / "best.pt")])
    writer.abandon()  # a run failing anyway: reported, not raised
    assert "lungseg: warning: a checkpoint write failed too:" in capsys.readouterr().err
    writer.wait()  # and not raised again later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_temporaries_of_a_killed_write_are_removed(tmp_path):
    from lungseg.artifacts.checkpoint import remove_stale_temporaries

    for name in (".checkpoint.pt.tmp-123", ".best.pt.tmp-7", "checkpoint.pt", ".history.csv.tmp-1", "notes.tmp-2"):
        (tmp_path / name).write_bytes(b"x")
    gone = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in gone) == [".best.pt.tmp-7", ".checkpoint.pt.tmp-123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".history.csv.tmp-1", "checkpoint.pt", "notes.tmp-2"]
