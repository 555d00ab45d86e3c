"""nnU-Net's CT normalisation (lungseg.data.normalize): statistics by hand and against nnU-Net's own
formulas (fingerprint_extractor.py, default_normalization_schemes.py, re-typed below) on real CT in HU
and real MedSeg slices; the record round-trips through JSON and is applied identically."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lungseg.data import normalize
from lungseg.errors import DataError


# ---- nnU-Net v2's code, re-typed as the reference (no nnunetv2 dependency) -------------------------
def _nnunet_collect(segmentation, images, seed=1234, num_samples=10000):
    """DatasetFingerprintExtractor.collect_foreground_intensities (one channel): the sampled values."""
    rs = np.random.RandomState(seed)
    fg = images[0][segmentation[0] > 0]
    return rs.choice(fg, num_samples, replace=True) if len(fg) > 0 else []


def _nnunet_fingerprint(per_case):
    """DatasetFingerprintExtractor.run: pooled statistics of the concatenated samples."""
    v = np.concatenate(per_case)
    p005, _median, p995 = np.percentile(v, np.array((0.5, 50.0, 99.5)))
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "percentile_00_5": float(p005),
            "percentile_99_5": float(p995)}  # fmt: skip


def _nnunet_ct_normalization(image, props):
    """CTNormalization.run."""
    image = image.astype(np.float32, copy=False)
    np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
    image -= props["mean"]
    image /= max(props["std"], 1e-8)
    return image


# -----------------------------------------------------------------------------------------------------


def test_statistics_by_hand():
    """Foreground values 0..100 over two slices: percentiles 0.5 / 99.5 (linear), mean 50, population
    std √((101² − 1) / 12) = √850; background values (−1000) never count."""
    images = np.full((2, 11, 11), -1000.0)
    masks = np.zeros((2, 11, 11), dtype=np.uint8)
    flat_i, flat_m = images.reshape(2, -1), masks.reshape(2, -1)
    flat_i[0, :51], flat_m[0, :51] = np.arange(51), 1
    flat_i[1, 10:60], flat_m[1, 10:60] = np.arange(51, 101), 2  # any label > 0 is foreground
    s = normalize.compute_ct_stats(images, masks)
    assert (s.percentile_00_5, s.percentile_99_5, s.mean, s.n_foreground) == (0.5, 99.5, 50.0, 101)
    assert s.std == pytest.approx(math.sqrt(850.0), rel=1e-12)
    out = normalize.apply_ct_norm(np.array([-1000.0, 0.5, 50.0, 99.5, 3000.0]), s)
    expected = np.array([0.5 - 50, 0.5 - 50, 0.0, 99.5 - 50, 99.5 - 50]) / math.sqrt(850.0)
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-6)
    assert out.dtype == np.float32


def _kaggle_hu(shared_data):
    d = shared_data / "kaggle-lungs" / "fullres-sample"
    img = tifffile.imread(d / "image_ID_0000_Z_0142.tif").astype(np.float32)  # HU, −932…1054
    mask = (tifffile.imread(d / "mask_ID_0000_Z_0142.tif") > 0).astype(np.uint8)  # lung field
    return img, mask


def _medseg(shared_data, n=6):
    d = shared_data / "medseg-covid100"
    names = sorted((d / "tr_im").glob("*.png"))[:n]
    imgs = np.stack([np.asarray(Image.open(p).convert("L")) for p in names]).astype(np.float32)
    masks = np.stack([np.asarray(Image.open(d / "tr_mask_new" / p.name.replace("tr_im", "tr_mask"))) for p in names])
    return imgs, masks


def test_sampling_mode_is_nnunets_fingerprint_exactly_on_real_data(shared_data):
    hu, lung = _kaggle_hu(shared_data)
    imgs, masks = _medseg(shared_data)
    for images, segs in ((hu[None], lung[None]), (imgs, masks)):
        k = 20_000
        ours = normalize.compute_ct_stats(images, segs, samples_per_case=k)
        ref = _nnunet_fingerprint([_nnunet_collect(s[None], i[None], num_samples=k) for i, s in zip(images, segs)])
        for key, val in ref.items():
            assert getattr(ours, key) == pytest.approx(val, rel=1e-12, abs=1e-9), key
        assert ours.n_foreground == k * len(images)
        for i in images:  # the application: bitwise CTNormalization.run
            assert np.array_equal(normalize.apply_ct_norm(i, ours), _nnunet_ct_normalization(i.copy(), ref))


def test_exact_mode_on_real_hu_matches_numpy_and_lands_in_the_lung_range(shared_data):
    hu, lung = _kaggle_hu(shared_data)
    s = normalize.compute_ct_stats(hu[None], lung[None])
    fg = hu[lung > 0].astype(np.float64)
    assert s.n_foreground == fg.size == int(lung.sum())
    # float32 images: the statistics come out of float32 arithmetic, as nnU-Net's do
    assert (s.mean, s.std) == (pytest.approx(fg.mean(), rel=1e-7), pytest.approx(fg.std(), rel=1e-6))
    assert s.percentile_00_5 == pytest.approx(np.percentile(fg, 0.5))
    assert s.percentile_99_5 == pytest.approx(np.percentile(fg, 99.5))
    assert -1000 < s.percentile_00_5 < s.mean < -300 < s.percentile_99_5  # aerated lung, vessels at the top
    # the bootstrap of nnU-Net with many samples estimates the same numbers
    boot = normalize.compute_ct_stats(hu[None], lung[None], samples_per_case=400_000)
    assert abs(boot.mean - s.mean) < 0.01 * s.std and abs(boot.std - s.std) < 0.01 * s.std
    out = normalize.apply_ct_norm(hu, s)[lung > 0]
    assert abs(float(out.mean())) < 0.05 and 0.9 < float(out.std()) < 1.0  # clipping trims the tails


def test_record_round_trips_through_json_and_is_applied_identically(shared_data):
    imgs, masks = _medseg(shared_data)
    s = normalize.compute_ct_stats(imgs[:, None], masks)  # (N, 1, H, W) accepted
    text = json.dumps(s.to_dict())
    back = normalize.CTNormStats.from_dict(json.loads(text))
    assert back == s and json.loads(text)["scheme"] == "ct"
    assert np.array_equal(normalize.apply_ct_norm(imgs, back), normalize.apply_ct_norm(imgs, s))
    t = normalize.apply_ct_norm_torch(torch.from_numpy(imgs), back)
    np.testing.assert_allclose(t.numpy(), normalize.apply_ct_norm(imgs, s), rtol=1e-6, atol=1e-6)


def test_bad_records_and_no_foreground_are_one_line_errors():
    good = normalize.CTNormStats(1.0, 2.0, -1.0, 3.0, 10).to_dict()
    for bad, match in (
        ({**good, "scheme": "hu"}, "expected scheme 'ct'"),
        ({k: v for k, v in good.items() if k != "std"}, "missing std"),
        ({**good, "std": float("nan")}, "bad values"),
        ({**good, "percentile_00_5": 5.0}, "bad values"),
    ):
        with pytest.raises(DataError, match=match):
            normalize.CTNormStats.from_dict(bad, source="model/serving.json")
    with pytest.raises(DataError, match="no foreground pixel"):
        normalize.compute_ct_stats(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="differ"):
        normalize.compute_ct_stats(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
