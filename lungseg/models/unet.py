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

from .blocks import DecoderStage, SegmentationModel, encode_decode, encoder_levels, widths


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
        self.encoder = encoder_levels(in_channels, w)
        self.decoder = nn.ModuleList([DecoderStage(w[i + 1], w[i], up) for i in reversed(range(4))])
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = encode_decode(x, self.encoder, self.decoder)  # (B, base, H, W)
        return self.head(x)  # (B, num_classes, H, W)
