"""Metrics against values computed by hand on tiny arrays; empty-mask rules; input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lungseg.metrics import (
    COLUMNS,
    aggregate,
    boundary,
    dice_per_image_torch,
    hausdorff_2d,
    per_image_metrics,
    per_image_metrics_multiclass,
)

# mask g            probs p                 prediction p >= .5
# 1 1 0 0           .9 .6 .7 0              1 1 1 0
# 1 1 0 0           .4 .8 0  0              0 1 0 0
# 0 0 0 0           0  0  0  .2             0 0 0 0
# 0 0 0 0           0  0  0  0              0 0 0 0
G = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
P = np.array([[0.9, 0.6, 0.7, 0], [0.4, 0.8, 0, 0], [0, 0, 0, 0.2], [0, 0, 0, 0]])
# TP = (0,0),(0,1),(1,1) = 3; FP = (0,2) = 1; FN = (1,0) = 1; TN = 16 − 5 = 11


def test_hand_computed_4x4():
    row = per_image_metrics(P[None], G[None], ids=["a"]).iloc[0]
    assert list(per_image_metrics(P[None], G[None]).columns) == COLUMNS
    assert row["id"] == "a"
    assert (row.tp, row.fp, row.tn, row.fn) == (3, 1, 11, 1)
    assert row.dice == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # 0.75
    assert row.iou == pytest.approx(3 / 5)
    assert row.miou == pytest.approx((3 / 5 + 11 / 13) / 2)  # background IoU = TN/(TN+FP+FN) = 11/13
    assert row.acc == pytest.approx(14 / 16)
    assert row.sen == pytest.approx(3 / 4)
    assert row.spe == pytest.approx(11 / 12)
    # |p − g|: .1 + .4 + .7 + .6 + .2 + .2 = 2.2 over 16 pixels
    assert row.mae == pytest.approx(2.2 / 16)
    # positives {.9, .8, .6, .4}, negatives {.7, .2, 0 ×10}: pairs ranked right: 12 + 12 + 11 + 11 = 46 of 4·12
    assert row.auc == pytest.approx(46 / 48)
    # boundaries: the 2×2 block and the 4-pixel prediction are all boundary (erosion removes every pixel).
    # pred→gt: (0,0) 0, (0,1) 0, (0,2) 1, (1,1) 0;  gt→pred: (0,0) 0, (0,1) 0, (1,0) 1, (1,1) 0
    assert row.hd == pytest.approx(1.0)
    # 95th percentile of [0, 0, 0, 1] (linear): position .95·3 = 2.85 → 0 + .85·(1 − 0)
    assert row.hd95 == pytest.approx(0.85)


def test_threshold_is_inclusive_and_configurable():
    probs = np.array([[[0.5, 0.49], [0.7, 0.0]]])
    masks = np.array([[[1, 1], [0, 0]]])
    r = per_image_metrics(probs, masks).iloc[0]
    assert (r.tp, r.fp, r.tn, r.fn) == (1, 1, 1, 1)  # .5 >= .5 is foreground
    r = per_image_metrics(probs, masks, threshold=0.8).iloc[0]
    assert (r.tp, r.fp, r.tn, r.fn) == (0, 0, 2, 2)


def test_hausdorff_hand_computed_with_spacing():
    # gt: a horizontal line (0,0)..(0,9); pred: the same line plus the pixel (2,11). A 1-pixel line is
    # all boundary. pred→gt: ten zeros and |(2,11) − (0,9)| = √8; gt→pred: all zero.
    gt = np.zeros((3, 12), bool)
    gt[0, :10] = True
    pred = gt.copy()
    pred[2, 11] = True
    hd, hd95 = hausdorff_2d(pred, gt)
    assert hd == pytest.approx(math.sqrt(8))
    # q95 of [0 ×10, √8]: position .95·10 = 9.5 → half-way between 0 and √8
    assert hd95 == pytest.approx(math.sqrt(8) / 2)
    # spacing (row 2 mm, col 1 mm): offset 2 rows, 2 cols → √((2·2)² + (2·1)²) = √20 mm
    hd, hd95 = hausdorff_2d(pred, gt, spacing=(2.0, 1.0))
    assert hd == pytest.approx(math.sqrt(20))
    assert hd95 == pytest.approx(math.sqrt(20) / 2)


def test_boundary_definition():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True  # 3×3 square: 8 ring pixels are boundary, the centre is interior
    b = boundary(m)
    assert b.sum() == 8 and not b[2, 2]
    full = np.ones((3, 3), bool)  # touches the image border: outside counts as background
    assert boundary(full).sum() == 8


def test_empty_mask_rules_and_aggregate():
    z = np.zeros((4, 4))
    one = np.zeros((4, 4))
    one[1, 1] = 1
    probs = np.stack([P, z, z, one])  # image 1: both empty; 2: mask only; 3: prediction only
    masks = np.stack([G, z, one, z]).astype(np.uint8)
    df = per_image_metrics(probs, masks, ids=["hand", "both_empty", "missed", "false_alarm"])
    both, missed, fa = df.iloc[1], df.iloc[2], df.iloc[3]
    assert (both.dice, both.iou, both.hd, both.hd95, both.miou, both.acc) == (1.0, 1.0, 0.0, 0.0, 1.0, 1.0)
    assert math.isnan(both.sen) and both.spe == 1.0 and math.isnan(both.auc)
    assert (missed.dice, missed.iou, missed.sen) == (0.0, 0.0, 0.0)
    assert math.isnan(missed.hd) and math.isnan(missed.hd95)
    assert missed.auc == pytest.approx(0.5)  # all probabilities 0: one positive tied with 15 negatives
    assert (fa.dice, fa.iou) == (0.0, 0.0) and math.isnan(fa.sen) and fa.spe == pytest.approx(15 / 16)
    assert math.isnan(fa.hd) and math.isnan(fa.auc)

    agg = aggregate(df)
    assert agg["n_images"] == 4
    assert agg["hd_undefined"] == 2 and agg["hd_n_undefined"] == 2
    assert agg["hd_mean"] == pytest.approx((1.0 + 0.0) / 2)  # NaN-aware: over the 2 defined images
    assert agg["auc_n_undefined"] == 2 and agg["auc_mean"] == pytest.approx((46 / 48 + 0.5) / 2)
    assert agg["sen_n_undefined"] == 2 and agg["sen_mean"] == pytest.approx((0.75 + 0.0) / 2)
    assert agg["dice_mean"] == pytest.approx((0.75 + 1 + 0 + 0) / 4)
    # pooled: TP 3, FP 1 + 1, FN 1 + 1, TN 11 + 16 + 15 + 15 → Dice 6/10, IoU 3/7
    assert (agg["tp_sum"], agg["fp_sum"], agg["fn_sum"], agg["tn_sum"]) == (3, 2, 2, 57)
    assert agg["dice_pooled"] == pytest.approx(6 / 10)
    assert agg["iou_pooled"] == pytest.approx(3 / 7)
    assert agg["miou_pooled"] == pytest.approx((3 / 7 + 57 / 61) / 2)
    assert agg["acc_pooled"] == pytest.approx(60 / 64)
    assert agg["sen_pooled"] == pytest.approx(3 / 5)
    assert agg["spe_pooled"] == pytest.approx(57 / 59)


def test_mean_over_no_defined_images_is_nan():
    df = per_image_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 3), np.uint8))
    agg = aggregate(df)
    assert math.isnan(agg["auc_mean"]) and agg["auc_n_undefined"] == 2
    assert agg["dice_mean"] == 1.0 and agg["dice_pooled"] == 1.0 and agg["hd_undefined"] == 0


def test_torch_input_and_per_image_spacing():
    probs = torch.from_numpy(np.stack([P, P]))
    masks = torch.from_numpy(np.stack([G, G]))
    df = per_image_metrics(probs, masks, spacing=[[1.0, 1.0], [3.0, 3.0]])
    assert df.hd.tolist() == pytest.approx([1.0, 3.0])
    assert df.dice.tolist() == pytest.approx([0.75, 0.75])


@pytest.mark.parametrize(
    "probs_shape, masks_shape, match",
    [
        ((2, 4, 4), (2, 4, 5), r"\(2, 4, 4\) and masks \(2, 4, 5\)"),
        ((4, 4), (4, 4), r"\(4, 4\)"),
        ((2, 1, 4, 4), (2, 4, 4), r"\(2, 1, 4, 4\)"),
    ],
)
def test_shape_errors(probs_shape, masks_shape, match):
    with pytest.raises(ValueError, match=match):
        per_image_metrics(np.zeros(probs_shape), np.zeros(masks_shape, np.uint8))


def test_value_errors():
    with pytest.raises(ValueError, match="not logits"):
        per_image_metrics(np.full((1, 2, 2), 3.0), np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"0\.\.1; found 0\.\.255"):
        per_image_metrics(np.zeros((1, 2, 2)), np.array([[[0, 255], [0, 0]]], np.uint8))
    with pytest.raises(ValueError, match="ids has 1 entries but there are 2"):
        per_image_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.uint8), ids=["x"])
    with pytest.raises(ValueError, match="spacing"):
        per_image_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.uint8), spacing=(1.0, 0.0))


def test_multiclass_hand_computed():
    # labels g: [[0, 1, 1], [2, 2, 0]]; argmax prediction: [[0, 1, 2], [2, 0, 0]]
    g = np.array([[[0, 1, 1], [2, 2, 0]]])
    pred = np.array([[0, 1, 2], [2, 0, 0]])
    probs = np.eye(3)[pred].transpose(2, 0, 1)[None] * 0.8 + 0.2 / 3
    df = per_image_metrics_multiclass(probs, g, ids=["m"])
    r = df.iloc[0]
    # class 1: TP 1 (0,1), FP 0, FN 1 (0,2) → Dice 2/3, IoU 1/2
    # class 2: TP 1 (1,0), FP 1 (0,2), FN 1 (1,1) → Dice 2/4, IoU 1/3
    assert (r.tp_c1, r.fp_c1, r.fn_c1, r.tp_c2, r.fp_c2, r.fn_c2) == (1, 0, 1, 1, 1, 1)
    assert r.dice_c1 == pytest.approx(2 / 3) and r.iou_c1 == pytest.approx(1 / 2)
    assert r.dice_c2 == pytest.approx(1 / 2) and r.iou_c2 == pytest.approx(1 / 3)
    assert r.dice_mean_fg == pytest.approx((2 / 3 + 1 / 2) / 2)
    # second image where class 2 is absent from both → Dice 1 for it
    g2 = np.array([[[0, 1], [1, 0]]])
    p2 = np.eye(3)[np.array([[0, 1], [0, 0]])].transpose(2, 0, 1)[None]
    agg = aggregate(per_image_metrics_multiclass(p2, g2))
    assert agg["dice_c2_mean"] == 1.0 and agg["dice_c1_mean"] == pytest.approx(2 / 3)
    assert agg["dice_c1_pooled"] == pytest.approx(2 / 3) and agg["dice_c2_pooled"] == 1.0
    with pytest.raises(ValueError, match=r"C >= 2"):
        per_image_metrics_multiclass(np.zeros((1, 1, 2, 2)), np.zeros((1, 2, 2), int))


def test_dice_per_image_torch_matches_rules():
    # image 0 = the 4×4 hand case (Dice .75); 1 = both empty (1); 2 = mask only (0)
    probs = torch.tensor(np.stack([P, np.zeros((4, 4)), np.zeros((4, 4))]), dtype=torch.float32)
    logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))[:, None]
    masks = torch.tensor(np.stack([G, np.zeros((4, 4)), G]), dtype=torch.uint8)
    d = dice_per_image_torch(logits, masks)
    assert d.tolist() == pytest.approx([0.75, 1.0, 0.0])
    # multi-class: the hand case above, logits = log-probabilities
    g = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    lg = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 2], [2, 0, 0]]]), 3).permute(0, 3, 1, 2).float()
    assert dice_per_image_torch(lg, g).tolist() == pytest.approx([(2 / 3 + 1 / 2) / 2])
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\) and masks \(2, 4\)"):
        dice_per_image_torch(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, dtype=torch.long))
