"""Metrics on real MedSeg / COVID-SemiSeg masks against MONAI and scikit-learn.

Ground truth: real expert masks. Prediction: a deformed copy (shifted / eroded / dilated with
scipy.ndimage), turned into probabilities by a Gaussian blur so that AUC and MAE are non-trivial.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, compute_hausdorff_distance
from PIL import Image
from scipy import ndimage
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    mean_absolute_error,
    recall_score,
    roc_auc_score,
)

from lungseg.metrics import aggregate, per_image_metrics, per_image_metrics_multiclass

# MONAI's own deprecation notice from inside compute_hausdorff_distance (not our code)
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

SLICES = ["0000", "0002", "0003", "0005"]  # 35 781, 818, 16 177, 4 653 foreground pixels
SPACING = (0.8, 0.65)  # anisotropic (row_mm, col_mm), to check the units path


@pytest.fixture(scope="module")
def real_case(shared_data):
    d = shared_data / "medseg-covid100" / "tr_mask_new"
    gts = np.stack([np.array(Image.open(d / f"tr_mask_{s}.png")) for s in SLICES]).astype(np.uint8)
    assert set(np.unique(gts)) == {0, 1}
    probs = []
    for i, g in enumerate(gts.astype(bool)):
        if i % 2 == 0:
            deformed = ndimage.shift(g.astype(float), (3, -5), order=0) > 0.5
            deformed = ndimage.binary_erosion(deformed, iterations=2)
        else:
            deformed = ndimage.binary_dilation(g, iterations=3)
            deformed[:40, :40] = True  # a far false positive, so HD ≫ HD95
        probs.append(np.clip(ndimage.gaussian_filter(deformed.astype(float), sigma=2.0), 0.0, 1.0))
    return np.stack(probs), gts


def _onehot(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32))[:, None]


def test_dice_iou_against_monai(real_case):
    probs, gts = real_case
    df = per_image_metrics(probs, gts)
    pred = probs >= 0.5
    dm = DiceMetric(include_background=True, reduction="none")(_onehot(pred), _onehot(gts))[:, 0]
    iou = MeanIoU(include_background=True, reduction="none")(_onehot(pred), _onehot(gts))[:, 0]
    assert df.dice.to_numpy() == pytest.approx(dm.numpy(), abs=1e-6)
    assert df.iou.to_numpy() == pytest.approx(iou.numpy(), abs=1e-6)
    assert 0.3 < df.dice.min() and df.dice.max() < 0.99  # a real, imperfect prediction
    # mIoU: mean of foreground and background IoU (MONAI MeanIoU on two one-hot channels)
    two = lambda m: torch.from_numpy(np.stack([~m, m], 1).astype(np.float32))  # noqa: E731
    m2 = MeanIoU(include_background=True, reduction="none")(two(pred), two(gts.astype(bool)))  # (N, 2)
    assert df.miou.to_numpy() == pytest.approx(m2.mean(1).numpy(), abs=1e-6)


@pytest.mark.parametrize("spacing", [None, SPACING])
def test_hausdorff_against_monai(real_case, spacing):
    probs, gts = real_case
    df = per_image_metrics(probs, gts, spacing=spacing)
    pred = _onehot(probs >= 0.5)
    y = _onehot(gts)
    hd = compute_hausdorff_distance(pred, y, include_background=True, spacing=spacing)[:, 0]
    hd95 = compute_hausdorff_distance(pred, y, include_background=True, percentile=95, spacing=spacing)[:, 0]
    assert df.hd.to_numpy() == pytest.approx(hd.numpy(), rel=1e-5)
    assert df.hd95.to_numpy() == pytest.approx(hd95.numpy(), rel=1e-5)
    metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    if spacing is None:
        assert df.hd95.to_numpy() == pytest.approx(metric(pred, y)[:, 0].numpy(), rel=1e-5)
    assert (df.hd > df.hd95).all() and df.hd.iloc[1] > 100  # the far false positive of slice 0002


def test_confusion_based_against_sklearn(real_case):
    probs, gts = real_case
    df = per_image_metrics(probs, gts)
    for i, row in df.iterrows():
        g, p = gts[i].ravel(), probs[i].ravel()
        pred = (p >= 0.5).astype(np.uint8)
        tn, fp, fn, tp = confusion_matrix(g, pred, labels=[0, 1]).ravel()
        assert (row.tp, row.fp, row.tn, row.fn) == (tp, fp, tn, fn)
        assert row.acc == pytest.approx(accuracy_score(g, pred))
        assert row.sen == pytest.approx(recall_score(g, pred, pos_label=1))
        assert row.spe == pytest.approx(recall_score(g, pred, pos_label=0))
        assert row.auc == pytest.approx(roc_auc_score(g, p))
        assert row.mae == pytest.approx(mean_absolute_error(g, p))
        assert 0.5 < row.auc < 1.0


def test_pooled_differs_from_mean_on_real_masks(real_case):
    probs, gts = real_case
    agg = aggregate(per_image_metrics(probs, gts))
    g, pred = gts.ravel(), (probs >= 0.5).ravel().astype(np.uint8)
    # pooled = the metric over all pixels of all images at once
    assert agg["dice_pooled"] == pytest.approx(f1_score(g, pred))
    assert agg["iou_pooled"] == pytest.approx(jaccard_score(g, pred))
    assert agg["acc_pooled"] == pytest.approx(accuracy_score(g, pred))
    assert agg["sen_pooled"] == pytest.approx(recall_score(g, pred))
    # the large lesion of slice 0000 dominates the pooled value; the small ones weigh equally in the mean
    assert abs(agg["dice_pooled"] - agg["dice_mean"]) > 0.02
    assert agg["n_images"] == len(SLICES) and agg["hd_undefined"] == 0


def test_real_empty_slice(shared_data):
    """tr_mask_0048 is the one MedSeg slice without infection."""
    g = np.array(Image.open(shared_data / "medseg-covid100" / "tr_mask_new" / "tr_mask_0048.png"))[None]
    assert g.max() == 0
    clean = per_image_metrics(np.zeros(g.shape), g).iloc[0]
    assert (clean.dice, clean.iou, clean.hd) == (1.0, 1.0, 0.0)
    fa = np.zeros(g.shape)
    fa[0, 200:210, 200:210] = 0.9
    row = per_image_metrics(fa, g).iloc[0]
    assert (row.dice, row.iou, row.fp) == (0.0, 0.0, 100) and math.isnan(row.hd) and math.isnan(row.auc)


def test_multiclass_against_monai(shared_data):
    d = shared_data / "covid-semiseg" / "Dataset" / "TestingSet" / "MultiClassInfection-Test" / "GT"
    files = sorted(d.glob("*.png"))[:3]
    assert files, f"no multi-class masks under {d}"
    masks = [np.array(Image.open(f)) for f in files]  # palette PNGs: the indices are the labels
    h, w = min(m.shape[0] for m in masks), min(m.shape[1] for m in masks)
    gts = np.stack([m[:h, :w] for m in masks]).astype(np.int64)
    assert set(np.unique(gts)) <= {0, 1, 2} and gts.max() == 2
    pred = np.stack([ndimage.grey_dilation(g, size=(5, 5)) for g in gts])  # grows both lesion classes
    probs = np.eye(3)[pred].transpose(0, 3, 1, 2)
    df = per_image_metrics_multiclass(probs, gts)
    oh = lambda x: torch.from_numpy(np.eye(3)[x].transpose(0, 3, 1, 2).astype(np.float32))  # noqa: E731
    ref = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(oh(pred), oh(gts))
    assert df[["dice_c1", "dice_c2"]].to_numpy() == pytest.approx(ref.numpy(), abs=1e-6)
