"""nnU-Net's foreground oversampling and fixed iterations per epoch (lungseg.training.sampling), on a toy
mask and on the real MedSeg masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lungseg.training import sampling


@pytest.mark.parametrize(
    ("batch_size", "forced"),
    # nnU-Net: not j < round(b * 0.67): a batch of 1 forces none, of 2 one, of 12 four
    [(1, 0), (2, 1), (3, 1), (4, 1), (8, 3), (12, 4), (16, 5), (32, 11)],
)
def test_forced_positions_are_nnunets_last_third(batch_size, forced):
    f = sampling.forced_positions(batch_size)
    assert int(f.sum()) == forced
    assert not f[: batch_size - forced].any() and f[batch_size - forced :].all()  # always the last ones
    assert [sampling.do_oversample(j, batch_size) for j in range(batch_size)] == f.tolist()


def _check_plan(plan: torch.Tensor, has_fg: np.ndarray, batch_size: int) -> None:
    forced = torch.from_numpy(sampling.forced_positions(batch_size))
    fg = torch.from_numpy(has_fg)[plan]  # (n_iters, batch): does the drawn slice hold foreground?
    assert bool(fg[:, forced].all())  # every forced position holds foreground
    per_batch = fg.double().mean(1)
    assert float(per_batch.min()) >= int(forced.sum()) / batch_size  # the rule, in every batch


def test_toy_mask_every_batch_meets_the_rule_and_free_positions_are_uniform():
    has_fg = np.zeros(100, dtype=bool)
    has_fg[[7, 42]] = True
    plan = sampling.batch_plan(seed=0, epoch=3, n_iters=250, batch_size=12, has_fg=has_fg)
    assert plan.shape == (250, 12) and plan.dtype == torch.int64
    assert int(plan.min()) >= 0 and int(plan.max()) < 100
    _check_plan(plan, has_fg, 12)
    assert set(plan[:, 8:].unique().tolist()) == {7, 42}
    free = plan[:, :8].flatten()
    counts = torch.bincount(free, minlength=100).double()
    assert float(torch.from_numpy(has_fg)[free].double().mean()) < 0.05  # ~2 %: not forced there
    # with replacement, uniform: 2000 draws over 100 slices, 20 expected each
    assert counts.min() > 3 and counts.max() < 45 and (counts > 0).sum() > 95


def test_deterministic_from_seed_and_epoch():
    has_fg = np.arange(50) % 3 == 0
    a = sampling.batch_plan(1, 5, 10, 4, has_fg)
    assert torch.equal(a, sampling.batch_plan(1, 5, 10, 4, has_fg))
    assert not torch.equal(a, sampling.batch_plan(1, 6, 10, 4, has_fg))
    assert not torch.equal(a, sampling.batch_plan(2, 5, 10, 4, has_fg))
    # the plan's stream is not the augmentation's (epoch_seed itself)
    from lungseg.training.setup import epoch_seed

    aug = torch.Generator().manual_seed(epoch_seed(1, 5))
    assert not torch.equal(a, torch.randint(0, 50, (10, 4), generator=aug))


def test_no_oversampling_and_no_foreground_fall_back_to_uniform():
    none = np.zeros(30, dtype=bool)
    plan = sampling.batch_plan(0, 0, 100, 6, none)  # nothing to force: all positions uniform
    assert plan.shape == (100, 6) and len(plan.unique()) == 30
    has_fg = np.arange(30) < 3
    plain = sampling.batch_plan(0, 0, 500, 6, has_fg, percent=0.0)
    assert abs(torch.from_numpy(has_fg)[plain].double().mean().item() - 0.1) < 0.02
    with pytest.raises(ValueError, match="batch_plan needs slices"):
        sampling.batch_plan(0, 0, 1, 2, np.zeros(0, dtype=bool))


def _medseg_tiles(shared_data, tile=64):
    """The 100 real MedSeg infection masks cut into 64² tiles: patches, most without infection."""
    folder = shared_data / "medseg-covid100" / "tr_mask_new"
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])
    n, h, w = masks.shape
    tiles = masks.reshape(n, h // tile, tile, w // tile, tile).transpose(0, 1, 3, 2, 4).reshape(-1, tile, tile)
    return masks, tiles


@pytest.mark.parametrize("batch_size", [2, 12, 32])
def test_real_medseg_masks_every_batch_meets_the_rule(shared_data, batch_size):
    masks, tiles = _medseg_tiles(shared_data)
    slices_fg = sampling.foreground_slices(masks)
    assert int(slices_fg.sum()) == 99  # the README: 99/100 slices positive
    has_fg = sampling.foreground_slices(tiles)
    base = has_fg.mean()
    assert base == 0.31  # 1984 of the 6400 tiles hold infection (99 of the 100 whole slices do)
    plan = sampling.batch_plan(seed=7, epoch=0, n_iters=250, batch_size=batch_size, has_fg=has_fg)
    _check_plan(plan, has_fg, batch_size)
    forced = sampling.forced_positions(batch_size)
    rate = torch.from_numpy(has_fg)[plan].double().mean().item()
    expected = (forced.sum() + (~forced).sum() * base) / batch_size
    assert abs(rate - expected) < 0.03, (rate, expected)


def test_a_batch_of_the_processed_arrays_holds_foreground_where_forced(tiny_data):
    """On the arrays training reads (images.npy / masks.npy of the preprocessed real sample, whose 22
    slices all hold infection), cut into their 16² quadrants as patches: the masks of the batch the plan
    indexes hold foreground at every forced position."""
    masks = np.load(tiny_data / "masks.npy")
    images = np.load(tiny_data / "images.npy")
    assert sampling.foreground_slices(masks).all()
    n, s = masks.shape[0], masks.shape[-1] // 2
    quads = masks.reshape(n, 2, s, 2, s).transpose(0, 1, 3, 2, 4).reshape(-1, s, s)
    quad_x = images.reshape(n, -1, 2, s, 2, s).transpose(0, 2, 4, 1, 3, 5).reshape(n * 4, -1, s, s)
    has_fg = sampling.foreground_slices(quads)
    assert 0 < has_fg.sum() < len(has_fg)
    plan = sampling.batch_plan(seed=0, epoch=1, n_iters=50, batch_size=4, has_fg=has_fg)
    forced = sampling.forced_positions(4)
    for row in plan.numpy():
        batch_x, batch_y = quad_x[row], quads[row]
        assert batch_x.shape == (4, images.shape[1], s, s) and batch_y.shape == (4, s, s)
        assert all(batch_y[j].any() for j in np.flatnonzero(forced))
