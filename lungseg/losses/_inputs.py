"""Input checks shared by the losses: logits ``(B, C, H, W)`` and integer masks ``(B, H, W)``."""

from __future__ import annotations

import torch


def check_options(num_classes: int, include_background: bool) -> None:
    """The constructor checks every loss shares (``ValueError`` naming the bad option)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes == 1 and not include_background:
        raise ValueError("include_background=False needs num_classes >= 2 (binary has one channel)")


def check_logits_masks(
    logits: torch.Tensor, masks: torch.Tensor, num_classes: int, *, check_values: bool = True
) -> None:
    """Raise ``ValueError`` naming the shapes/dtypes when ``logits``/``masks`` do not fit a loss.

    ``logits``: floating ``(B, num_classes, H, W)``; ``masks``: integer or bool ``(B, H, W)`` with labels
    in ``0..num_classes-1`` (binary, ``num_classes == 1``: labels in {0, 1}).
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(masks, torch.Tensor):
        raise ValueError(
            f"logits and masks must be torch tensors, got {type(logits).__name__} and {type(masks).__name__}"
        )
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, C, H, W), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} channels (shape {tuple(logits.shape)}) but the loss was built "
            f"for num_classes={num_classes}"
        )
    if masks.ndim != 3 or masks.shape[0] != logits.shape[0] or masks.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"masks must be (B, H, W) matching logits (B, C, H, W); got masks {tuple(masks.shape)} "
            f"and logits {tuple(logits.shape)}"
        )
    if masks.is_floating_point() or masks.is_complex():
        raise ValueError(f"masks must hold integer labels (long or uint8), got dtype {masks.dtype}")
    if check_values and masks.numel():
        hi = max(num_classes, 2) - 1
        lo_v, hi_v = int(masks.min()), int(masks.max())
        if lo_v < 0 or hi_v > hi:
            raise ValueError(f"mask labels must lie in 0..{hi} for num_classes={num_classes}; found {lo_v}..{hi_v}")


def binary_target(masks: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` {0,1} labels → float ``(B, 1, H, W)`` in the dtype/device of ``like``."""
    return masks.unsqueeze(1).to(device=like.device, dtype=like.dtype)


def onehot_target(masks: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` labels → float one-hot ``(B, C, H, W)`` in the dtype/device of ``like``."""
    oh = torch.nn.functional.one_hot(masks.to(device=like.device, dtype=torch.long), num_classes)
    return oh.permute(0, 3, 1, 2).to(like.dtype)


def binary_as_two_classes(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary logits ``(B, 1, H, W)`` and float {0,1} target ``(B, 1, H, W)`` as two classes
    (background, foreground): probabilities ``[σ(−x), σ(x)]`` and target ``[1 − t, t]``, both ``(B, 2, H, W)``.

    ``σ(−x)`` rather than ``1 − σ(x)`` keeps the background probability accurate where σ(x) ≈ 1.
    """
    probs = torch.cat([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)
    return probs, torch.cat([1.0 - target, target], dim=1)
