"""LG-Net loss (paper Eq. 14–16): ``L = γ·L_tversky + (1−γ)·L_focal`` with γ = 0.3.

``L_tversky`` is MONAI's soft Tversky loss with α = β = 0.5, which is the soft Dice loss
(``TP/(TP + ½FP + ½FN) = 2TP/(2TP + FP + FN)``; with MONAI's smoothing the two agree exactly when the
Tversky smoothing is half the Dice smoothing, see ``tests/losses``). ``L_focal`` is MONAI's focal loss
with focusing parameter 2 and no class-balancing α (MONAI evaluates it in float32 even for float64
input, so compare with tolerance ~1e-6).

Binary (``num_classes=1``): both terms act on the foreground probability ``sigmoid(logit)``
(focal = sigmoid focal loss ``−(1−p_t)^γ·log p_t`` averaged over pixels).
Multi-class (``num_classes ≥ 2``): softmax over channels, one-hot targets, and both terms are the mean
over classes (background included by default, ``include_background``):
Tversky = mean over images and classes of the per-class loss; focal = mean over all
``B·C·H·W`` elements of ``−(1−p_c)^γ·log p_c·t_c`` (i.e. the per-pixel softmax focal loss divided by C).

How Eq. 14–15 are read, and the two options that make the loss the paper's exactly:

- Eq. 14 is ``L_Dice = C − Σ_{c=0}^{C−1} TP(c)/(TP(c) + α·FN(c) + β·FP(c))``: a **sum** over **all**
  classes, background (c = 0) included. A binary task has C = 2 classes there. By default the binary
  Dice term scores the foreground only (``1 − ratio_fg``, the usual binary soft Dice);
  ``binary_background=True`` adds the background class (probability ``1 − p = σ(−x)`` against
  ``1 − mask``), as Eq. 14 sums over it. (Multi-class: ``include_background``, default True.)
- ``class_reduction``: ``"mean"`` (default, MONAI's convention) averages the per-class terms;
  ``"sum"`` adds them as Eq. 14–15 are written (``C − Σ_c ratio_c`` and ``−(1/N) Σ_c Σ_n …``, N the
  number of pixels): the Dice term is multiplied by the number of scored classes, and the
  multi-class focal term by C (its mean over ``B·C·H·W`` becomes the pixel mean of the class sum).
  The binary focal term is already Eq. 15's class sum (per pixel only the true class is non-zero),
  so ``"sum"`` leaves it unchanged. With γ = 0.3 the choice matters: for a binary task the paper's
  Dice term is twice the mean-over-classes one. The ``paper`` training preset sets
  ``binary_background=True, class_reduction="sum"``; the defaults keep the loss every result so far
  was trained with.

Smoothing: ``smooth_nr = smooth_dr = 1e-5`` (MONAI defaults) are added to the numerator and denominator of
every per-image, per-class Tversky ratio, so an empty class that is also predicted empty gives ~0 loss.
Batch reduction: ``batch=False`` (default) computes the Tversky ratio per image and averages over the
batch; ``batch=True`` pools TP/FP/FN over the batch first. The focal term is always a pixel mean.
"""

from __future__ import annotations

import torch
from monai.losses import FocalLoss, TverskyLoss
from torch import nn

from ._inputs import binary_as_two_classes, binary_target, check_logits_masks, check_options, onehot_target

CLASS_REDUCTIONS = ("mean", "sum")


class DiceFocalLoss(nn.Module):
    """``gamma_weight · Tversky(α, β) + (1 − gamma_weight) · Focal(focal_gamma)`` on logits ``(B, C, H, W)``
    and integer masks ``(B, H, W)``. See the module docstring for the reductions, smoothing and the
    ``binary_background`` / ``class_reduction`` options (Eq. 14–15 as written)."""

    def __init__(
        self,
        *,
        num_classes: int = 1,
        gamma_weight: float = 0.3,
        focal_gamma: float = 2.0,
        alpha: float = 0.5,
        beta: float = 0.5,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        include_background: bool = True,
        binary_background: bool = False,
        class_reduction: str = "mean",
        check_values: bool = True,
    ) -> None:
        super().__init__()
        check_options(num_classes, include_background)
        if not 0.0 <= gamma_weight <= 1.0:
            raise ValueError(f"gamma_weight must lie in [0, 1], got {gamma_weight}")
        multi = num_classes >= 2
        if binary_background and multi:
            raise ValueError(
                "binary_background=True needs num_classes=1 (multi-class losses score the background "
                "through include_background)"
            )
        if class_reduction not in CLASS_REDUCTIONS:
            raise ValueError(f"class_reduction must be one of {', '.join(CLASS_REDUCTIONS)}, got {class_reduction!r}")
        self.num_classes = num_classes
        self.gamma_weight = float(gamma_weight)
        self.check_values = check_values
        self.binary_background = bool(binary_background)
        self.class_reduction = class_reduction
        # classes each term averages over (MONAI's mean); "sum" multiplies the mean back by them
        scored = num_classes - (0 if include_background else 1) if multi else 1
        self._dice_classes = 2 if self.binary_background else scored
        self._focal_classes = scored
        self.tversky = TverskyLoss(
            include_background=include_background,
            sigmoid=not multi and not self.binary_background,  # two-class binary: probabilities given
            softmax=multi,
            alpha=alpha,
            beta=beta,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )
        self.focal = FocalLoss(include_background=include_background, gamma=focal_gamma, alpha=None, use_softmax=multi)

    def _target(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        check_logits_masks(logits, masks, self.num_classes, check_values=self.check_values)
        if self.num_classes == 1:
            return binary_target(masks, logits)
        return onehot_target(masks, self.num_classes, logits)

    def components(self, logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two unweighted terms ``{"tversky": …, "focal": …}`` (for logging)."""
        target = self._target(logits, masks)
        if self.binary_background:
            tversky = self.tversky(*binary_as_two_classes(logits, target))  # (B, 2, H, W) probabilities
        else:
            tversky = self.tversky(logits, target)
        focal = self.focal(logits, target)
        if self.class_reduction == "sum":
            tversky, focal = tversky * self._dice_classes, focal * self._focal_classes
        return {"tversky": tversky, "focal": focal}

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        c = self.components(logits, masks)
        return self.gamma_weight * c["tversky"] + (1.0 - self.gamma_weight) * c["focal"]
