"""One epoch: the data staged where it trains, the epoch's batches, the steps, the read-back of the
values and the validation (see ``docs/training.md``: "Exact resume", "Progress", "Device").

Public, so that the benchmarks (``bench/bench_epoch.py``, ``bench/bench_ddp.py``) and the tests run
exactly what :func:`lungseg.training.train` runs.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from lungseg.artifacts.core import compile_failure
from lungseg.config import TrainConfig
from lungseg.errors import ConfigError, TrainingError
from lungseg.losses import DeepSupervisionLoss
from lungseg.metrics import dice_per_image_torch
from lungseg.training.augment import augment
from lungseg.training.distributed import SINGLE
from lungseg.training.nnunet_augment import augment as nnunet_augment
from lungseg.training.nnunet_augment import intensity_space as nnunet_space
from lungseg.training.progress import Progress
from lungseg.training.sampling import planned_batches
from lungseg.training.setup import autocast, epoch_seed

log = logging.getLogger(__name__)

#: ``train.data_on_device: auto`` copies the data to the GPU when it takes at most this share of the
#: free memory (measured once the model is there): the rest is for activations, gradients, Adam's
#: moments, cuDNN workspaces and the allocator's slack
DATA_ON_DEVICE_SHARE = 0.25


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite: the message names the epoch, the step and the learning rate
    (the training loop adds which checkpoint the run can resume from)."""

    def __init__(self, value: float, epoch: int, step: int, lr: float):
        self.value, self.epoch, self.step, self.lr = value, epoch, step, lr
        super().__init__(f"loss became {value} at epoch {epoch}, step {step} (lr {lr:g})")


def train_epoch(model, loss_fn, optimizer, x, y, cfg: TrainConfig, device, epoch: int, ddp=None) -> dict:
    """One epoch over the shuffled training split; its row of the history.

    ``x``/``y``: the split as :func:`stage_data` gives it — on ``device`` (batches are indexed there)
    or in host memory (each batch is copied to ``device``); augmentation runs on ``device`` either way.

    Losses and Dice stay on the device as 0-d tensors and are read back at a sync point only — every
    step on the CPU (where reading is free and a non-finite loss is caught before its update), on CUDA
    only when a progress line or bar update is due and at the end of the epoch (no per-step host sync;
    a non-finite loss is then reported at the first step it occurred): :class:`NonFiniteLoss`.

    ``model`` is what :meth:`Distributed.wrap` returned (the model itself without ``torchrun``).
    Under DDP each rank trains on its part of every global batch, the values read back are the
    global batch's (all-reduced), the read-back points do not depend on the clock (every step on the
    CPU, the epoch end on CUDA: every rank must reach each collective at the same step), and only
    rank 0 shows progress."""
    ddp = ddp or SINGLE
    use_cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    torch.manual_seed(ddp.dropout_seed(epoch_seed(cfg.seed, epoch)))  # dropout randomness of this epoch
    model.train()
    n = len(x)
    starts = batch_starts(n, cfg.batch_size, ddp)
    inner = ddp.unwrap(model)  # the model itself (DDP wraps it)
    heads = getattr(inner, "deep_supervision_weights", None)
    if heads:  # Inf-Net, AWSnet: every head is trained (lungseg.losses.deep_supervision), metrics on the main one
        loss_fn = DeepSupervisionLoss(loss_fn, heads, getattr(inner, "deep_supervision_targets", None))
    images = sum(min(cfg.batch_size, n - s) for s in starts)
    if cfg.iterations_per_epoch:  # issue #25: a fixed number of batches, drawn with replacement (nnunet)
        starts, images = [0] * cfg.iterations_per_epoch, cfg.iterations_per_epoch * cfg.batch_size
    progress = Progress(
        epoch, cfg, len(starts), images, sync_every_step=not use_cuda, sync_on_clock=not ddp.active, show=ddp.is_main
    )
    losses, dices = [], []  # python floats, read back at sync points
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (loss, Dice) on the device, not yet read
    t0 = time.perf_counter()
    space = nnunet_space(getattr(inner, "input_norm", None), x, y) if cfg.augment == "nnunet" else None  # #25
    for step, (xb, yb, size) in enumerate(epoch_batches(x, y, cfg, device, gen, ddp, space), 1):
        # under DDP the wrapped module's forward returns the heads (never model.module.forward_heads:
        # DDP synchronises the gradients only of what runs through its own forward)
        outputs = forward(model if ddp.active or not heads else model.forward_heads, xb, cfg, device)
        logits = outputs[0] if heads else outputs
        loss = loss_fn([o.float() for o in outputs] if heads else logits.float(), yb)
        if not use_cuda:  # CPU: caught before the update (reading is free); DDP: the global batch's loss
            value = ddp.mean(loss)
            if not math.isfinite(value):
                non_finite(value, epoch, step, optimizer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:  # issue #25: nnU-Net clips the gradients' norm at 12
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        pending.append((loss.detach(), dice_per_image_torch(logits.detach().float(), yb).mean()))
        if progress.sync_due(step):
            read_back(pending, losses, dices, epoch, step, optimizer, ddp=ddp)
            progress.show(step, size, losses, dices)
        else:
            progress.count(size)
    read_back(pending, losses, dices, epoch, len(starts), optimizer, ddp=ddp)
    progress.close()
    return {
        "epoch": epoch,
        "train_loss": float(np.mean(losses)),
        "train_dice": float(np.mean(dices)),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def forward(fn, xb: torch.Tensor, cfg: TrainConfig, device: torch.device):
    """``fn(xb)`` (the model or its ``forward_heads``) at ``train.precision``. With ``train.compile``
    the first call of each batch shape compiles; a compile failure is a :class:`TrainingError` naming
    the setting (never a silent fall-back to eager)."""
    try:
        with autocast(cfg, device):
            return fn(xb)
    except Exception as exc:
        reason = compile_failure(exc) if cfg.compile else None
        if reason:
            raise TrainingError(f"train.compile: torch.compile failed ({reason}); set train.compile: false") from exc
        raise


def batch_starts(n: int, batch_size: int, ddp) -> list[int]:
    """Where an epoch's (global) batches start in the permutation of ``n`` images."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()  # a last batch of one image breaks BatchNorm statistics: dropped this epoch
    return ddp.even_batches(starts, n, batch_size)  # DDP: only global batches that split evenly


def epoch_batches(x, y, cfg: TrainConfig, device: torch.device, gen: torch.Generator, ddp=None, space=None):
    """An epoch's training batches, in order, as ``(images, masks, global batch size)``: the
    permutation and the augmentation drawn from ``gen`` (the epoch's CPU generator, seeded with
    ``(seed, epoch)``), each batch indexed where ``x``/``y`` live, moved to ``device`` if it is not
    there, augmented on ``device``, cut to this rank's part (DDP) and, on CUDA with
    ``channels_last``, laid out so — exactly what :func:`train_epoch` trains on (the epoch
    benchmark stages the same batches with it). ``space``: the z-score nnU-Net's intensity
    augmentation acts in (:func:`lungseg.training.nnunet_augment.intensity_space`; from ``x``/``y``'s
    foreground when not given)."""
    ddp = ddp or SINGLE
    if cfg.augment == "nnunet" and space is None:  # issue #25: nnU-Net augments z-scored data
        space = nnunet_space(None, x, y)
    n = len(x)
    starts = batch_starts(n, cfg.batch_size, ddp)
    order = torch.randperm(n, generator=gen)
    if order.device != x.device:
        order = order.to(x.device, non_blocking=True)  # data on the GPU: index it there
    plan = planned_batches(y, cfg, gen) if cfg.iterations_per_epoch else None  # issue #25 (sampling.py)
    for step, start in enumerate(starts if plan is None else range(len(plan))):
        idx = order[start : start + cfg.batch_size] if plan is None else plan[step]
        xb, yb = x[idx], y[idx]
        if xb.device != device:  # data in host memory, training on CUDA: the batch goes over first
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        yb = yb.long()  # (masks on the GPU are kept as uint8)
        if cfg.augment:  # on the batch's device, with parameters drawn on the CPU from gen
            xb, yb = nnunet_augment(xb, yb, gen, space=space) if cfg.augment == "nnunet" else augment(xb, yb, gen)
        xb, yb = ddp.shard(xb), ddp.shard(yb)  # DDP: this rank's part of the (augmented) global batch
        if device.type == "cuda" and cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, yb, len(idx)


def read_back(pending: list, losses: list[float], dices: list[float], epoch: int, step: int, optimizer, ddp=None):
    """Move the pending device values into ``losses``/``dices`` (one host sync); a non-finite loss
    among them is a :class:`NonFiniteLoss` naming its step. Under DDP the values are averaged over
    the ranks (one collective; equal parts per rank, so the global batch's means) — every rank must
    call this at the same step with the same number of pending values."""
    if not pending:
        return
    values = (ddp or SINGLE).mean_many(torch.stack([v for pair in pending for v in pair]))
    step_losses, step_dices = values[0::2], values[1::2]
    first = step - len(pending) + 1
    pending.clear()
    for i, (loss, dice) in enumerate(zip(step_losses, step_dices)):
        if not math.isfinite(loss):
            non_finite(loss, epoch, first + i, optimizer)
        losses.append(loss)
        dices.append(dice)


def non_finite(value: float, epoch: int, step: int, optimizer) -> None:
    """Raise :class:`NonFiniteLoss` for ``value`` at ``epoch``/``step`` (with the current learning rate)."""
    raise NonFiniteLoss(value, epoch, step, optimizer.param_groups[0]["lr"])


@torch.no_grad()
def validate(model, loss_fn, x, y, cfg: TrainConfig, device) -> tuple[float, float]:
    """(mean loss, Dice mean over images) on the validation split (``x``/``y`` as :func:`stage_data`
    gives them). The values stay on the device until the end: one read-back, not one per batch."""
    model.eval()
    losses, sizes, dices = [], [], []
    bs = max(cfg.batch_size, 8)
    for start in range(0, len(x), bs):
        xb = x[start : start + bs].to(device, non_blocking=True)
        yb = y[start : start + bs].to(device, non_blocking=True).long()
        if device.type == "cuda" and cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        logits = forward(model, xb, cfg, device).float()  # at the training's precision (docs/training.md)
        losses.append(loss_fn(logits, yb).detach())
        sizes.append(len(xb))
        dices.append(dice_per_image_torch(logits, yb))
    # the same float arithmetic as reading each batch's loss at once: float(loss) * n, summed in order
    total = sum(value * n for value, n in zip(torch.stack(losses).tolist(), sizes))
    return float(total / len(x)), float(torch.cat(dices).mean())


def keep_on_device(setting: bool | str, need: int, free: int) -> bool:
    """``train.data_on_device`` decided for ``need`` bytes of data and ``free`` bytes of GPU memory."""
    if isinstance(setting, bool):
        return setting
    return need <= DATA_ON_DEVICE_SHARE * free


def stage_data(train_set, val_set, cfg: TrainConfig, device: torch.device, *, announce: bool = True):
    """``(x_train, y_train, x_val, y_val)``: the splits as the loop indexes them.

    On the CPU: the arrays as tensors (no copy), masks as int64 — what the loop always used. On CUDA,
    with ``train.data_on_device`` ``true``, or ``auto`` and the four arrays taking at most
    :data:`DATA_ON_DEVICE_SHARE` of the GPU's free memory: copied to the GPU once, masks kept uint8
    (a fifth of the int64 size; each batch is widened there). Otherwise they stay in host memory and
    each batch is copied over. ``announce``: log which it is (rank 0 under DDP).
    ``ConfigError`` when ``true`` is asked and they do not fit."""
    x_train, x_val = torch.from_numpy(train_set.images), torch.from_numpy(val_set.images)
    if device.type != "cuda":
        return x_train, torch.from_numpy(train_set.masks).long(), x_val, torch.from_numpy(val_set.masks).long()
    y_train, y_val = torch.from_numpy(train_set.masks), torch.from_numpy(val_set.masks)
    arrays = (x_train, y_train, x_val, y_val)
    need = sum(t.numel() * t.element_size() for t in arrays)
    free, _ = torch.cuda.mem_get_info(device)
    gib = 2.0**30
    sizes = f"{need / gib:.2f} GiB; {free / gib:.1f} GiB free on {device}"
    if not keep_on_device(cfg.data_on_device, need, free):
        if announce:
            why = "train.data_on_device: false" if cfg.data_on_device is False else "more than a quarter of it"
            log.info(f"lungseg: training data kept in host memory ({sizes}: {why}); batches are copied")
        return arrays
    try:
        staged = tuple(t.to(device) for t in arrays)
    except torch.cuda.OutOfMemoryError as exc:
        raise ConfigError(
            f"train.data_on_device: true, but the training and validation data ({sizes}) do not fit: set auto or false"
        ) from exc
    if announce:
        log.info(f"lungseg: training data on {device} ({sizes} before)")
    return staged


__all__ = [
    "DATA_ON_DEVICE_SHARE",
    "NonFiniteLoss",
    "batch_starts",
    "epoch_batches",
    "forward",
    "keep_on_device",
    "non_finite",
    "read_back",
    "stage_data",
    "train_epoch",
    "validate",
]
