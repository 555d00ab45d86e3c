"""DeepSupervisionLoss against hand-computed values; the models that declare deep supervision use it."""

from __future__ import annotations

import math

import pytest
import torch

from lungseg.losses import DeepSupervisionLoss, boundary_map, create_loss
from lungseg.models import create_model, list_models

S = 1e-5  # MONAI's default Dice smoothing (bce_dice)

# The binary case of test_losses.py: p = sigmoid(logits) = [[.5, .75], [.25, .5]], mask [[1, 1], [0, 0]]
# bce_dice = BCE + soft Dice = (2 ln 2 + 2 ln 4/3)/4 + 1 − (2.5 + S)/(4 + S)
MAIN = torch.tensor([[[[0.0, math.log(3.0)], [-math.log(3.0), 0.0]]]], dtype=torch.float64)
MASK = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.long)
MAIN_HAND = (2 * math.log(2) + 2 * math.log(4 / 3)) / 4 + 1 - (2.5 + S) / (4.0 + S)
# all-zero logits: p = .5 everywhere → BCE = ln 2; Dice: Σpg = 1, Σp = 2, Σg = 2 → 1 − (2 + S)/(4 + S)
ZERO_HAND = math.log(2) + 1 - (2.0 + S) / (4.0 + S)


def test_boundary_map_hand_computed():
    m = torch.zeros(1, 5, 5, dtype=torch.long)
    m[0, 1:4, 1:4] = 1  # a 3×3 square: its 8 outer pixels are boundary, the centre is not
    ring = m.clone()
    ring[0, 2, 2] = 0
    torch.testing.assert_close(boundary_map(m), ring.unsqueeze(1).float())
    # outside the image counts as background: a full 3×3 image is all boundary except its centre
    full = torch.ones(2, 3, 3, dtype=torch.uint8)
    expect = torch.ones(2, 1, 3, 3)
    expect[:, :, 1, 1] = 0
    torch.testing.assert_close(boundary_map(full), expect)
    # class-agnostic: labels 1 and 2 are both foreground; dtype/device follow ``like``
    two = m.clone()
    two[0, 1, 1] = 2
    out = boundary_map(two, like=torch.zeros(1, dtype=torch.float64))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ring.unsqueeze(1).double())


def test_weighted_sum_of_mask_and_edge_heads_hand_computed():
    loss = DeepSupervisionLoss(create_loss("bce_dice"), weights=(0.5, 2.0, 0.25), targets=("mask", "mask", "edge"))
    outs = [MAIN, torch.zeros_like(MAIN), torch.zeros_like(MAIN)]
    # edge logits 0 → BCE = ln 2 at every pixel, whatever the boundary is
    expect = 0.5 * MAIN_HAND + 2.0 * ZERO_HAND + 0.25 * math.log(2)
    assert loss(outs, MASK).item() == pytest.approx(expect, abs=1e-6)
    parts = [p.item() for p in loss.components(outs, MASK)]
    assert parts == pytest.approx([MAIN_HAND, ZERO_HAND, math.log(2)], abs=1e-6)


def test_edge_head_is_trained_against_the_boundary():
    mask = torch.zeros(1, 5, 5, dtype=torch.long)
    mask[0, 1:4, 1:4] = 1
    edge = boundary_map(mask)  # 8 boundary pixels of 25
    loss = DeepSupervisionLoss(create_loss("bce_dice"), weights=(0.0, 1.0), targets=("mask", "edge"))
    main = torch.zeros(1, 1, 5, 5)
    right = 20.0 * (2 * edge - 1)  # confident and correct
    wrong = -right
    assert loss([main, right], mask).item() < 1e-6
    assert loss([main, wrong], mask).item() == pytest.approx(20.0, rel=1e-4)  # BCE ≈ |logit| when wrong


def test_low_resolution_head_gets_the_nearest_exact_resized_mask():
    torch.manual_seed(0)
    base = create_loss("bce_dice")
    mask = (torch.rand(2, 8, 8) > 0.5).long()
    half = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    full = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    value = DeepSupervisionLoss(base, weights=(1.0, 0.5))([full, half], mask)
    # nearest-exact ×0.5 picks source index 2i + 1
    expect = base(full, mask) + 0.5 * base(half, mask[:, 1::2, 1::2])
    assert value.item() == pytest.approx(expect.item(), abs=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"weights": ()}, "at least one head"),
        ({"weights": (1, 1), "targets": ("mask",)}, "2 head weights but 1"),
        ({"weights": (1, -1)}, ">= 0"),
        ({"weights": (1, 1), "targets": ("mask", "contour")}, "unknown head target"),
        ({"weights": (1, 1), "targets": ("edge", "mask")}, "main output"),
    ],
)
def test_bad_options_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        DeepSupervisionLoss(create_loss("bce_dice"), **kw)


def test_bad_outputs_are_rejected():
    loss = DeepSupervisionLoss(create_loss("bce_dice"), weights=(1, 1), targets=("mask", "edge"))
    with pytest.raises(ValueError, match="needs forward_heads' list, got one tensor"):
        loss(MAIN, MASK)
    with pytest.raises(ValueError, match="got 3 outputs"):
        loss([MAIN, MAIN, MAIN], MASK)
    with pytest.raises(ValueError, match="edge head 1 must have one channel"):
        loss([MAIN, torch.zeros(1, 2, 2, 2)], MASK)


@pytest.mark.parametrize(
    "name", [n for n in list_models() if create_model(n, base_channels=4).deep_supervision_weights]
)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_models_that_declare_deep_supervision_train_with_it(name, num_classes):
    """The wrapper accepts what the model declares, and its gradient reaches every head."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=num_classes, base_channels=4)
    size = max(32, 2 * m.size_divisor)
    x = torch.randn(2, 1, size, size)
    masks = torch.randint(0, max(num_classes, 2), (2, size, size))
    loss_fn = DeepSupervisionLoss(
        create_loss("bce_dice", num_classes=num_classes), m.deep_supervision_weights, m.deep_supervision_targets
    )
    heads = m.forward_heads(x)
    for h in heads:
        h.retain_grad()
    loss = loss_fn(heads, masks)
    assert torch.isfinite(loss)
    loss.backward()
    for k, (h, w) in enumerate(zip(heads, m.deep_supervision_weights)):
        assert (h.grad.abs().sum() > 0) == (w > 0), f"{name}: head {k} (weight {w})"
