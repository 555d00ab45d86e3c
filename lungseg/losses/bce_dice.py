"""PR-Net default loss (the paper states none): ``L = ce_weight·CE + dice_weight·soft Dice``, equal weights 1.

Binary (``num_classes=1``): ``BCEWithLogits`` (pixel mean) + soft Dice on ``sigmoid(logit)``.
Multi-class (``num_classes ≥ 2``): cross-entropy on the softmax (pixel mean) + soft Dice on the softmax
with one-hot targets, averaged over classes (background included by default).
Built on ``monai.losses.DiceCELoss``.

Smoothing: soft Dice per image and class is ``1 − (2·Σpg + smooth_nr)/(Σp + Σg + smooth_dr)`` with
``smooth_nr = smooth_dr = 1e-5`` (MONAI defaults). Batch reduction: ``batch=False`` (default) = the Dice
ratio per image, then the mean over images and classes; ``batch=True`` pools the sums over the batch.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from ._inputs import binary_target, check_logits_masks, check_options


class BCEDiceLoss(nn.Module):
    """``ce_weight · (B)CE + dice_weight · soft Dice`` on logits ``(B, C, H, W)`` and masks ``(B, H, W)``."""

    def __init__(
        self,
        *,
        num_classes: int = 1,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        include_background: bool = True,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        check_options(num_classes, include_background)
        self.num_classes = num_classes
        self.check_values = check_values
        multi = num_classes >= 2
        self.loss = DiceCELoss(
            include_background=include_background,
            to_onehot_y=multi,
            sigmoid=not multi,
            softmax=multi,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        check_logits_masks(logits, masks, self.num_classes, check_values=self.check_values)
        # (B, 1, H, W): float {0,1} for BCE; the multi-class path one-hots it inside MONAI (CE uses indices).
        return self.loss(logits, binary_target(masks, logits))
