"""UNet++ (Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
DLMIA 2018, arXiv:1807.10165).

Nodes ``X^{i,j}`` (level i = 0..4, column j): ``X^{i,0}`` is the encoder (double CBR, 2×2 max-pool,
widths ``base·(1,2,4,8,16)``); ``X^{i,j} = DoubleConv(concat(X^{i,0}, …, X^{i,j-1}, Up(X^{i+1,j-1})))``
with ``Up`` = bilinear ×2 without conv (as the authors' code). ``size_divisor = 16``.

Deep supervision (``deep_supervision=True``): a 1×1 head on each of ``X^{0,1..4}``; ``forward``
returns the mean of the four logit maps (so the output contract holds) and
:meth:`forward_heads` returns the four maps for a deep-supervised loss. Default False: one head on
``X^{0,4}`` (the paper's "accurate mode"); then the other heads do not exist.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import DoubleConv, SegmentationModel, encoder_levels, widths


class UNetPlusPlus(SegmentationModel):
    size_divisor = 16

    def __init__(
        self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 64, *, deep_supervision: bool = False
    ):
        super().__init__(in_channels, num_classes, base_channels)
        self.deep_supervision = deep_supervision
        w = widths(base_channels)
        self.encoder = encoder_levels(in_channels, w)
        # nodes[f"{i}_{j}"] for j >= 1, i + j <= 4
        self.nodes = nn.ModuleDict(
            {f"{i}_{j}": DoubleConv(j * w[i] + w[i + 1], w[i]) for j in range(1, 5) for i in range(5 - j)}
        )
        self.heads = nn.ModuleList([nn.Conv2d(w[0], num_classes, 1) for _ in range(4 if deep_supervision else 1)])

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        grid: dict[tuple[int, int], torch.Tensor] = {}
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            grid[i, 0] = x  # (B, base·2^i, H/2^i, W/2^i)
        for j in range(1, 5):
            for i in range(5 - j):
                up = F.interpolate(grid[i + 1, j - 1], scale_factor=2, mode="bilinear", align_corners=False)
                dense = [grid[i, k] for k in range(j)] + [up]  # j × (B, w_i, ·) + (B, w_{i+1}, ·)
                grid[i, j] = self.nodes[f"{i}_{j}"](torch.cat(dense, dim=1))  # (B, w_i, H/2^i, W/2^i)
        top = [grid[0, j] for j in range(1, 5)][-len(self.heads) :]
        return [head(t) for head, t in zip(self.heads, top)]  # each (B, num_classes, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.forward_heads(x)
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)  # (B, num_classes, H, W)
