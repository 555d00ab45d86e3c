"""SegNet (Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017, arXiv:1511.00561).

VGG-16-style encoder: five levels of (2, 2, 3, 3, 3) CBR 3×3 with widths
``base·(1, 2, 4, 8, 8)`` (paper: 64, 128, 256, 512, 512), each followed by 2×2 max-pool that keeps
its indices; the decoder mirrors it, up-sampling with max-unpooling at the stored indices (no
skips of features, no learned up-sampling). Five pools, so ``size_divisor = 32`` (not 16 like the
U-Net family). Decoder level i: (n_i − 1) CBR at width w_i then one CBR to w_{i−1}.
Head: Conv 1×1 → logits (the paper's softmax classifier is left to the loss).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvStack, SegmentationModel, cbr

_CONVS = (2, 2, 3, 3, 3)


class SegNet(SegmentationModel):
    size_divisor = 32

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 64):
        super().__init__(in_channels, num_classes, base_channels)
        b = base_channels
        w = [b, 2 * b, 4 * b, 8 * b, 8 * b]
        self.encoder = nn.ModuleList(
            [ConvStack(in_channels if i == 0 else w[i - 1], w[i], n) for i, n in enumerate(_CONVS)]
        )
        self.decoder = nn.ModuleList(
            [
                nn.Sequential(*([ConvStack(w[i], w[i], n - 1)] if n > 1 else []), cbr(w[i], w[max(i - 1, 0)]))
                for i, n in enumerate(_CONVS)
            ]
        )
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        indices = []
        for stage in self.encoder:
            x, idx = F.max_pool2d(stage(x), 2, return_indices=True)  # (B, w_i, H/2^(i+1), W/2^(i+1))
            indices.append(idx)
        for i in reversed(range(len(self.decoder))):
            x = F.max_unpool2d(x, indices[i], 2)  # (B, w_i, H/2^i, W/2^i)
            x = self.decoder[i](x)  # (B, w_{i-1}, H/2^i, W/2^i)
        return self.head(x)  # (B, num_classes, H, W)
