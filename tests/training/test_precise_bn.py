"""Precise BN (#22): the BatchNorm statistics recomputed over training batches before each
validation — against ``torch.optim.swa_utils.update_bn`` and a hand computation, a no-op without
BatchNorm, the global RNG and the training untouched, recorded in the run, the same on every DDP
rank, and the paper recipe's stale-statistics validation loss fixed on the real sample."""

from __future__ import annotations

import os
import socket

import mlflow
import pytest
import torch
from torch.optim.swa_utils import update_bn

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.config import TrainConfig, load_params
from lungseg.models import create_model
from lungseg.training import precise_bn, train
from lungseg.training.distributed import SINGLE, setup
from train_helpers import write_params

CPU = torch.device("cpu")


class _Net(torch.nn.Module):
    """Conv→BN→ReLU→Dropout→Conv→BN, and an auxiliary head with its own BatchNorm that only
    ``forward_heads`` reaches (as Inf-Net's edge head)."""

    def __init__(self, heads: bool = False):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 3, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(3),
            torch.nn.ReLU(),
            torch.nn.Dropout2d(0.5),
            torch.nn.Conv2d(3, 2, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(2),
        )
        self.aux = torch.nn.Sequential(torch.nn.Conv2d(2, 1, 1), torch.nn.BatchNorm2d(1))
        if heads:
            self.deep_supervision_weights = (1.0, 0.5)

    def forward(self, x):
        return self.body(x)

    def forward_heads(self, x):
        f = self.body(x)
        return [f, self.aux(f)]


def _data(n: int = 11, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g) * 3 + 1


def _stale(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics far from the data's (as after fast-moving weights)."""
    with torch.no_grad():
        for bn in precise_bn.batchnorm_layers(model):
            bn.running_mean.fill_(50.0)
            bn.running_var.fill_(1e-3)
            bn.num_batches_tracked.fill_(7)
    return model


def test_the_statistics_are_update_bns_and_the_hand_computed_batch_averages():
    torch.manual_seed(0)
    model = _stale(_Net())
    ref = _stale(_Net())
    ref.load_state_dict(model.state_dict())
    x = _data()
    cfg = TrainConfig(batch_size=3, seed=5)
    batches = list(precise_bn.batches(x, cfg, CPU, epoch=2))
    # 11 images in batches of 3: 3, 3, 3, 2 (a last batch of one image would be dropped, as in training)
    assert [len(b) for b in batches] == [3, 3, 3, 2]
    model.train()
    rng = torch.get_rng_state()
    assert precise_bn.recompute(model, x, cfg, CPU, epoch=2) == 11
    assert torch.equal(torch.get_rng_state(), rng)  # dropout off: no random number drawn
    assert model.training and all(m.training for m in model.modules())  # modes as they were
    ref.body[3].p = 0.0  # update_bn puts the whole model in train mode: dropout off by hand, as precise BN runs it
    update_bn(batches, ref)
    bn1, bn2 = model.body[1], model.body[5]
    torch.testing.assert_close(bn1.running_mean, ref.body[1].running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn1.running_var, ref.body[1].running_var, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn2.running_mean, ref.body[5].running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn2.running_var, ref.body[5].running_var, rtol=1e-6, atol=1e-6)
    # by hand: the first layer's input is conv1(batch); mean over the batches of each batch's
    # per-channel mean and unbiased variance (every batch weighs the same: momentum None)
    with torch.no_grad():
        feats = [model.body[0](b) for b in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    vars_ = torch.stack([f.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn1.running_mean, means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn1.running_var, vars_, rtol=1e-5, atol=1e-6)
    # momentum and the step count back as they were; the auxiliary head (not reached) kept its values
    assert bn1.momentum == 0.1 and int(bn1.num_batches_tracked) == 7
    assert float(model.aux[1].running_mean) == 50.0 and float(model.aux[1].running_var) == pytest.approx(1e-3)


def test_deep_supervision_refreshes_the_heads_batchnorm_too():
    torch.manual_seed(0)
    model = _stale(_Net(heads=True))
    precise_bn.recompute(model, _data(), TrainConfig(batch_size=4), CPU, epoch=1)
    assert float(model.aux[1].running_mean) != 50.0 and float(model.aux[1].running_var) > 1e-2


def test_the_batches_depend_on_seed_and_epoch_only_and_the_cap_holds():
    x = _data(n=40)
    cfg = TrainConfig(batch_size=4, seed=1)
    a = [b.clone() for b in precise_bn.batches(x, cfg, CPU, epoch=3)]
    torch.manual_seed(123)  # the global RNG plays no part
    b = list(precise_bn.batches(x, cfg, CPU, epoch=3))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    other = list(precise_bn.batches(x, cfg, CPU, epoch=4))
    assert not all(torch.equal(p, q) for p, q in zip(a, other, strict=True))
    capped = TrainConfig(batch_size=4, seed=1, precise_bn_images=10)
    assert [len(b) for b in precise_bn.batches(x, capped, CPU, epoch=3)] == [4, 4, 2]
    assert precise_bn.n_images(TrainConfig(), 5000) == precise_bn.AUTO_IMAGES_CAP == 1024
    assert precise_bn.n_images(TrainConfig(), 68) == 68 and precise_bn.n_images(capped, 5) == 5


def test_a_model_without_batchnorm_is_left_alone_and_false_turns_it_off():
    # every model of the zoo has BatchNorm layers (PR-Net's decoder too, beside its InstanceNorm
    # encoder); a model with InstanceNorm only (a user's, or a future one) has nothing to recompute
    inorm = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    )
    assert not precise_bn.batchnorm_layers(inorm) and not precise_bn.enabled(TrainConfig(precise_bn=True), inorm)
    before = {k: v.clone() for k, v in inorm.state_dict().items()}
    assert precise_bn.recompute(inorm, torch.randn(6, 1, 16, 16), TrainConfig(), CPU, epoch=1) == 0
    assert all(torch.equal(v, before[k]) for k, v in inorm.state_dict().items())
    assert precise_bn.describe(TrainConfig(), inorm, 6) == "off (no BatchNorm layer)"
    assert precise_bn.run(inorm, torch.randn(6, 1, 16, 16), TrainConfig(), CPU, epoch=1) == 0.0
    assert all(precise_bn.batchnorm_layers(create_model(m, in_channels=1, num_classes=1)) for m in ("prnet", "lgnet"))
    model = _stale(_Net())
    assert precise_bn.run(model, _data(), TrainConfig(precise_bn=False), CPU, epoch=1) == 0.0
    assert float(model.body[1].running_mean[0]) == 50.0
    assert precise_bn.describe(TrainConfig(precise_bn=False), model, 11) == "off (train.precise_bn: false)"
    assert precise_bn.describe(TrainConfig(), model, 11) == "on, 11 images"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
        | {"MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    cfg = TrainConfig(device="cpu", batch_size=4, seed=2)
    ddp = setup(cfg)
    try:
        torch.manual_seed(0)
        model = _stale(_Net())
        precise_bn.recompute(model, _data(n=16), cfg, CPU, epoch=1, ddp=ddp)
        torch.save({k: v for k, v in model.state_dict().items() if "running" in k}, f"{out}.{rank}")
    finally:
        ddp.close()


@pytest.mark.slow
def test_every_ddp_rank_ends_with_the_same_statistics(tmp_path):
    """Two gloo ranks, each its half of every batch: identical buffers on both; the first layer's means
    those of one process over the whole batches (means of equal halves average exactly; the variances
    are of each rank's half, as the BatchNorm layers normalise with in DDP training)."""
    import torch.multiprocessing as mp

    out = tmp_path / "bn"
    mp.spawn(_ddp_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    torch.manual_seed(0)
    one = _stale(_Net())
    precise_bn.recompute(one, _data(n=16), TrainConfig(batch_size=4, seed=2), CPU, epoch=1, ddp=SINGLE)
    # the first layer's input does not depend on any normalisation: the means of its halves average to
    # the whole batches' (a later layer's input is normalised with each half's statistics: it differs)
    torch.testing.assert_close(r0["body.1.running_mean"], one.state_dict()["body.1.running_mean"], rtol=1e-5, atol=1e-6)
    assert float(r0["body.1.running_var"][0]) != pytest.approx(1e-3)


@pytest.fixture(scope="module")
def sample64(tmp_path_factory):
    from train_helpers import processed_sample

    return processed_sample(tmp_path_factory, 64)


def _paper(tmp_path, name: str, **train):
    """LG-Net under the paper preset (Adam lr 0.01, batch 4, Eq. 14-15 loss), base 16, 1 epoch."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    paper = dict(model="lgnet", preset="paper", allow_non_paper_size=True, base_channels=16, epochs=1, lr=0.01)
    return load_params(write_params(tmp_path / f"{name}.yaml", uri, **paper, **train))


@pytest.mark.slow
def test_the_paper_recipe_validates_with_fresh_statistics_and_trains_the_same(tmp_path, sample64, capsys):
    """The issue's experiment on the bundled sample (64², 14 training slices, about 4 steps): with the
    running averages (off) the epoch-1 validation loss is thousands of times the training loss
    (measured 21,122 against 0.405); with precise BN it is of its order (0.363). The training itself
    is bitwise the same (no random number drawn, the running statistics play no part in a training
    step): only the BatchNorm buffers and the validation differ."""
    off = train(_paper(tmp_path, "off", precise_bn=False), sample64, tmp_path / "off")
    on = train(_paper(tmp_path, "on"), sample64, tmp_path / "on")
    err = capsys.readouterr().err
    assert "precise BN: off (train.precise_bn: false)" in err and "precise BN: on, 14 images" in err
    (a_row,), (b_row,) = off.history, on.history
    assert a_row["train_loss"] == b_row["train_loss"] and a_row["train_dice"] == b_row["train_dice"]
    assert a_row["val_loss"] > 100 * a_row["train_loss"], off.history
    assert b_row["val_loss"] < 3 * b_row["train_loss"], on.history
    a, b = load_checkpoint(tmp_path / "off" / "checkpoint.pt"), load_checkpoint(tmp_path / "on" / "checkpoint.pt")
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]) != ("running_" in key), key  # only the statistics differ
    # the loop's validation is precise BN's recomputation, then validate: redone by hand on the off run
    from lungseg.artifacts.checkpoint import build_model
    from lungseg.data.dataset import load_split
    from lungseg.losses import create_loss
    from lungseg.training.epoch import validate
    from lungseg.training.presets import paper_loss_options

    model = build_model(a["model_identity"])
    model.load_state_dict(a["model_state"])
    cfg = TrainConfig(seed=a["config"]["seed"], batch_size=a["config"]["batch_size"])  # what precise BN reads
    tr, va = load_split(sample64, "train"), load_split(sample64, "val")
    precise_bn.recompute(model, torch.from_numpy(tr.images), cfg, CPU, epoch=1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, b["model_state"][key]), key
    loss = create_loss("dice_focal", num_classes=1, **paper_loss_options(1))
    x, y = torch.from_numpy(va.images), torch.from_numpy(va.masks).long()
    assert validate(model, loss, x, y, cfg, CPU) == (b_row["val_loss"], b_row["val_dice"])
    # recorded: the setting in the checkpoint, the setting and its resolved value in MLflow
    assert b["config"]["precise_bn"] == "auto" and a["config"]["precise_bn"] is False
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = client.get_run(on.run_id).data.params
    assert params["train.precise_bn"] == "auto" and params["train.precise_bn_resolved"] == "on, 14 images"
    assert params["train.precise_bn_images"] == "auto"
    assert client.get_run(off.run_id).data.params["train.precise_bn_resolved"] == "off (train.precise_bn: false)"


@pytest.mark.parametrize(
    "images, batch, n_train, passed", [(3, 2, 14, 2), (5, 4, 14, 4), ("auto", 4, 5, 4), (6, 2, 14, 6)]
)
def test_the_recorded_image_count_is_the_number_passed(images, batch, n_train, passed):
    """A last batch of one image is dropped as in training: the run recorded the selection ("on, 3 images")
    where 2 were passed (review of #22)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2))
    cfg = TrainConfig(precise_bn_images=images, batch_size=batch, device="cpu")
    x = torch.rand(n_train, 1, 8, 8)
    got = precise_bn.recompute(model, x, cfg, torch.device("cpu"), epoch=1)
    assert got == passed and precise_bn.describe(cfg, model, n_train) == f"on, {passed} images"
