"""nnU-Net's 2-D augmentation (lungseg.training.nnunet_augment): each transform checked on its own
against a hand computation or an independent reference (scipy, torch.rot90), the probabilities over
many seeded draws, the masks spatially transformed only, determinism for a seed."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from lungseg.training import nnunet_augment as na


def _off(b: int, c: int = 1, **on) -> na.NnunetAugmentParams:
    """Parameters with every transform switched off, then ``on``'s fields replaced."""
    z = torch.zeros(b, dtype=torch.bool)
    zc = torch.zeros(b, c, dtype=torch.bool)
    ones, ones_c = torch.ones(b, dtype=torch.float64), torch.ones(b, c, dtype=torch.float64)
    base = na.NnunetAugmentParams(
        rotate=z, angle=0 * ones, scale_on=z, scale=ones, noise_on=z, noise_std=0 * ones, noise_seed=0,
        blur_on=zc, blur_sigma=torch.full((b, c, 2), 0.5, dtype=torch.float64), brightness_on=z,
        brightness=ones_c, contrast_on=z, contrast=ones_c, lowres_on=zc, lowres_scale=ones_c,
        gamma_inv_on=z, gamma_inv=ones_c, gamma_on=z, gamma=ones_c, mirror=torch.zeros(b, 2, dtype=torch.bool),
    )  # fmt: skip
    return dataclasses.replace(base, **on)


def _real(tiny_data, n=8):
    x = torch.from_numpy(np.load(tiny_data / "images.npy")[:n]).float()
    y = torch.from_numpy(np.load(tiny_data / "masks.npy")[:n]).long()
    return x, y


def _disk(size=64, r=12):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2) <= r * r).long()


def test_deterministic_for_a_seed_and_labels_stay_labels(tiny_data):
    x, y = _real(tiny_data)
    a = na.augment(x, y, torch.Generator().manual_seed(5))
    b = na.augment(x, y, torch.Generator().manual_seed(5))
    c = na.augment(x, y, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == x.shape and a[1].shape == y.shape and a[1].dtype == y.dtype
    assert set(a[1].unique().tolist()) <= {0, 1}


def test_probabilities_and_ranges_over_many_draws():
    n = 40_000
    p = na.draw((n, 1, 64, 64), torch.Generator().manual_seed(0))

    def rate(flags, expected):
        sd = math.sqrt(expected * (1 - expected) / flags.numel())
        assert abs(flags.double().mean().item() - expected) < 5 * sd, (flags.double().mean().item(), expected)

    rate(p.rotate, 0.2)
    rate(p.scale_on, 0.2)
    rate(p.noise_on, 0.1)
    rate(p.blur_on, 0.2 * 0.5)
    rate(p.brightness_on, 0.15)
    rate(p.contrast_on, 0.15)
    rate(p.lowres_on, 0.25 * 0.5)
    rate(p.gamma_inv_on, 0.1)
    rate(p.gamma_on, 0.3)
    rate(p.mirror[:, 0], 0.5)
    rate(p.mirror[:, 1], 0.5)
    rate(p.spatial(), 1 - 0.8 * 0.8)  # rotation and scaling drawn independently
    assert p.angle.abs().max() <= math.pi and p.angle.abs().max() > 0.99 * math.pi  # ±180° on a square slice
    assert 0.7 <= p.scale.min() and p.scale.max() <= 1.4
    assert 0 <= p.noise_std.min() and p.noise_std.max() <= 0.1
    assert 0.5 <= p.blur_sigma.min() and p.blur_sigma.max() <= 1.0
    assert 0.5 <= p.lowres_scale.min() and p.lowres_scale.max() <= 1.0
    for f, (lo, hi) in ((p.brightness, (0.75, 1.25)), (p.contrast, (0.75, 1.25)), (p.gamma, (0.7, 1.5))):
        assert lo <= f.min() and f.max() <= hi
        rate(f < 1, 0.5)  # BGContrast: half the factors below 1, half above, whatever the range's centre
    assert 0.85 < p.gamma[p.gamma < 1].mean() < 0.86 and 1.24 < p.gamma[p.gamma > 1].mean() < 1.26
    # elongated slices: ±15° only (nnU-Net: max/min side > 1.5)
    assert na.rotation_deg(64, 128) == 15.0 and na.rotation_deg(64, 96) == 180.0
    q = na.draw((2000, 1, 40, 128), torch.Generator().manual_seed(1))
    assert q.angle.abs().max() <= math.radians(15)


def test_same_generator_state_same_params_whatever_the_batch_holds():
    a = na.draw((4, 1, 32, 32), torch.Generator().manual_seed(9))
    b = na.draw((4, 1, 32, 32), torch.Generator().manual_seed(9))
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb


def test_mirroring_flips_image_and_mask_identically(tiny_data):
    x, y = _real(tiny_data, 4)
    m = torch.tensor([[False, True], [True, False], [True, True], [False, False]])
    xa, ya = na.apply(x, y, _off(4, mirror=m))
    for i, dims in enumerate([(-1,), (-2,), (-2, -1), ()]):
        ref_x = x[i].flip(dims) if dims else x[i]
        ref_y = y[i].flip(dims) if dims else y[i]
        assert torch.equal(xa[i], ref_x) and torch.equal(ya[i], ref_y)


def test_rotation_by_90_degrees_is_rot90_for_image_and_mask(tiny_data):
    x, y = _real(tiny_data, 2)
    on = torch.ones(2, dtype=torch.bool)
    xa, ya = na.apply(x, y, _off(2, rotate=on, angle=torch.full((2,), math.pi / 2, dtype=torch.float64)))
    # output pixel (x, y) samples the input at (-y, x) (normalised coordinates): out[i, j] = in[j, n-1-i],
    # torch.rot90 over (H, W) with k=1; pixel centres land on pixel centres (align_corners=False)
    torch.testing.assert_close(xa, torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)
    assert torch.equal(ya, torch.rot90(y, 1, (1, 2)))


def test_scaling_shrinks_or_grows_the_mask_and_keeps_it_binary():
    y = _disk(64, 12)[None].repeat(2, 1, 1)
    x = y[:, None].float()
    on = torch.ones(2, dtype=torch.bool)
    params = _off(2, scale_on=on, scale=torch.tensor([1.4, 0.7], dtype=torch.float64))
    xa, ya = na.apply(x, y, params)
    area, a_small, a_big = float(y[0].sum()), float(ya[0].sum()), float(ya[1].sum())
    assert set(ya.unique().tolist()) == {0, 1}
    # scale > 1 samples a larger field: objects get smaller by 1/s² in area (nnU-Net: "larger numbers =
    # smaller objects"); within the pixel staircase of a 12-px disk
    assert abs(a_small / area - 1 / 1.4**2) < 0.06 and abs(a_big / area - 1 / 0.7**2) < 0.12
    # the mask is the image's thresholded twin: bilinear image > 0.5 where the one-hot arg-max says 1
    assert torch.equal((xa[:, 0] > 0.5).long(), ya)


def test_masks_get_only_the_spatial_transforms(tiny_data):
    x, y = _real(tiny_data, 6)
    b = 6
    on, on_c = torch.ones(b, dtype=torch.bool), torch.ones(b, 1, dtype=torch.bool)
    params = _off(
        b, noise_on=on, noise_std=torch.full((b,), 0.05, dtype=torch.float64), blur_on=on_c, brightness_on=on,
        brightness=torch.full((b, 1), 1.2, dtype=torch.float64), contrast_on=on,
        contrast=torch.full((b, 1), 0.8, dtype=torch.float64), lowres_on=on_c,
        lowres_scale=torch.full((b, 1), 0.6, dtype=torch.float64), gamma_on=on,
        gamma=torch.full((b, 1), 1.3, dtype=torch.float64), gamma_inv_on=on,
        gamma_inv=torch.full((b, 1), 0.8, dtype=torch.float64),
    )  # fmt: skip
    xa, ya = na.apply(x, y, params)
    assert torch.equal(ya, y) and not torch.allclose(xa, x)


def test_untouched_images_are_bitwise_unchanged(tiny_data):
    x, y = _real(tiny_data, 3)
    xa, ya = na.apply(x, y, _off(3))
    assert torch.equal(xa, x) and torch.equal(ya, y)


def test_noise_has_the_drawn_std_and_is_shared_by_the_channels():
    x = torch.zeros(2, 2, 128, 128)
    y = torch.zeros(2, 128, 128, dtype=torch.long)
    params = _off(
        2, 2, noise_on=torch.tensor([True, False]), noise_std=torch.tensor([0.08, 0.08], dtype=torch.float64),
        noise_seed=123,
    )  # fmt: skip
    xa, _ = na.apply(x, y, params)
    assert abs(xa[0].std().item() - 0.08) < 0.003 and abs(xa[0].mean().item()) < 0.003
    assert torch.equal(xa[0, 0], xa[0, 1]) and torch.equal(xa[1], x[1])
    assert torch.equal(xa, na.apply(x, y, params)[0])  # the field comes from noise_seed


@pytest.mark.parametrize("sigma", [0.5, 0.6, 0.75, 0.9, 1.0])
def test_gaussian_kernel_is_batchgenerators_build_kernel(sigma):
    k = na._round_to_nearest_odd(sigma * 6 + 0.5)
    assert k in (3, 5, 7)
    half = (k - 1) / 2
    pdf = np.exp(-0.5 * (np.linspace(-half, half, k) / sigma) ** 2)
    ref = np.zeros(7)
    ref[(7 - k) // 2 : (7 - k) // 2 + k] = pdf / pdf.sum()
    np.testing.assert_allclose(na.gaussian_kernel(sigma).numpy(), ref, rtol=0, atol=1e-15)


def test_blur_is_a_separable_gaussian_with_reflect_padding(tiny_data):
    x, y = _real(tiny_data, 2)
    x = torch.cat([x, x.flip(-1)], 1).double()  # 2 channels: the second one is not picked
    sig = torch.tensor([[[0.55, 0.95], [0.5, 0.5]], [[1.0, 0.7], [0.5, 0.5]]], dtype=torch.float64)
    params = _off(2, 2, blur_on=torch.tensor([[True, False], [True, False]]), blur_sigma=sig)
    xa, _ = na.apply(x, y, params)
    for i in range(2):
        ref = x[i, 0].numpy()
        for axis in (0, 1):  # numpy's 'reflect' pad is scipy's 'mirror'
            s = float(sig[i, 0, axis])
            k = na._round_to_nearest_odd(s * 6 + 0.5)
            w = np.exp(-0.5 * (np.arange(k) - (k - 1) / 2) ** 2 / s**2)
            ref = ndi.correlate1d(ref, w / w.sum(), axis=axis, mode="mirror")
        np.testing.assert_allclose(xa[i, 0].numpy(), ref, atol=1e-12)
        assert torch.equal(xa[i, 1], x[i, 1])


def test_brightness_and_contrast_by_hand():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.zeros(2, 16, 16, dtype=torch.long)
    on = torch.ones(2, dtype=torch.bool)
    f = torch.tensor([[0.8], [1.2]], dtype=torch.float64)
    xb, _ = na.apply(x, y, _off(2, brightness_on=on, brightness=f))
    torch.testing.assert_close(xb, x * f[:, :, None, None])
    xc, _ = na.apply(x, y, _off(2, contrast_on=on, contrast=f))
    for i in range(2):
        v = x[i, 0].numpy()
        ref = np.clip((v - v.mean()) * f[i, 0].item() + v.mean(), v.min(), v.max())  # preserve_range
        np.testing.assert_allclose(xc[i, 0].numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_by_hand_keeps_mean_and_std(invert):
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.zeros(1, 16, 16, dtype=torch.long)
    g = torch.tensor([[1.4]], dtype=torch.float64)
    on = torch.ones(1, dtype=torch.bool)
    kw = {"gamma_inv_on": on, "gamma_inv": g} if invert else {"gamma_on": on, "gamma": g}
    xa, _ = na.apply(x, y, _off(1, **kw))
    v = -x[0, 0].numpy() if invert else x[0, 0].numpy()
    lo, rng = v.min(), v.max() - v.min()
    out = ((v - lo) / rng) ** 1.4 * rng + lo
    out = (out - out.mean()) * (v.std(ddof=1) / out.std(ddof=1)) + v.mean()
    ref = -out if invert else out
    np.testing.assert_allclose(xa[0, 0].numpy(), ref, atol=1e-12)
    assert abs(xa.mean() - x.mean()) < 1e-12 and abs(xa.std() - x.std()) < 1e-12
    assert not torch.allclose(xa, x)


def test_low_resolution_by_hand(tiny_data):
    x, y = _real(tiny_data, 2)
    s = torch.tensor([[0.5], [0.77]], dtype=torch.float64)
    xa, _ = na.apply(x, y, _off(2, lowres_on=torch.tensor([[True], [False]]), lowres_scale=s))
    h = x.shape[-1]
    # nearest-exact down to round(32·0.5) = 16 takes pixel 2i+1 (the centre rule: floor((i + .5)·2));
    # bilinear back up (align_corners=False)
    small = x[0:1, :, 1::2, 1::2]
    ref = torch.nn.functional.interpolate(small, [h, h], mode="bilinear", align_corners=False)
    torch.testing.assert_close(xa[0:1], ref, atol=1e-6, rtol=0)
    assert torch.equal(xa[1], x[1])


def test_a_mild_real_batch_keeps_the_image_content(tiny_data):
    """Over a seeded real batch: most images changed, the foreground area within the scale range."""
    x, y = _real(tiny_data, 16)
    xa, ya = na.augment(x, y, torch.Generator().manual_seed(2))
    changed = [(not torch.equal(xa[i], x[i])) for i in range(16)]
    assert sum(changed) >= 8
    fg0, fg1 = y.sum((1, 2)).double(), ya.sum((1, 2)).double()
    keep = fg0 > 20
    ratio = fg1[keep] / fg0[keep]
    assert bool(((ratio > 1 / 1.4**2 - 0.15) & (ratio < 1 / 0.7**2 + 0.3)).all()), ratio


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_except_the_noise_field(tiny_data):
    x, y = _real(tiny_data, 16)
    gen_seed = 4
    params = na.draw(x.shape, torch.Generator().manual_seed(gen_seed))
    params = dataclasses.replace(params, noise_on=torch.zeros_like(params.noise_on))
    xc, yc = na.apply(x, y, params)
    xg, yg = na.apply(x.cuda(), y.cuda(), params)
    assert xg.device.type == "cuda"
    torch.testing.assert_close(xg.cpu(), xc, atol=1e-4, rtol=1e-4)
    assert (yg.cpu() != yc).float().mean() < 1e-3


def _lung_like(b=2, size=128):
    """Stored [0, 1] slices whose foreground (a disk) has mean 0.45 and std 0.12, background 0.1."""
    g = torch.Generator().manual_seed(3)
    y = _disk(size, 30).expand(b, -1, -1).clone()
    x = torch.full((b, 1, size, size), 0.1, dtype=torch.float64)
    fg = y[:, None].bool()
    x[fg] = (0.45 + 0.12 * torch.randn(int(fg.sum()), generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


def test_intensity_transforms_act_in_z_units_as_nnunets_on_z_scored_data():
    """Review of #25: nnU-Net's noise σ and brightness factor act on z-scored data (its preprocessing
    normalises first), so σ 0.1 is 0.1 foreground std and ×1.25 keeps the foreground mean (z 0) at 0."""
    x, y = _lung_like()
    space = na.intensity_space(None, x, y)
    v = x[:, 0][y > 0]
    assert space.mean == pytest.approx(float(v.mean()), abs=1e-12)
    assert space.std == pytest.approx(float(v.std(correction=0)), abs=1e-12)  # np.std, nnU-Net's fingerprint
    assert space.source == "training foreground"
    on = torch.tensor([True, True])
    noise = _off(2, noise_on=on, noise_std=torch.tensor([0.1, 0.1], dtype=torch.float64), noise_seed=7)
    xa, _ = na.apply(x, y, noise, space=space)
    added_z = (xa - x) / space.std
    assert float(added_z.std()) == pytest.approx(0.1, abs=0.003)  # nnU-Net: noise std 0.1 in z units
    bright = _off(2, brightness_on=on, brightness=torch.tensor([[1.25], [1.25]], dtype=torch.float64))
    xb, _ = na.apply(x, y, bright, space=space)
    z_in, z_out = space.to_z(x), space.to_z(xb)
    torch.testing.assert_close(z_out, 1.25 * z_in)  # the multiplication acts on z
    fg = y[:, None] > 0
    shift = float(z_out[fg].mean() - z_in[fg].mean())
    assert abs(shift) < 1e-9  # the foreground mean (z 0) does not move; ×1.25 on [0, 1] moved it by +0.94 std
    assert float(z_out[fg].std() / z_in[fg].std()) == pytest.approx(1.25, abs=1e-9)


def test_a_ct_zscore_model_augments_in_its_recorded_space(monkeypatch, tiny_data):
    """The space is the model's input_norm record (clip at the percentiles, its mean and std)."""
    record = {"scheme": "ct", "mean": 0.4, "std": 0.2, "percentile_00_5": 0.1, "percentile_99_5": 0.8}
    x, y = _real(tiny_data, 4)
    space = na.intensity_space(record, x, y)
    assert (space.mean, space.std, space.lo, space.hi, space.source) == (0.4, 0.2, 0.1, 0.8, "input_norm")
    t = torch.tensor([[[[0.0, 0.5, 0.9]]]])
    torch.testing.assert_close(space.to_z(t), torch.tensor([[[[-1.5, 0.5, 2.0]]]]))
    torch.testing.assert_close(space.from_z(space.to_z(t)), t.clamp(0.1, 0.8))


def test_the_training_loop_gives_the_augmentation_the_models_space(monkeypatch, tiny_data):
    from lungseg.config import TrainConfig
    from lungseg.losses import create_loss
    from lungseg.models import create_recorded
    from lungseg.training import epoch as ep

    record = {"scheme": "ct", "mean": 0.4, "std": 0.2, "percentile_00_5": 0.1, "percentile_99_5": 0.8}
    seen = []

    def spy(xb, yb, gen, num_classes=None, space=None):
        seen.append(space)
        return xb, yb

    monkeypatch.setattr(ep, "nnunet_augment", spy)
    x, y = _real(tiny_data, 4)
    cfg = TrainConfig(augment="nnunet", batch_size=2, epochs=1, iterations_per_epoch=1, oversample_foreground=0.0)
    for norm, want in ((record, (0.4, 0.2)), (None, None)):
        seen.clear()
        kw = {"in_channels": 1, "num_classes": 1, "base_channels": 4}
        net = create_recorded({"name": "unet", "kwargs": kw, **({"input_norm": norm} if norm else {})})
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        ep.train_epoch(net, create_loss("bce_dice"), opt, x, y, cfg, torch.device("cpu"), 1)
        got = na.intensity_space(None, x, y) if want is None else na.IntensitySpace(*want, 0.1, 0.8, "input_norm")
        assert seen == [got]
