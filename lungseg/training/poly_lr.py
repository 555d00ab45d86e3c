"""nnU-Net's learning-rate schedule: ``initial_lr · (1 − epoch / num_epochs) ^ 0.9``, set at the start
of each epoch.

nnU-Net v2: ``nnunetv2/training/lr_scheduler/polylr.py`` (``PolyLRScheduler.step``:
``new_lr = initial_lr * (1 - current_step / max_steps) ** exponent``), built in
``nnUNetTrainer.configure_optimizers`` with ``max_steps = num_epochs`` and stepped in
``on_train_epoch_start`` with the current epoch, beside ``torch.optim.SGD(lr=1e-2, momentum=0.99,
nesterov=True, weight_decay=3e-5)``. torch's :class:`torch.optim.lr_scheduler.PolynomialLR` with
``power=0.9`` and ``total_iters=num_epochs``, stepped once per epoch, gives the same values
(tests/training/test_poly_lr.py); it is used here because it saves and restores with the optimizer.
"""

from __future__ import annotations

import torch

POLY_EXPONENT = 0.9
INITIAL_LR = 1e-2
MOMENTUM = 0.99
WEIGHT_DECAY = 3e-5


def poly_lr(initial_lr: float, epoch: int, num_epochs: int, exponent: float = POLY_EXPONENT) -> float:
    """nnU-Net's formula for the learning rate of epoch ``epoch`` (0-based)."""
    return initial_lr * (1 - epoch / num_epochs) ** exponent


def nnunet_optimizer(params, lr: float = INITIAL_LR, weight_decay: float = WEIGHT_DECAY) -> torch.optim.SGD:
    """``nnUNetTrainer.configure_optimizers``'s optimizer: SGD, Nesterov momentum 0.99."""
    return torch.optim.SGD(params, lr, momentum=MOMENTUM, nesterov=True, weight_decay=weight_decay)


def poly_scheduler(optimizer: torch.optim.Optimizer, num_epochs: int) -> torch.optim.lr_scheduler.PolynomialLR:
    """:class:`~torch.optim.lr_scheduler.PolynomialLR` (power 0.9 over ``num_epochs``), to step once
    per epoch: epoch ``e`` then trains at :func:`poly_lr` ``(lr, e, num_epochs)``."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=num_epochs, power=POLY_EXPONENT)


def rebase_poly(scheduler: torch.optim.lr_scheduler.PolynomialLR, optimizer: torch.optim.Optimizer, num_epochs: int):
    """A restored poly schedule re-planned for ``num_epochs`` (``--resume`` with another ``train.epochs``):
    from the epoch it stopped after (``last_epoch``) on, each epoch ``e`` trains at
    :func:`poly_lr` ``(initial lr, e, num_epochs)`` — the value a run planned for ``num_epochs``
    has at that epoch. Without it a finished run continued with more epochs trains at lr 0
    (``(1 − e/planned)^0.9`` reached 0 and ``PolynomialLR`` stays there past ``total_iters``).
    Returns ``(old total, the lr of the next epoch)``."""
    old, done = scheduler.total_iters, scheduler.last_epoch
    if done >= num_epochs:  # nothing left to train under the new plan: keep the schedule as it was
        return old, optimizer.param_groups[0]["lr"]
    scheduler.total_iters = num_epochs
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = poly_lr(base, done, num_epochs, scheduler.power)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return old, optimizer.param_groups[0]["lr"]
