"""Training-time augmentation on batched tensors, driven by an explicit ``torch.Generator``.

Per image, independently (probabilities and ranges are module constants, documented in
``docs/training.md``):

* horizontal flip with p = 0.5 (left/right lungs are mirror images; no vertical flips or 90°
  turns, which a CT slice never shows);
* a small affine transform: rotation ±10°, isotropic scale 0.9–1.1, translation ±5 % of the size.
  Images are resampled bilinearly, masks with **nearest neighbour** (labels stay labels), both with
  zero padding (air / background);
* intensity jitter: contrast ×(0.9–1.1) and brightness ±0.05, clipped to [0, 1].

All randomness comes from ``generator`` (never the global RNG), so an epoch's augmentation is a
pure function of ``(seed, epoch)`` and a resumed run sees exactly the same images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FLIP_P = 0.5
MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_TRANSLATE = 0.05
CONTRAST_RANGE = (0.9, 1.1)
MAX_BRIGHTNESS = 0.05


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` float ``(B, C, H, W)`` in [0, 1], ``masks`` integer ``(B, H, W)`` → augmented copies (CPU)."""
    b = images.shape[0]
    flip = torch.rand(b, generator=generator) < FLIP_P
    angle = _uniform(b, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, generator) * math.pi / 180.0
    scale = _uniform(b, *SCALE_RANGE, generator)
    tx = _uniform(b, -MAX_TRANSLATE, MAX_TRANSLATE, generator) * 2.0  # affine_grid coordinates span [-1, 1]
    ty = _uniform(b, -MAX_TRANSLATE, MAX_TRANSLATE, generator) * 2.0
    contrast = _uniform(b, *CONTRAST_RANGE, generator)
    brightness = _uniform(b, -MAX_BRIGHTNESS, MAX_BRIGHTNESS, generator)

    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.where(flip, -1.0, 1.0).to(torch.float64)
    theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    out_x = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_y = F.grid_sample(
        masks[:, None].to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )[:, 0]
    mean = out_x.mean(dim=(1, 2, 3), keepdim=True)
    c = contrast.to(images.dtype).view(-1, 1, 1, 1)
    s = brightness.to(images.dtype).view(-1, 1, 1, 1)
    out_x = ((out_x - mean) * c + mean + s).clamp_(0.0, 1.0)
    return out_x.contiguous(), out_y.round().to(masks.dtype)
