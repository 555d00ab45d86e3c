"""``train.preset: nnunet`` (lungseg.training.nnunet_preset) wired into the training: each setting of
the resolved config, the optimizer, schedule and loss built from it, the batches ``train_epoch``
draws (fixed number, foreground oversampled, nnU-Net's augmentation), gradient clipping, and exact
resume under the preset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lungseg.config import TrainConfig, load_params
from lungseg.errors import ConfigError
from lungseg.training import nnunet_augment, sampling
from lungseg.training.nnunet_preset import NNUNET_TRAIN, PRECISE_BN_NOTE, resolve_nnunet
from lungseg.training.presets import resolve_preset

#: lungseg's precise BN (#22), on by default, recorded as a deviation from nnU-Net (review of #25)
PRECISE_BN = {"value": "auto", "paper": False, "source": "nnU-Net", "note": PRECISE_BN_NOTE}


def test_every_setting_of_the_preset_is_nnunets():
    result = resolve_preset(TrainConfig(preset="nnunet"))
    cfg = result.config
    # the values nnU-Net v2's nnUNetTrainer uses (docs/nnunet.md cites each)
    assert cfg.optimizer == "sgd_nesterov"
    assert cfg.lr == 0.01 and cfg.weight_decay == 3e-5
    assert cfg.scheduler == "poly" and cfg.epochs == 1000
    assert cfg.iterations_per_epoch == 250 and cfg.oversample_foreground == 0.33
    assert cfg.grad_clip == 12.0 and cfg.loss == "bce_dice" and cfg.augment == "nnunet"
    assert cfg.early_stopping_patience == 0
    # the library defaults it replaced, all recorded as filled; nothing written, so no deviation
    assert result.filled == {k: v for k, v in NNUNET_TRAIN.items() if getattr(TrainConfig(), k) != v}
    # nothing written, so no deviation but lungseg's own addition, precise BN (on by default: auto)
    assert set(result.filled) == set(NNUNET_TRAIN) and result.deviations == {"precise_bn": PRECISE_BN}
    assert resolve_preset(TrainConfig(preset="nnunet", precise_bn=False)).deviations == {}
    assert resolve_preset(TrainConfig(preset="nnunet", precise_bn=True)).deviations["precise_bn"]["value"] is True
    assert cfg.batch_size == TrainConfig().batch_size  # not part of the recipe (nnU-Net plans it)


def test_a_written_key_is_honoured_and_recorded_against_nnunet():
    cfg = TrainConfig(preset="nnunet", epochs=20, lr=0.01, iterations_per_epoch=17, augment=True)
    result = resolve_nnunet(cfg)
    assert result.config.epochs == 20 and result.config.iterations_per_epoch == 17 and result.config.augment is True
    assert result.deviations == {
        "epochs": {"value": 20, "paper": 1000, "source": "nnU-Net"},
        "iterations_per_epoch": {"value": 17, "paper": 250, "source": "nnU-Net"},
        "augment": {"value": True, "paper": "nnunet", "source": "nnU-Net"},
        "precise_bn": PRECISE_BN,
    }  # lr 0.01 written equal to nnU-Net's: no deviation
    assert "lr" not in result.filled and "optimizer" in result.filled
    assert result.describe_deviations() == (
        "epochs=20 (nnU-Net 1000); iterations_per_epoch=17 (nnU-Net 250); augment=True (nnU-Net nnunet); "
        "precise_bn=auto (nnU-Net False, lungseg's addition: BatchNorm statistics recomputed before each "
        "validation (a no-op for a model without BatchNorm); nnU-Net keeps the running averages)"
    )


def test_the_defaults_keep_todays_recipe():
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.scheduler, cfg.augment) == ("adam", "cosine", True)
    assert (cfg.iterations_per_epoch, cfg.oversample_foreground, cfg.grad_clip) == (0, 0.0, 0.0)
    assert resolve_preset(cfg).config == cfg


def test_the_new_keys_are_checked_at_load(tmp_path):
    def load(**train):
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({"train": train}), encoding="utf-8")
        return load_params(path).train

    assert load(augment="light").augment == "light" and load(augment=False).augment is False
    assert load(scheduler="poly", optimizer="sgd_nesterov").scheduler == "poly"
    with pytest.raises(ConfigError, match="train.augment"):
        load(augment="heavy")
    with pytest.raises(ConfigError, match="train.optimizer"):
        load(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="train.oversample_foreground: needs train.iterations_per_epoch"):
        load(oversample_foreground=0.33)
    with pytest.raises(ConfigError, match="train.oversample_foreground"):
        load(oversample_foreground=1.5, iterations_per_epoch=4)
    with pytest.raises(ConfigError, match="train.preset"):
        load(preset="nnUNet")


def _setup(tiny_data: Path, tmp_path: Path, **train):
    from lungseg.training.distributed import SINGLE
    from lungseg.training.setup import prepare

    params = load_params(_params_file(tmp_path / "p.yaml", **train))
    return prepare(params, tiny_data, SINGLE)


def _params_file(path: Path, **train) -> Path:
    train = {"preset": "nnunet", "model": "unet", "base_channels": 4, "device": "cpu", **train}
    data = {"train": train, "mlflow": {"tracking_uri": f"sqlite:///{path.parent / 'mlflow.db'}", "experiment": "tests"}}
    data["evaluate"] = {"n_overlays": 1}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_optimizer_schedule_and_loss_are_built_from_the_preset(tiny_data, tmp_path):
    from lungseg.losses.bce_dice import BCEDiceLoss
    from lungseg.training.setup import build_training, step_scheduler

    s = _setup(tiny_data, tmp_path, epochs=10)
    _, loss_fn, optimizer, scheduler = build_training(s, tiny_data)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.99, True, 3e-5)
    assert isinstance(loss_fn, BCEDiceLoss) and s.loss_options == {"batch": True}
    assert loss_fn.loss.dice.batch is True  # nnU-Net's batch Dice (2-D)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_scheduler(scheduler, 0.0)
    # nnU-Net's PolyLRScheduler: initial_lr * (1 - epoch / num_epochs) ** 0.9, epoch 0 at the full lr
    assert lrs == pytest.approx([0.01 * (1 - e / 10) ** 0.9 for e in range(10)], rel=1e-12, abs=1e-15)
    # and the library default stays Adam + cosine
    s = _setup(tiny_data, tmp_path, preset="default", epochs=10)
    _, _, optimizer, scheduler = build_training(s, tiny_data)
    assert type(optimizer) is torch.optim.Adam and type(scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR


def _tiles(tiny_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The real sample's training slices cut into 16² quadrants: some hold infection, some do not."""
    from lungseg.data.dataset import load_split

    split = load_split(tiny_data, "train")
    x, y = torch.from_numpy(split.images), torch.from_numpy(split.masks).long()
    n, c, h, w = x.shape
    xt = x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, h // 2, w // 2)
    yt = y.reshape(n, 2, h // 2, 2, w // 2).permute(0, 1, 3, 2, 4).reshape(-1, h // 2, w // 2)
    return xt.contiguous(), yt.contiguous()


class _Recording(torch.nn.Module):
    """The loss train_epoch calls, recording each batch's masks (the batch train_epoch drew)."""

    def __init__(self):
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def forward(self, logits, masks):
        self.batches.append(masks.clone())
        return logits.float().mean() * 0.0 + torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0], masks.float()
        )


@pytest.mark.parametrize("batch_size", [4, 12])
def test_train_epochs_batches_hold_foreground_where_nnunet_forces_it(tiny_data, batch_size):
    from lungseg.models import create_model
    from lungseg.training.epoch import train_epoch

    x, y = _tiles(tiny_data)
    has_fg = (y.reshape(len(y), -1) > 0).any(1)
    assert 0.2 < float(has_fg.double().mean()) < 0.9  # a real mix of tiles with and without infection
    cfg = resolve_preset(
        TrainConfig(preset="nnunet", batch_size=batch_size, iterations_per_epoch=40, augment=False, seed=3)
    ).config
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=1, base_channels=4)
    loss = _Recording()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    row = train_epoch(model, loss, optimizer, x, y, cfg, torch.device("cpu"), epoch=2)
    assert len(loss.batches) == 40 and all(b.shape[0] == batch_size for b in loss.batches)
    forced = sampling.forced_positions(batch_size)  # nnU-Net: the last round(b * .33) positions
    fg = torch.stack([(b.reshape(batch_size, -1) > 0).any(1) for b in loss.batches])  # (40, batch)
    assert bool(fg[:, torch.from_numpy(forced)].all())
    assert float(fg.double().mean(1).min()) >= forced.sum() / batch_size
    # the free positions are drawn from all tiles: their foreground share is the data's, not 100 %
    free_share = float(fg[:, torch.from_numpy(~forced)].double().mean())
    assert abs(free_share - float(has_fg.double().mean())) < 0.15 and free_share < 0.95
    assert row["epoch"] == 2 and math.isfinite(row["train_loss"])
    # the same epoch again draws the same batches (from (seed, epoch) alone: exact resume)
    again = _Recording()
    train_epoch(model, again, optimizer, x, y, cfg, torch.device("cpu"), epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(loss.batches, again.batches))


def test_epoch_batches_apply_nnunets_augmentation_when_asked(tiny_data):
    from lungseg.training.epoch import epoch_batches

    x, y = _tiles(tiny_data)
    base = dict(preset="nnunet", iterations_per_epoch=5, seed=1)
    plain = resolve_preset(TrainConfig(**base, augment=False)).config
    nn = resolve_preset(TrainConfig(**base)).config
    light = resolve_preset(TrainConfig(**base, augment="light")).config
    cpu = torch.device("cpu")
    # what the loop does for nnunet: the plan and the permutation from the epoch generator, then
    # nnU-Net's family from the same generator, batch by batch
    gen = torch.Generator().manual_seed(11)
    got = list(epoch_batches(x, y, nn, cpu, gen))
    gen = torch.Generator().manual_seed(11)
    raw = list(epoch_batches(x, y, plain, cpu, gen))  # draws the permutation and the plan only
    ref_gen = torch.Generator().manual_seed(11)
    torch.randperm(len(x), generator=ref_gen)
    plan = sampling.planned_batches(y, nn, ref_gen)
    for step, (xb, yb, size) in enumerate(got):
        assert torch.equal(raw[step][1], y[plan[step]])
        # in the z-score of the training foreground (window data: no input_norm record), as nnU-Net
        space = nnunet_augment.intensity_space(None, x, y)
        ex, ey = nnunet_augment.augment(x[plan[step]], y[plan[step]], ref_gen, space=space)
        assert torch.equal(xb, ex) and torch.equal(yb, ey) and size == 4
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(got, raw))  # it did augment
    gen = torch.Generator().manual_seed(11)
    lighter = list(epoch_batches(x, y, light, cpu, gen))
    assert not torch.equal(lighter[0][0], got[0][0])  # light is today's family, not nnU-Net's


def test_gradients_are_clipped_to_the_preset_norm(tiny_data, monkeypatch):
    from lungseg.models import create_model
    from lungseg.training import epoch

    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        total = real(params, max_norm, *a, **k)
        calls.append(
            (max_norm, float(total), float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
        )
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    x, y = _tiles(tiny_data)
    cfg = resolve_preset(TrainConfig(preset="nnunet", iterations_per_epoch=3, grad_clip=0.01)).config
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=1, base_channels=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    epoch.train_epoch(model, _Recording(), opt, x, y, cfg, torch.device("cpu"), epoch=0)
    assert len(calls) == 3 and all(c[0] == 0.01 for c in calls)
    assert all(before > 0.01 and after == pytest.approx(0.01, rel=1e-4) for _, before, after in calls)
    calls.clear()
    default = TrainConfig(iterations_per_epoch=0)
    epoch.train_epoch(model, _Recording(), opt, x, y, default, torch.device("cpu"), epoch=0)
    assert calls == []  # grad_clip 0: never called (today's behaviour)


def test_a_run_under_the_preset_resumes_exactly(tmp_path, tiny_data, monkeypatch):
    """A run that fails in its last epoch resumes from the checkpoint before it and ends bitwise like a
    run straight through: the batch plan, the augmentation, SGD's momentum and the poly lr restored."""
    import lungseg.training.loop as loop
    from lungseg.artifacts.checkpoint import load_checkpoint
    from lungseg.errors import TrainingError
    from lungseg.training import train
    from lungseg.training.epoch import NonFiniteLoss

    params = load_params(_params_file(tmp_path / "p.yaml", epochs=3, iterations_per_epoch=2))
    straight = train(params, tiny_data, tmp_path / "straight")
    assert straight.epochs_run == 3
    real = loop.train_epoch

    def fail_in_epoch_3(net, loss_fn, optimizer, *args, **kwargs):
        if args[-1] == 3:
            raise NonFiniteLoss(float("nan"), 3, 1, optimizer.param_groups[0]["lr"])
        return real(net, loss_fn, optimizer, *args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", fail_in_epoch_3)
    with pytest.raises(TrainingError, match="epoch 3"):
        train(params, tiny_data, tmp_path / "killed")
    monkeypatch.setattr(loop, "train_epoch", real)
    train(params, tiny_data, tmp_path / "killed", resume=True)
    a = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in b["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    for sa, sb in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler_state"] == b["scheduler_state"]
    no_time = [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]] == no_time
    assert [r["lr"] for r in b["history"]] == pytest.approx([0.01 * (1 - e / 3) ** 0.9 for e in range(3)])
    # the run records the preset: the resolved settings and their source
    assert b["config"]["optimizer"] == "sgd_nesterov" and b["config"]["augment"] == "nnunet"
    assert b["preset_deviations"] == {
        "epochs": {"value": 3, "paper": 1000, "source": "nnU-Net"},
        "iterations_per_epoch": {"value": 2, "paper": 250, "source": "nnU-Net"},
        "precise_bn": PRECISE_BN,
    }
    assert np.isfinite(b["history"][-1]["train_loss"])


def test_iterations_per_epoch_0_under_the_preset_says_the_preset_filled_the_oversampling(tmp_path):
    """Review of #25: the error named only oversample_foreground, a key the user never wrote."""
    with pytest.raises(ConfigError) as err:
        resolve_preset(TrainConfig(preset="nnunet", iterations_per_epoch=0))
    msg = str(err.value)
    assert msg.startswith("train.iterations_per_epoch: 0") and "preset nnunet filled in" in msg
    assert "oversample_foreground 0.33" in msg and "write train.oversample_foreground: 0" in msg
    assert "a positive iterations_per_epoch" in msg and "\n" not in msg
    # the two fixes it names both load
    assert resolve_preset(TrainConfig(preset="nnunet", iterations_per_epoch=0, oversample_foreground=0.0)).config
    assert resolve_preset(TrainConfig(preset="nnunet", iterations_per_epoch=5)).config.oversample_foreground == 0.33
