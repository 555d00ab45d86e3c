"""The token budget of the attention kernels (``max_tokens``), shared by PCM (LG-Net,
:mod:`lungseg.models.attention.pcm_attention`) and DSA (PR-Net, :mod:`lungseg.models.attention.dsa_attention`).

PCM and DSA are O(N²) in the number of pixels N = H·W: when N exceeds ``max_tokens``, the
attention inputs are average-pooled to the largest grid ``h'×w'`` with ``h'·w' <= max_tokens`` that
keeps the aspect ratio (:func:`token_grid`, :func:`pool`), attention runs on that grid, and the
result is resized bilinearly back to H×W (:func:`unpool`). ``max_tokens=None`` is always exact; when
``N <= max_tokens`` the exact path is taken, so the two agree bit for bit there (tested). Default
``DEFAULT_MAX_TOKENS = 64·64 = 4096``: at that size a full N×N affinity is 4096² fp32 = 64 MiB per
image and head, which keeps LG-Net and PR-Net trainable at 512² batch 4 (base 64) on one 80 GB GPU
(measured in ``bench/results``), while maps of 64×64 and smaller (the two deepest skips at 512²,
everything at ≤ 256² for deep levels) stay exact. The cost of pooling is resolution of the
long-range term only: the skip itself is multiplied/added at full resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_MAX_TOKENS = 64 * 64


def positive_or_none(name: str, value: int | None) -> int | None:
    """``value`` when it is ``None`` or an int >= 1; else a ``ValueError`` at construction (a bad option
    must fail when the model is built, not at its first forward pass)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be >= 1 or None, got {value!r}")
    return value


def token_grid(h: int, w: int, max_tokens: int | None) -> tuple[int, int]:
    """The grid attention runs on: ``(h, w)`` itself when it fits, else the largest aspect-keeping
    grid within ``max_tokens`` tokens."""
    if max_tokens is None or h * w <= max_tokens:
        return h, w
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    s = math.sqrt(max_tokens / (h * w))
    gh, gw = max(1, int(h * s)), max(1, int(w * s))
    # grow either side while it still fits (int() rounds both down)
    while (gh + 1) * gw <= max_tokens and gh < h:
        gh += 1
    while gh * (gw + 1) <= max_tokens and gw < w:
        gw += 1
    return gh, gw


def pool(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(…, H, W) → (…, *grid) by adaptive average pooling; ``x`` itself when it is on the grid already."""
    return x if tuple(x.shape[-2:]) == grid else F.adaptive_avg_pool2d(x, grid)


def unpool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(…, h', w') → (…, *size) by bilinear resizing; ``x`` itself when it has that size already."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
