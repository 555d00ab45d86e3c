"""U²-Net-P (Qin et al., "U²-Net: Going Deeper with Nested U-Structure for Salient Object
Detection", Pattern Recognition 2020, arXiv:2005.09007): the small variant (paper: 1.1 M params).

Six encoder stages RSU-7, RSU-6, RSU-5, RSU-4, RSU-4F, RSU-4F with 2×2 max-pool (ceil mode)
between them, five decoder stages RSU-4F, RSU-4, RSU-5, RSU-6, RSU-7 on ``concat(up, skip)``, a
3×3 side head on each of the six decoder/bottom outputs, up-sampled to the input and fused by a
1×1 conv. Vocabulary mapping: every stage has ``out = base_channels`` and
``mid = max(1, base_channels // 4)`` (paper U²-Net-P: 64 and 16, i.e. base 64).

Choices: ``forward`` returns the fused logits (no sigmoid); :meth:`forward_heads` returns
``[fused, side1, …, side6]`` for the paper's deep-supervised loss. Five outer pools:
``size_divisor = 32`` (inside the RSUs ceil-mode pooling and resizing handle any size).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import SegmentationModel, cbr, upsample_like


class RSU(nn.Module):
    """Residual U-block RSU-L (``dilated=False``) or RSU-4F (``dilated=True``: no pooling, dilations 1,2,4,8).

    ``x_in = CBR(in→out)``; a small U-Net of depth L on it (mid channels, bottom conv dilated 2);
    output ``U(x_in) + x_in``.
    """

    def __init__(self, depth: int, in_ch: int, mid_ch: int, out_ch: int, *, dilated: bool = False):
        super().__init__()
        self.dilated = dilated
        dil = [2**i for i in range(depth)] if dilated else [1] * (depth - 1) + [2]
        self.inp = cbr(in_ch, out_ch)
        self.enc = nn.ModuleList([cbr(out_ch if i == 0 else mid_ch, mid_ch, dilation=dil[i]) for i in range(depth)])
        # decoder: enc[depth-2] level up to enc[0]; the last maps to out_ch
        self.dec = nn.ModuleList(
            [cbr(2 * mid_ch, out_ch if i == 0 else mid_ch, dilation=dil[i] if dilated else 1) for i in range(depth - 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xin = self.inp(x)  # (B, out, H, W)
        feats = []
        h = xin
        for i, conv in enumerate(self.enc):
            if i > 0 and not self.dilated and i < len(self.enc) - 1:
                h = F.max_pool2d(h, 2, ceil_mode=True)  # halve, levels 1..L-2
            h = conv(h)  # (B, mid, ·, ·)
            feats.append(h)
        h = feats.pop()  # bottom (dilated) output
        for i in reversed(range(len(self.dec))):
            skip = feats[i]
            h = self.dec[i](torch.cat([upsample_like(h, skip), skip], dim=1))  # (B, mid|out, ·, ·)
        return h + xin  # (B, out, H, W)


class U2NetP(SegmentationModel):
    size_divisor = 32

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 64):
        super().__init__(in_channels, num_classes, base_channels)
        out, mid = base_channels, max(1, base_channels // 4)
        enc_depths = [(7, False), (6, False), (5, False), (4, False), (4, True), (4, True)]
        self.encoder = nn.ModuleList(
            [RSU(d, in_channels if i == 0 else out, mid, out, dilated=f) for i, (d, f) in enumerate(enc_depths)]
        )
        # decoder stage k refines level k (k = 4..0) from concat(up(level k+1), skip k)
        self.decoder = nn.ModuleList([RSU(d, 2 * out, mid, out, dilated=f) for d, f in enc_depths[:5]])
        self.sides = nn.ModuleList([nn.Conv2d(out, num_classes, 3, padding=1) for _ in range(6)])
        self.fuse = nn.Conv2d(6 * num_classes, num_classes, 1)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        size_ref = x
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2, ceil_mode=True))  # (B, out, H/2^i, W/2^i)
            skips.append(x)
        levels = [skips.pop()]  # level 5 (bottom), (B, out, H/32, W/32)
        for k in reversed(range(5)):
            skip = skips[k]
            x = self.decoder[k](torch.cat([upsample_like(x, skip), skip], dim=1))  # (B, out, H/2^k, W/2^k)
            levels.append(x)
        sides = [upsample_like(side(f), size_ref) for side, f in zip(self.sides, reversed(levels))]  # 6 × (B, K, H, W)
        return [self.fuse(torch.cat(sides, dim=1)), *sides]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(x)[0]  # (B, num_classes, H, W)
