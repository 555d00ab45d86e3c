"""Fast Dice on torch tensors for validation during training (same definitions as :mod:`.binary`)."""

from __future__ import annotations

import torch


def dice_per_image_torch(logits: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard Dice per image, shape ``(B,)``, float32, on the device of ``logits``.

    Binary (``C == 1``): prediction ``sigmoid(logits) >= threshold`` against ``masks`` in {0, 1}.
    Multi-class (``C >= 2``): prediction = argmax, Dice per foreground class averaged per image
    (``threshold`` unused). Empty rule: both empty → 1, exactly one empty → 0.
    ``logits``: ``(B, C, H, W)``; ``masks``: integer ``(B, H, W)``.
    """
    if logits.ndim != 4 or masks.ndim != 3 or masks.shape[0] != logits.shape[0] or masks.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"logits must be (B, C, H, W) and masks (B, H, W) with matching B, H, W; got logits "
            f"{tuple(logits.shape)} and masks {tuple(masks.shape)}"
        )
    if masks.is_floating_point():
        raise ValueError(f"masks must hold integer labels, got dtype {masks.dtype}")
    with torch.no_grad():
        masks = masks.to(logits.device)
        c = logits.shape[1]
        if c == 1:
            pred = (torch.sigmoid(logits[:, 0].float()) >= threshold)[:, None]
            gt = (masks != 0)[:, None]
        else:
            lab = logits.argmax(1)
            ks = torch.arange(1, c, device=logits.device).view(1, -1, 1, 1)
            pred, gt = lab[:, None] == ks, masks[:, None].long() == ks
        tp = (pred & gt).sum((2, 3)).float()
        den = pred.sum((2, 3)).float() + gt.sum((2, 3)).float()  # 2TP + FP + FN
        dice = torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.ones_like(den))
        return dice.mean(1)
