"""Precise BatchNorm statistics (#22): before each validation the BatchNorm running statistics are
recomputed over training batches, so that what is validated, selected as ``best.pt`` and saved is
the model with the statistics of its current weights (see ``docs/training.md``, "BatchNorm
statistics (precise BN)").

Why: a BatchNorm layer's running averages (momentum 0.1) lag weights that move fast. Under the
paper's recipe (Adam lr 0.01, batch 4) LG-Net's epoch-1 validation loss in eval mode was 24,094
where its training loss was 0.34: the running variance of a layer was 2.9 where the inputs it
then saw had variance 6.9e10.

How (what ``torch.optim.swa_utils.update_bn`` and fvcore's ``update_bn_stats`` do): every
BatchNorm layer reset, its ``momentum`` set to None (a cumulative average: every batch counts
equally), the model in eval mode except its BatchNorm layers (dropout off: no random number is
drawn, the global RNG is left as it was), one forward pass without gradients over the batches, the
momentum put back. The batches: ``train.batch_size`` images each (the batch statistics the layers
normalise with in training), un-augmented (what validation and inference feed the model), in a
permutation drawn from a generator seeded with ``(seed, epoch)`` only — so a resumed run recomputes
exactly what the uninterrupted one did. ``train.precise_bn_images`` caps their number (``auto``: the
whole training split, at most :data:`AUTO_IMAGES_CAP`). Deep-supervised models run
``forward_heads`` (the BatchNorm layers of their training-only heads are refreshed too); a layer
that no batch reaches keeps its statistics.

Under DDP every rank takes its part of each (global) batch, as in training, and the ranks'
statistics are averaged (each rank counts the same number of batches, so the average is that of
all batches): every rank ends with the same buffers.
"""

from __future__ import annotations

import logging
import time

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from lungseg.config import TrainConfig
from lungseg.training.augment import augment as augment_batch
from lungseg.training.distributed import SINGLE
from lungseg.training.epoch import batch_starts
from lungseg.training.setup import autocast, epoch_seed

log = logging.getLogger(__name__)

#: ``train.precise_bn_images: auto``: the whole training split, at most this many images per epoch
AUTO_IMAGES_CAP = 1024

#: added to the epoch's seed: precise BN draws its own permutation, not the training batches' one
SEED_STREAM = 0x9E3779B9


def batchnorm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` (``BatchNorm1d/2d/3d`` and ``SyncBatchNorm``) that keep
    running statistics; InstanceNorm (which derives from ``_NormBase``, not ``_BatchNorm``) is not one."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def enabled(cfg: TrainConfig, model: torch.nn.Module) -> bool:
    """``train.precise_bn`` decided for ``model``: ``auto`` and ``true`` are on for a model with
    BatchNorm layers; a model without any has nothing to recompute."""
    return cfg.precise_bn is not False and bool(batchnorm_layers(model))


def n_images(cfg: TrainConfig, n_train: int) -> int:
    """How many of the ``n_train`` training images one recomputation passes over."""
    cap = AUTO_IMAGES_CAP if cfg.precise_bn_images == "auto" else int(cfg.precise_bn_images)
    return min(n_train, cap)


def describe(cfg: TrainConfig, model: torch.nn.Module, n_train: int) -> str:
    """What the run records of precise BN: ``off (...)`` or ``on, N images``."""
    if cfg.precise_bn is False:
        return "off (train.precise_bn: false)"
    if not batchnorm_layers(model):
        return "off (no BatchNorm layer)"
    return f"on, {passed_images(cfg, n_train)} images"


def passed_images(cfg: TrainConfig, n_train: int, ddp=None) -> int:
    """How many images one recomputation passes through the model: the :func:`n_images` selected, less a
    last batch of one image, which :func:`batches` drops as training does (the run records this number,
    not the selection: a review found "on, 3 images" recorded for 2 passed)."""
    m = n_images(cfg, n_train)
    return sum(min(cfg.batch_size, m - start) for start in batch_starts(m, cfg.batch_size, ddp or SINGLE))


def batches(x, cfg: TrainConfig, device: torch.device, epoch: int, ddp=None, *, y=None, augment: bool = False):
    """The batches of epoch ``epoch``'s recomputation, each on ``device`` and cut to this rank's
    part: ``train.batch_size`` images of a permutation of the training split drawn from a generator
    seeded with ``(seed, epoch)``, the first :func:`n_images` of it; batches laid out as the
    training's (:func:`lungseg.training.epoch.batch_starts`: a last batch of one image dropped;
    under DDP only batches every rank takes an equal part of). ``augment`` (with ``y``): the
    training augmentation, drawn from the same generator (measured against, not the default)."""
    ddp = ddp or SINGLE
    gen = torch.Generator().manual_seed((epoch_seed(cfg.seed, epoch) + SEED_STREAM) % 2**63)
    order = torch.randperm(len(x), generator=gen)[: n_images(cfg, len(x))]
    if order.device != x.device:
        order = order.to(x.device)
    for start in batch_starts(len(order), cfg.batch_size, ddp):
        idx = order[start : start + cfg.batch_size]
        xb = x[idx].to(device, non_blocking=True)
        if augment:
            xb, _ = augment_batch(xb, y[idx].to(device).long(), gen)
        xb = ddp.shard(xb)
        if device.type == "cuda" and cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb


@torch.no_grad()
def recompute(model: torch.nn.Module, x, cfg: TrainConfig, device: torch.device, epoch: int, ddp=None, **kw) -> int:
    """Recompute the running statistics of ``model``'s BatchNorm layers over :func:`batches`
    (``model``: the model itself, not its DDP wrapper); the number of images passed (0: no
    BatchNorm layer, nothing done). The modules' train/eval modes are left as they were."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    ddp = ddp or SINGLE
    modes = {m: m.training for m in model.modules()}
    saved = [
        (bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in layers
    ]
    model.eval()
    for bn in layers:
        bn.train()
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    forward = model.forward_heads if getattr(model, "deep_supervision_weights", None) else model
    images = 0
    try:
        for xb in batches(x, cfg, device, epoch, ddp, **kw):
            with autocast(cfg, device):  # train.precision, as the train step (#24)
                forward(xb)
            images += len(xb)
        _average_over_ranks(layers, ddp)
    finally:
        for bn, (momentum, mean, var, count) in zip(layers, saved):
            if not int(bn.num_batches_tracked):  # no batch reached it (or none was run): as it was
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)  # the count of training steps, as before
            bn.momentum = momentum
        for module, training in modes.items():
            module.train(training)
    return images


def _average_over_ranks(layers: list[_BatchNorm], ddp) -> None:
    """Under DDP: every layer's statistics averaged over the ranks (one collective, in float64)."""
    if not ddp.active:
        return
    flat = torch.cat([torch.cat([bn.running_mean.double(), bn.running_var.double()]) for bn in layers])
    mean = torch.tensor(ddp.mean_many(flat), dtype=torch.float64)
    at = 0
    for bn in layers:
        c = bn.running_mean.numel()
        bn.running_mean.copy_(mean[at : at + c])
        bn.running_var.copy_(mean[at + c : at + 2 * c])
        at += 2 * c


def run(model: torch.nn.Module, x, cfg: TrainConfig, device: torch.device, epoch: int, ddp=None) -> float:
    """:func:`recompute` when ``train.precise_bn`` is on for ``model``; the seconds it took (0.0 when off)."""
    if not enabled(cfg, model):
        return 0.0
    t0 = time.perf_counter()
    recompute(model, x, cfg, device, epoch, ddp)
    return time.perf_counter() - t0


__all__ = [
    "AUTO_IMAGES_CAP",
    "SEED_STREAM",
    "batches",
    "batchnorm_layers",
    "describe",
    "enabled",
    "n_images",
    "recompute",
    "run",
]
