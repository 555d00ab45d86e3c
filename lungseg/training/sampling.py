"""nnU-Net's batch sampling for 2-D slices: a fixed number of iterations per epoch, each batch drawn
with replacement, its last third forced to hold foreground.

nnU-Net v2 (``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py``, ``nnUNetTrainer.__init__``):
``num_iterations_per_epoch = 250``, ``oversample_foreground_percent = 0.33``. Its data loader
(``nnunetv2/training/dataloading/base_data_loader.py``, ``nnUNetDataLoaderBase``) is a batchgenerators
``DataLoader`` with ``infinite=True``, whose ``get_indices_infinite`` draws each batch uniformly *with
replacement* (``np.random.choice(indices, batch_size, replace=True)``); position ``j`` of a batch must
hold foreground when ``_oversample_last_XX_percent(j)``: ``not j < round(batch_size * (1 - 0.33))``
(:func:`do_oversample`, the same rounding: a batch of 2 forces 1, of 12 forces 4).
``nnUNetDataLoader2D.generate_train_batch`` then picks, for a forced position, a slice of the drawn
case that holds a foreground class.

Here an item is a slice, not a case (a volume), so a forced position draws uniformly among the
slices that hold foreground, and a free position uniformly among all slices. When no slice holds
foreground the forced positions fall back to all slices, as nnU-Net falls back to a random crop.

:func:`batch_plan` gives an epoch's ``(n_iters, batch_size)`` slice indices. Training
(:func:`planned_batches`, called by ``lungseg.training.epoch.epoch_batches``) draws the plan from the
epoch's CPU generator, seeded with ``(seed, epoch)``, right after the epoch's permutation and before
the augmentation, which goes on drawing from the same generator: one stream shared with the
augmentation (not a stream of its own), fixed by ``(seed, epoch)``, so a resumed run sees the same
batches and the same augmentation. Called without a generator, :func:`batch_plan` uses
:func:`plan_generator` (``epoch_seed(seed, epoch) + PLAN_STREAM``), a stream of its own.
"""

from __future__ import annotations

import numpy as np
import torch

from lungseg.training.setup import epoch_seed

OVERSAMPLE_FOREGROUND_PERCENT = 0.33
NUM_ITERATIONS_PER_EPOCH = 250
#: added to the epoch's seed for :func:`batch_plan` called without a generator (not the training's
#: draw, which takes the epoch generator it shares with the augmentation: module docstring)
PLAN_STREAM = 0x5A3C_96E1


def do_oversample(sample_idx: int, batch_size: int, percent: float = OVERSAMPLE_FOREGROUND_PERCENT) -> bool:
    """nnU-Net's ``_oversample_last_XX_percent``: must position ``sample_idx`` hold foreground?"""
    return not sample_idx < round(batch_size * (1 - percent))


def forced_positions(batch_size: int, percent: float = OVERSAMPLE_FOREGROUND_PERCENT) -> np.ndarray:
    """(batch_size,) bool: the positions :func:`do_oversample` forces (always the last ones)."""
    return np.array([do_oversample(j, batch_size, percent) for j in range(batch_size)], dtype=bool)


def plan_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of epoch ``epoch``'s plan."""
    return torch.Generator().manual_seed((epoch_seed(seed, epoch) + PLAN_STREAM) % 2**63)


def batch_plan(
    seed: int,
    epoch: int,
    n_iters: int,
    batch_size: int,
    has_fg: np.ndarray | torch.Tensor,
    percent: float = OVERSAMPLE_FOREGROUND_PERCENT,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(n_iters, batch_size)`` int64 slice indices for one epoch: every position drawn with
    replacement, uniformly among all slices, except the forced positions (:func:`forced_positions`),
    drawn uniformly among the slices where ``has_fg`` (one bool per slice) is true.

    Deterministic from ``(seed, epoch)`` (or from ``generator``'s state when one is given: the
    training loop's epoch generator); ``percent=0`` is uniform sampling with replacement."""
    fg = torch.as_tensor(np.asarray(has_fg, dtype=bool))
    n = fg.numel()
    if n == 0 or n_iters < 0 or batch_size < 1:
        raise ValueError(
            f"batch_plan needs slices, n_iters >= 0 and batch_size >= 1 (got {n}, {n_iters}, {batch_size})"
        )
    gen = generator if generator is not None else plan_generator(seed, epoch)
    plan = torch.randint(0, n, (n_iters, batch_size), generator=gen)
    fg_idx = torch.nonzero(fg).flatten()
    forced = torch.from_numpy(forced_positions(batch_size, percent))
    pick = torch.randint(0, max(len(fg_idx), 1), (n_iters, int(forced.sum())), generator=gen)
    if len(fg_idx) > 0:
        plan[:, forced] = fg_idx[pick]
    return plan


def foreground_slices(masks: np.ndarray) -> np.ndarray:
    """(N,) bool: slices of ``masks`` ``(N, H, W)`` with any non-background pixel."""
    return np.asarray(masks).reshape(len(masks), -1).any(axis=1)


def planned_batches(y: torch.Tensor, cfg, gen: torch.Generator) -> torch.Tensor:
    """``train.iterations_per_epoch`` > 0 (``train.preset: nnunet``): the epoch's ``(n_iters,
    batch_size)`` slice indices on ``y``'s device — :func:`batch_plan` with
    ``train.oversample_foreground``, the slices with foreground read from the masks ``y`` ``(N, H,
    W)``, drawn from ``gen`` (the epoch's CPU generator, seeded with ``(seed, epoch)``: a resumed run
    draws the same batches)."""
    has_fg = (y.reshape(len(y), -1) > 0).any(dim=1).cpu().numpy()
    plan = batch_plan(0, 0, cfg.iterations_per_epoch, cfg.batch_size, has_fg, cfg.oversample_foreground, gen)
    return plan.to(y.device) if plan.device != y.device else plan
