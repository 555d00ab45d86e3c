"""LightUNet (Li, Chouzenoux, Charmettant, Benatsou, Lamarque & Lassau, "Lightweight U-Net for Lesion
Segmentation in Ultrasound Images", ISBI 2021, pp. 611–615; PR-Net's reference [18], which describes
it as a U-Net with group convolutions).

What was read: the authors' code, github.com/Yingping-LI/Light-U-net — ``README.md`` (the models,
their parameter counts) and ``code/models/Lightest_UNet.py`` ("Lighter U-net @C", commit
22a3592ee95422fb3af8013c2dcda8bdac9b797f) and ``code/models/Light_UNet.py`` ("Light U-net", commit
0df6a02f6f62b4a277af3740f0334d6ad3a70c4b). The paper's PDF is not available here.

Frame (the authors build on milesial/Pytorch-UNet with ``bilinear=True``): five levels of widths
``base·(1, 2, 4, 8, 8)`` (authors: 64, 128, 256, 512, 512), 2×2 max-pool, dropout 0.5 on the bottom
features, four decoder stages ``bilinear ×2 (align_corners=True) → concat(skip, up) →
DoubleConv(in → in/2 → out)`` with outputs ``base·(4, 2, 1, 1)``, head Conv 1×1. Four pools:
``size_divisor = 16``.

The light part is the convolution "set" of every DoubleConv (each set is followed by BN + ReLU):

- ``variant="lighter"`` (default; the README's "Lighter U-net @C", the group-convolution model
  PR-Net cites): both sets are a **grouped 3×3 conv** with ``C`` channels per group
  (``groups = c_in // min(c_in, C)``, as the code computes it) followed by a pointwise 1×1 conv.
  ``C = 1`` is a depthwise-separable conv; ``C ≥ c_in`` a plain 3×3 + 1×1.
- ``variant="light"`` ("Light U-net"): set 1 is a regular 3×3 conv, set 2 a depthwise-separable conv.

Vocabulary mapping: ``group_channels`` is ``C``; its default ``None`` means ``2·base_channels``
(= 128 at base 64: the README's "@128", which matches U-Net's Dice with 46 % of its parameters),
so the grouping pattern (1, 1, 2, 4, 8 groups from the first level to the decoder's widest conv)
is the same at every width.

Deviations and choices:

- No conv bias before a BatchNorm (the authors' convs all have one; a bias before BN — or before a
  pointwise conv that feeds a BN — is cancelled by it). With those biases put back and 3 input
  channels, 1 class, base 64, the parameter counts are the README's 7 944 661 (@128) and
  11 000 257 (Light U-net) (test).
- ``forward`` returns logits (the code returns ``sigmoid``).
- One-channel CT input; the README's "C = 3 for the first layer with 3 channels" is moot here
  (``min(c_in, C)`` already gives one group for a one-channel input).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import SegmentationModel, encode_decode


def group_count(in_ch: int, group_channels: int) -> int:
    """Groups of the grouped 3×3 conv: ``in_ch // min(in_ch, group_channels)`` (authors' rule)."""
    if group_channels < 1:
        raise ValueError(f"group_channels must be >= 1, got {group_channels}")
    groups = in_ch // min(in_ch, group_channels)
    if in_ch % groups:
        raise ValueError(
            f"group_channels={group_channels} gives {groups} groups for {in_ch} channels, which does not "
            f"divide them; use a power of two times base_channels"
        )
    return groups


class GroupedSeparableConv(nn.Sequential):
    """Grouped 3×3 conv (``in → in``, ``groups = group_count(in, C)``) then pointwise 1×1 (``in → out``).

    Neither conv has a bias: a BatchNorm follows the pointwise conv in every use.
    """

    def __init__(self, in_ch: int, out_ch: int, group_channels: int):
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=group_count(in_ch, group_channels), bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
        )


class LightDoubleConv(nn.Sequential):
    """Two conv sets, each followed by BN + ReLU: ``in → mid → out`` (``mid`` defaults to ``out``).

    ``variant="lighter"``: both sets grouped-separable with ``C = group_channels``; ``"light"``: a
    regular 3×3 conv, then a depthwise-separable conv (``C = 1``).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        mid_ch: int | None = None,
        *,
        variant: Literal["lighter", "light"],
        group_channels: int,
    ):
        mid = out_ch if mid_ch is None else mid_ch
        if variant == "lighter":
            first: nn.Module = GroupedSeparableConv(in_ch, mid, group_channels)
            second: nn.Module = GroupedSeparableConv(mid, out_ch, group_channels)
        elif variant == "light":
            first = nn.Conv2d(in_ch, mid, 3, padding=1, bias=False)
            second = GroupedSeparableConv(mid, out_ch, 1)
        else:
            raise ValueError(f"unknown LightUNet variant {variant!r} (valid: lighter, light)")
        super().__init__(
            first, nn.BatchNorm2d(mid), nn.ReLU(inplace=True), second, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
        )


class LightUp(nn.Module):
    """Decoder stage: bilinear ×2 (``align_corners=True``, as the code) → ``concat(skip, up)`` → double conv."""

    def __init__(self, in_ch: int, out_ch: int, **conv_kw):
        super().__init__()
        self.conv = LightDoubleConv(in_ch, out_ch, in_ch // 2, **conv_kw)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=True)  # (B, C_deep, H, W)
        return self.conv(torch.cat([skip, up], dim=1))  # (B, out, H, W)


class LightUNet(SegmentationModel):
    """U-Net whose conv sets are grouped (``lighter``) or partly depthwise-separable (``light``)."""

    size_divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        base_channels: int = 64,
        *,
        variant: Literal["lighter", "light"] = "lighter",
        group_channels: int | None = None,
        dropout: float = 0.5,
    ):
        super().__init__(in_channels, num_classes, base_channels)
        b = base_channels
        self.variant = variant
        self.group_channels = 2 * b if group_channels is None else group_channels
        kw = {"variant": variant, "group_channels": self.group_channels}
        w = [b, 2 * b, 4 * b, 8 * b, 8 * b]  # authors: 64, 128, 256, 512, 1024 // 2
        levels = [LightDoubleConv(in_channels if i == 0 else w[i - 1], w[i], **kw) for i in range(5)]
        levels[-1] = nn.Sequential(levels[-1], nn.Dropout(dropout))  # the code's dropout on the bottom features
        self.encoder = nn.ModuleList(levels)
        # decoder: in = concat(skip, up) channels, out = the next (shallower) decoder width
        outs = [4 * b, 2 * b, b, b]
        ins = [16 * b, 8 * b, 4 * b, 2 * b]
        self.decoder = nn.ModuleList([LightUp(i, o, **kw) for i, o in zip(ins, outs)])
        self.head = nn.Conv2d(b, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = encode_decode(x, self.encoder, self.decoder)  # (B, base, H, W)
        return self.head(x)  # (B, num_classes, H, W)
