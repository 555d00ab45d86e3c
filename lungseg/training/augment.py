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

Where it runs
    :func:`draw` takes the random parameters from ``generator``, a CPU generator, always in the
    same order and on the CPU (so they do not depend on where the batch lives); :func:`apply`
    resamples the batch on *its* device — on CUDA the batch never leaves the GPU, only the few
    numbers per image go there (one small pinned, non-blocking copy: no host sync). On the CPU the
    result is bitwise what the single CPU function of earlier versions gave (tested against a frozen
    copy of it in ``tests/training/test_augment.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FLIP_P = 0.5
MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_TRANSLATE = 0.05
CONTRAST_RANGE = (0.9, 1.1)
MAX_BRIGHTNESS = 0.05


@dataclass(frozen=True)
class AugmentParams:
    """The random draws for a batch of ``B`` images (CPU, float64 as drawn; ``flip`` bool)."""

    flip: torch.Tensor
    angle: torch.Tensor
    """radians"""
    scale: torch.Tensor
    tx: torch.Tensor
    """in ``affine_grid`` coordinates (which span [-1, 1])"""
    ty: torch.Tensor
    contrast: torch.Tensor
    brightness: torch.Tensor

    def theta(self) -> torch.Tensor:
        """The ``(B, 2, 3)`` float64 inverse affine matrices ``affine_grid`` takes (output → input)."""
        cos, sin = torch.cos(self.angle) / self.scale, torch.sin(self.angle) / self.scale
        sx = torch.where(self.flip, -1.0, 1.0).to(torch.float64)
        return torch.stack([torch.stack([cos * sx, -sin, self.tx], 1), torch.stack([sin * sx, cos, self.ty], 1)], 1)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def draw(b: int, generator: torch.Generator) -> AugmentParams:
    """The parameters for ``b`` images, drawn from ``generator`` (a CPU generator) in a fixed order."""
    flip = torch.rand(b, generator=generator) < FLIP_P
    angle = _uniform(b, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, generator) * math.pi / 180.0
    scale = _uniform(b, *SCALE_RANGE, generator)
    tx = _uniform(b, -MAX_TRANSLATE, MAX_TRANSLATE, generator) * 2.0  # affine_grid coordinates span [-1, 1]
    ty = _uniform(b, -MAX_TRANSLATE, MAX_TRANSLATE, generator) * 2.0
    contrast = _uniform(b, *CONTRAST_RANGE, generator)
    brightness = _uniform(b, -MAX_BRIGHTNESS, MAX_BRIGHTNESS, generator)
    return AugmentParams(flip, angle, scale, tx, ty, contrast, brightness)


def apply(images: torch.Tensor, masks: torch.Tensor, params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """``params`` applied to ``images`` float ``(B, C, H, W)`` in [0, 1] and ``masks`` integer
    ``(B, H, W)``, on their device; augmented copies.

    The parameters are cast to the images' dtype on the CPU (as the CPU-only version did); for a batch
    on CUDA they are packed into one ``(B, 8)`` tensor that goes over in one pinned, non-blocking copy."""
    b = images.shape[0]
    theta = params.theta().to(images.dtype)
    c, s = params.contrast.to(images.dtype), params.brightness.to(images.dtype)
    if images.device != theta.device:
        packed = torch.cat([theta.reshape(b, 6), c[:, None], s[:, None]], 1)
        if images.device.type == "cuda":
            packed = packed.pin_memory()
        packed = packed.to(images.device, non_blocking=True)
        theta, c, s = packed[:, :6].reshape(b, 2, 3).contiguous(), packed[:, 6].contiguous(), packed[:, 7].contiguous()
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out_x = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_y = F.grid_sample(
        masks[:, None].to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )[:, 0]
    mean = out_x.mean(dim=(1, 2, 3), keepdim=True)
    out_x = ((out_x - mean) * c.view(-1, 1, 1, 1) + mean + s.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    return out_x.contiguous(), out_y.round().to(masks.dtype)


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` float ``(B, C, H, W)`` in [0, 1], ``masks`` integer ``(B, H, W)`` (on any device) →
    augmented copies on the same device; the parameters come from ``generator`` (CPU)."""
    return apply(images, masks, draw(images.shape[0], generator))
