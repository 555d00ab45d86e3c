"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, arXiv:1505.04597).

Choices and deviations from the paper:
- 'same' padding (the paper uses valid convs and crops the skips), so the output has the input's
  H×W; BatchNorm after every conv (not in the 2015 paper; standard today and what LG-Net/PR-Net
  build on).
- Widths ``base·(1, 2, 4, 8, 16)`` (paper: base 64), four 2×2 max-pool down-samplings, so
  ``size_divisor = 16``.
- ``up="transpose"`` (default): ConvTranspose 2×2 stride 2 halving the channels, the paper's
  "up-conv 2×2". ``up="bilinear"``: bilinear ×2 then CBR 1×1 halving, LG-Net's decoder; with it
  this U-Net is exactly LG-Net with all three ablation switches off (same modules, same parameter
  count; a test checks it).
- No dropout at the end of the encoder (the paper's data augmentation section mentions it;
  it is not part of the architecture figure).
- Head: Conv 1×1 → ``num_classes`` logits.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import DoubleConv, SegmentationModel, UpConv, widths


class UNetDecoderStage(nn.Module):
    """Up-sample the deeper map (``in_ch → out_ch``), concatenate the skip (``out_ch``), double CBR."""

    def __init__(self, in_ch: int, out_ch: int, up: Literal["transpose", "bilinear"] = "transpose"):
        super().__init__()
        self.up = UpConv(in_ch, out_ch, up)
        self.conv = DoubleConv(2 * out_ch, out_ch)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        d = self.up(deep)  # (B, out, 2h, 2w)
        return self.conv(torch.cat([skip, d], dim=1))  # (B, 2·out, H, W) → (B, out, H, W)


class UNet(SegmentationModel):
    """Classic U-Net: 5 double-CBR levels, 4 skips, widths ``base·(1,2,4,8,16)``."""

    size_divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        base_channels: int = 64,
        *,
        up: Literal["transpose", "bilinear"] = "transpose",
    ):
        super().__init__(in_channels, num_classes, base_channels)
        w = widths(base_channels)
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels if i == 0 else w[i - 1], w[i]) for i in range(5)]
        )
        self.decoder = nn.ModuleList([UNetDecoderStage(w[i + 1], w[i], up) for i in reversed(range(4))])
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))  # (B, base·2^i, H/2^i, W/2^i)
            skips.append(x)
        x = skips.pop()  # (B, 16·base, H/16, W/16)
        for stage in self.decoder:
            x = stage(x, skips.pop())  # (B, base·2^i, H/2^i, W/2^i), i = 3..0
        return self.head(x)  # (B, num_classes, H, W)
