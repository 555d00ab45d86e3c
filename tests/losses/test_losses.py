"""Losses against hand-computed values on tiny tensors and against MONAI / torch references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss, TverskyLoss

from lungseg.losses import BCEDiceLoss, DiceFocalLoss, create_loss, default_loss_for, list_losses

S = 1e-5  # MONAI's default smooth_nr = smooth_dr
F32 = 1e-6  # MONAI's FocalLoss computes in float32 even for float64 input


def _binary_case():
    """One 2×2 image. Logits chosen so that p = sigmoid(logit) = [[0.5, 0.75], [0.25, 0.5]]; mask [[1, 1], [0, 0]]."""
    logits = torch.tensor([[[[0.0, math.log(3.0)], [-math.log(3.0), 0.0]]]], dtype=torch.float64)
    masks = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.long)
    return logits, masks


# ---------- hand-computed binary values ----------
# p = [.5, .75, .25, .5], g = [1, 1, 0, 0]
# TP = Σ p·g = .5 + .75 = 1.25;  FP = Σ p·(1−g) = .25 + .5 = .75;  FN = Σ (1−p)·g = .5 + .25 = .75
# Tversky(α=β=.5) = (TP + S) / (TP + .5·FP + .5·FN + S) = (1.25 + S) / (2.0 + S)  → loss = 1 − that ≈ 0.375
# soft Dice       = (2·TP + S) / (Σp + Σg + S)        = (2.5 + S) / (4.0 + S)   → loss ≈ 0.375
# p_t (probability of the true class) = [.5, .75, .75, .5]
# focal = mean of −(1 − p_t)²·ln p_t = (2·.25·ln 2 + 2·.0625·ln(4/3)) / 4
# BCE   = mean of −ln p_t           = (2·ln 2 + 2·ln(4/3)) / 4
TVERSKY_HAND = 1 - (1.25 + S) / (2.0 + S)
DICE_HAND = 1 - (2.5 + S) / (4.0 + S)
FOCAL_HAND = (2 * 0.25 * math.log(2) + 2 * 0.0625 * math.log(4 / 3)) / 4
BCE_HAND = (2 * math.log(2) + 2 * math.log(4 / 3)) / 4


def test_dice_focal_binary_hand_computed():
    logits, masks = _binary_case()
    loss = create_loss("dice_focal")
    parts = loss.components(logits, masks)
    assert parts["tversky"].item() == pytest.approx(TVERSKY_HAND, abs=1e-12)
    assert parts["focal"].item() == pytest.approx(FOCAL_HAND, abs=F32)
    total = 0.3 * TVERSKY_HAND + 0.7 * FOCAL_HAND  # ≈ 0.3·0.375 + 0.7·0.095633 ≈ 0.17944
    assert loss(logits, masks).item() == pytest.approx(total, abs=F32)
    assert total == pytest.approx(0.17944, abs=1e-5)


def test_bce_dice_binary_hand_computed():
    logits, masks = _binary_case()
    value = create_loss("bce_dice")(logits, masks).item()
    assert value == pytest.approx(BCE_HAND + DICE_HAND, abs=1e-12)  # ≈ 0.49041 + 0.375
    assert value == pytest.approx(0.86541, abs=1e-5)


def _multiclass_case():
    """One 1×2 image, C = 3; logits = log-probabilities so that softmax gives exactly
    pixel a: (.5, .25, .25) with label 0; pixel b: (.2, .6, .2) with label 1."""
    p = torch.tensor([[0.5, 0.2], [0.25, 0.6], [0.25, 0.2]], dtype=torch.float64)  # (C, W)
    logits = p.log().reshape(1, 3, 1, 2)
    masks = torch.tensor([[[0, 1]]], dtype=torch.uint8)
    return logits, masks


def test_dice_focal_multiclass_hand_computed():
    logits, masks = _multiclass_case()
    # per-class Tversky(α=β=.5), per class c: TP = Σ p_c g_c, FP = Σ p_c (1−g_c), FN = Σ (1−p_c) g_c
    # c0: TP .5, FP .2, FN .5 → (.5+S)/(.5+.35+S);  c1: TP .6, FP .25, FN .4 → (.6+S)/(.6+.325+S)
    # c2: TP 0, FP .45, FN 0  → S/(.225+S)
    t = [(0.5 + S) / (0.85 + S), (0.6 + S) / (0.925 + S), S / (0.225 + S)]
    tversky = sum(1 - x for x in t) / 3
    # focal over all B·C·H·W = 6 elements, non-zero only at the true class:
    # a: (1−.5)²·ln 2;  b: (1−.6)²·(−ln .6)
    focal = (0.25 * math.log(2) + 0.16 * -math.log(0.6)) / 6
    loss = create_loss("dice_focal", num_classes=3)
    parts = loss.components(logits, masks)
    assert parts["tversky"].item() == pytest.approx(tversky, abs=1e-12)
    assert parts["focal"].item() == pytest.approx(focal, abs=F32)
    assert loss(logits, masks).item() == pytest.approx(0.3 * tversky + 0.7 * focal, abs=F32)


def test_bce_dice_multiclass_hand_computed():
    logits, masks = _multiclass_case()
    # CE = mean over pixels of −ln p_true = (ln 2 − ln .6) / 2
    ce = (math.log(2) - math.log(0.6)) / 2
    # soft Dice per class (2·Σpg + S)/(Σp + Σg + S): c0 (1+S)/(1.7+S), c1 (1.2+S)/(1.85+S), c2 S/(.45+S)
    d = [(1.0 + S) / (1.7 + S), (1.2 + S) / (1.85 + S), S / (0.45 + S)]
    dice = sum(1 - x for x in d) / 3
    value = create_loss("bce_dice", num_classes=3)(logits, masks).item()
    assert value == pytest.approx(ce + dice, abs=1e-12)


# ---------- α = β = 0.5 Tversky is soft Dice ----------
def test_tversky_half_half_equals_soft_dice():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).double()
    s = 1e-3
    # (TP + s/2)/(TP + ½FP + ½FN + s/2) = (2TP + s)/(2TP + FP + FN + s): exact with halved smoothing …
    tv = TverskyLoss(sigmoid=True, alpha=0.5, beta=0.5, smooth_nr=s / 2, smooth_dr=s / 2)(logits, target)
    dl = DiceLoss(sigmoid=True, smooth_nr=s, smooth_dr=s)(logits, target)
    assert tv.item() == pytest.approx(dl.item(), abs=1e-12)
    # … and equal up to the smoothing otherwise (our default)
    ours = DiceFocalLoss().components(logits, target[:, 0].long())["tversky"]
    assert ours.item() == pytest.approx(DiceLoss(sigmoid=True)(logits, target).item(), abs=1e-5)


# ---------- references on random tensors ----------
@pytest.mark.parametrize("batch", [False, True])
def test_binary_against_torch_reference(batch):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 16, 16, generator=g, dtype=torch.float64)
    masks = (torch.rand(4, 16, 16, generator=g) > 0.7).long()
    t = masks[:, None].double()
    p = torch.sigmoid(logits)
    dims = (1, 2, 3) if not batch else (0, 1, 2, 3)
    tp = (p * t).sum(dims)
    dice = 1 - (2 * tp + S) / (p.sum(dims) + t.sum(dims) + S)  # per image (or pooled) soft Dice loss
    bce = F.binary_cross_entropy_with_logits(logits, t)
    pt = torch.where(t > 0, p, 1 - p)
    focal = (-((1 - pt) ** 2) * pt.log()).mean()
    assert create_loss("bce_dice", batch=batch)(logits, masks).item() == pytest.approx(
        (bce + dice.mean()).item(), abs=1e-10
    )
    assert create_loss("dice_focal", batch=batch)(logits, masks).item() == pytest.approx(
        (0.3 * dice.mean() + 0.7 * focal).item(),
        abs=1e-5,  # Tversky smoothing vs Dice smoothing, see above
    )


def test_multiclass_against_torch_and_monai_reference():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 3, (2, 8, 8), generator=g)
    oh = F.one_hot(masks, 3).permute(0, 3, 1, 2).double()
    p = logits.softmax(1)
    dice = 1 - (2 * (p * oh).sum((2, 3)) + S) / (p.sum((2, 3)) + oh.sum((2, 3)) + S)
    ce = F.cross_entropy(logits, masks)
    assert create_loss("bce_dice", num_classes=3)(logits, masks).item() == pytest.approx(
        (ce + dice.mean()).item(), abs=1e-10
    )
    focal_ref = FocalLoss(gamma=2.0, use_softmax=True, to_onehot_y=True)(logits, masks[:, None])
    focal_torch = (-((1 - p) ** 2) * p.log() * oh).mean()
    assert focal_ref.item() == pytest.approx(focal_torch.item(), abs=F32)
    parts = create_loss("dice_focal", num_classes=3).components(logits, masks)
    assert parts["focal"].item() == pytest.approx(focal_torch.item(), abs=F32)


def test_weights_are_arguments():
    logits, masks = _binary_case()
    only_tversky = create_loss("dice_focal", gamma_weight=1.0)(logits, masks).item()
    assert only_tversky == pytest.approx(TVERSKY_HAND, abs=1e-12)
    gamma0 = create_loss("dice_focal", gamma_weight=0.0, focal_gamma=0.0)(logits, masks).item()
    assert gamma0 == pytest.approx(BCE_HAND, abs=F32)  # focal with γ = 0 is BCE
    only_ce = create_loss("bce_dice", dice_weight=0.0)(logits, masks).item()
    assert only_ce == pytest.approx(BCE_HAND, abs=1e-12)


# ---------- perfect prediction, gradients ----------
@pytest.mark.parametrize("name", ["dice_focal", "bce_dice"])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_perfect_prediction_dice_part_is_zero_and_gradients_finite(name, num_classes):
    g = torch.Generator().manual_seed(3)
    masks = torch.randint(0, max(num_classes, 2), (2, 8, 8), generator=g)
    if num_classes == 1:
        logits = (masks[:, None].float() * 2 - 1) * 40.0
    else:
        logits = F.one_hot(masks, num_classes).permute(0, 3, 1, 2).float() * 40.0
    loss = create_loss(name, num_classes=num_classes)
    assert loss(logits, masks).item() == pytest.approx(0.0, abs=1e-5)
    if name == "dice_focal":
        assert loss.components(logits, masks)["tversky"].item() == pytest.approx(0.0, abs=1e-5)
    x = torch.randn(2, num_classes, 8, 8, generator=g, requires_grad=True)
    value = loss(x, masks.to(torch.uint8))
    value.backward()
    assert torch.isfinite(value) and value.item() > 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_registry_and_defaults():
    assert list_losses() == ["dice_focal", "bce_dice"]
    assert default_loss_for("lgnet") == "dice_focal"
    assert default_loss_for("prnet") == "bce_dice"
    assert default_loss_for("unet") == "bce_dice"
    assert isinstance(create_loss("dice_focal"), DiceFocalLoss)
    assert isinstance(create_loss("bce_dice", num_classes=2), BCEDiceLoss)
    with pytest.raises(ValueError, match="valid names: dice_focal, bce_dice"):
        create_loss("dice")


@pytest.mark.parametrize(
    "logits_shape, masks_shape, dtype, match",
    [
        ((2, 1, 4, 4), (2, 1, 4, 4), torch.long, r"masks must be \(B, H, W\).*\(2, 1, 4, 4\)"),
        ((2, 1, 4, 4), (2, 4, 5), torch.long, r"\(2, 4, 5\).*\(2, 1, 4, 4\)"),
        ((2, 1, 4, 4), (3, 4, 4), torch.long, r"\(3, 4, 4\)"),
        ((2, 4, 4), (2, 4, 4), torch.long, r"logits must be \(B, C, H, W\), got shape \(2, 4, 4\)"),
        ((2, 3, 4, 4), (2, 4, 4), torch.long, r"3 channels .* num_classes=1"),
        ((2, 1, 4, 4), (2, 4, 4), torch.float32, r"integer labels"),
    ],
)
def test_shape_and_dtype_errors(logits_shape, masks_shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        create_loss("dice_focal")(torch.zeros(logits_shape), torch.zeros(masks_shape, dtype=dtype))


def test_label_out_of_range():
    with pytest.raises(ValueError, match=r"0\.\.1 .* found 0\.\.2"):
        create_loss("bce_dice")(torch.zeros(1, 1, 2, 2), torch.tensor([[[0, 2], [1, 0]]]))
    with pytest.raises(ValueError, match=r"0\.\.2 .* found 0\.\.3"):
        create_loss("dice_focal", num_classes=3)(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 3], [1, 0]]]))


@pytest.mark.parametrize("cls", [BCEDiceLoss, DiceFocalLoss])
def test_bad_constructor_options_name_the_option(cls):
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        cls(num_classes=0)
    with pytest.raises(ValueError, match="include_background=False needs num_classes >= 2"):
        cls(num_classes=1, include_background=False)
    cls(num_classes=3, include_background=False)  # valid for multi-class


# ---------- Eq. 14 as written: background class and class sum ----------
def _asymmetric_binary_case():
    """One 1×3 image: p = sigmoid(logit) = [.8, .4, .1], mask [1, 0, 0] (background and foreground
    ratios differ, unlike ``_binary_case``)."""
    p = torch.tensor([0.8, 0.4, 0.1], dtype=torch.float64)
    return (p / (1 - p)).log().reshape(1, 1, 1, 3), torch.tensor([[[1, 0, 0]]])


# foreground: TP .8, FP .4 + .1 = .5, FN .2                → r1 = (.8 + S)/(.8 + .25 + .1 + S)
# background: 1 − p = [.2, .6, .9], g = [0, 1, 1]: TP 1.5, FP .2, FN .4 + .1 = .5 → r0 = (1.5 + S)/(1.5 + .1 + .25 + S)
# focal: p_t = [.8, .6, .9] → mean of (1 − p_t)²·(−ln p_t)
R1 = (0.8 + S) / (1.15 + S)
R0 = (1.5 + S) / (1.85 + S)
FOCAL_ASYM = (0.04 * -math.log(0.8) + 0.16 * -math.log(0.6) + 0.01 * -math.log(0.9)) / 3


def test_binary_background_and_class_sum_hand_computed():
    logits, masks = _asymmetric_binary_case()
    cases = [
        ({}, 1 - R1),  # default: foreground only
        ({"binary_background": True}, (2 - R0 - R1) / 2),  # mean over the two classes
        ({"binary_background": True, "class_reduction": "sum"}, 2 - R0 - R1),  # Eq. 14 as written
        ({"class_reduction": "sum"}, 1 - R1),  # one scored class: sum = mean
    ]
    for kw, tversky in cases:
        loss = create_loss("dice_focal", **kw)
        parts = loss.components(logits, masks)
        assert parts["tversky"].item() == pytest.approx(tversky, abs=1e-12), kw
        assert parts["focal"].item() == pytest.approx(FOCAL_ASYM, abs=F32), kw  # already Eq. 15's class sum
        assert loss(logits, masks).item() == pytest.approx(0.3 * tversky + 0.7 * FOCAL_ASYM, abs=F32), kw
    # the paper's binary loss: 0.3·(2 − r0 − r1) + 0.7·focal ≈ 0.3·0.493537 + 0.7·0.030570
    paper = create_loss("dice_focal", binary_background=True, class_reduction="sum")(logits, masks).item()
    assert paper == pytest.approx(0.3 * (2 - R0 - R1) + 0.7 * FOCAL_ASYM, abs=F32)
    assert paper == pytest.approx(0.16946, abs=1e-5)


@pytest.mark.parametrize("batch", [False, True])
def test_binary_background_against_monai_and_the_two_class_softmax(batch):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    masks = (torch.rand(3, 8, 8, generator=g) > 0.7).long()
    t = masks[:, None].double()
    p = torch.sigmoid(logits)
    monai = TverskyLoss(include_background=True, alpha=0.5, beta=0.5, batch=batch)(
        torch.cat([1 - p, p], 1), torch.cat([1 - t, t], 1)
    )
    ours = create_loss("dice_focal", binary_background=True, batch=batch)
    assert ours.components(logits, masks)["tversky"].item() == pytest.approx(monai.item(), abs=1e-12)
    # softmax over the two logits (0, x) is (1 − σ(x), σ(x)): the binary two-class loss is the
    # multi-class loss of that pair, term by term, once both add over their classes (Eq. 14–15)
    pair = torch.cat([torch.zeros_like(logits), logits], 1)
    binary = create_loss("dice_focal", binary_background=True, class_reduction="sum", batch=batch)
    two = create_loss("dice_focal", num_classes=2, class_reduction="sum", batch=batch)
    b, m = binary.components(logits, masks), two.components(pair, masks)
    assert b["tversky"].item() == pytest.approx(m["tversky"].item(), abs=1e-10)
    assert b["focal"].item() == pytest.approx(m["focal"].item(), abs=F32)


def test_class_sum_multiclass_hand_computed():
    logits, masks = _multiclass_case()
    t = [(0.5 + S) / (0.85 + S), (0.6 + S) / (0.925 + S), S / (0.225 + S)]  # see the mean test above
    focal_mean = (0.25 * math.log(2) + 0.16 * -math.log(0.6)) / 6
    parts = create_loss("dice_focal", num_classes=3, class_reduction="sum").components(logits, masks)
    assert parts["tversky"].item() == pytest.approx(sum(1 - x for x in t), abs=1e-12)  # 3 − Σ ratio (Eq. 14)
    assert parts["focal"].item() == pytest.approx(3 * focal_mean, abs=F32)  # (1/N) Σ_c Σ_n (Eq. 15), N = 2 px
    no_bg = create_loss("dice_focal", num_classes=3, class_reduction="sum", include_background=False)
    assert no_bg.components(logits, masks)["tversky"].item() == pytest.approx(sum(1 - x for x in t[1:]), abs=1e-12)


def test_eq14_options_are_checked():
    with pytest.raises(ValueError, match="binary_background=True needs num_classes=1"):
        DiceFocalLoss(num_classes=3, binary_background=True)
    with pytest.raises(ValueError, match="class_reduction must be one of mean, sum, got 'max'"):
        DiceFocalLoss(class_reduction="max")
