"""Segmentation losses: ``create_loss(name, num_classes=1, **kw)``, ``list_losses()``, ``default_loss_for(model)``.

All losses take logits ``(B, C, H, W)`` and integer masks ``(B, H, W)`` (long or uint8) and return a scalar.
Binary segmentation = ``num_classes=1`` (one logit channel, sigmoid); ``num_classes >= 2`` = softmax.

| name | formula | module |
| --- | --- | --- |
| ``dice_focal`` | ``0.3·soft Tversky(α=β=0.5, = soft Dice) + 0.7·Focal(γ=2)`` (LG-Net Eq. 14–16) | :mod:`.dice_focal` |
| ``bce_dice`` | ``(B)CE + soft Dice``, equal weights (PR-Net default; the paper names no loss) | :mod:`.bce_dice` |

Deep supervision (not a named loss: it wraps one): :class:`DeepSupervisionLoss` (:mod:`.deep_supervision`)
sums ``w_k · L(head_k, target_k)`` over a model's ``forward_heads`` with the model's
``deep_supervision_weights`` / ``deep_supervision_targets`` (``"mask"`` heads: the wrapped loss;
``"edge"`` heads: BCE against :func:`boundary_map` of the mask).
"""

from __future__ import annotations

from torch import nn

from .bce_dice import BCEDiceLoss
from .deep_supervision import DeepSupervisionLoss, boundary_map
from .dice_focal import DiceFocalLoss

_REGISTRY: dict[str, type[nn.Module]] = {
    "dice_focal": DiceFocalLoss,
    "bce_dice": BCEDiceLoss,
}

_MODEL_DEFAULTS = {"lgnet": "dice_focal", "prnet": "bce_dice"}

__all__ = [
    "BCEDiceLoss",
    "DeepSupervisionLoss",
    "DiceFocalLoss",
    "boundary_map",
    "create_loss",
    "default_loss_for",
    "list_losses",
]


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`, in a stable order."""
    return list(_REGISTRY)


def create_loss(name: str, *, num_classes: int = 1, **kw) -> nn.Module:
    """Build loss ``name`` for ``num_classes`` logit channels; ``kw`` are that loss's own options."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](num_classes=num_classes, **kw)


def default_loss_for(model_name: str) -> str:
    """The loss a model trains with by default: ``lgnet`` → ``dice_focal``; everything else → ``bce_dice``."""
    return _MODEL_DEFAULTS.get(model_name, "bce_dice")
