"""Anam-Net (Paluru, Dayal, Jenssen, Sakinis, Cenkeramaddi, Prakash & Yalavarthy, "Anam-Net:
Anamorphic Depth Embedding-Based Lightweight CNN for Segmentation of Anomalies in COVID-19 Chest CT
Images", IEEE TNNLS 32(3):932–946, 2021; PR-Net's reference [17]).

What was read: the paper's abstract (lightweight, "anamorphic depth embedding", 7.8× fewer
parameters than U-Net) and the authors' code, github.com/NaveenPaluru/Segmentation-COVID-19,
``anamnet.py`` at commit a1f00deda5c0d97fffe1287b85d4ac68c97c90c3 (the architecture) and
``trnAnamNet.py`` (training). The paper's PDF is not available here; the code is followed.

Architecture (authors' widths ``64, 128, 256, 256`` = ``base·(1, 2, 4, 4)``):

- Encoder: four levels ``CBR 3×3 (→ w_i)`` → skip ``s_i`` → 2×2 max-pool; after the pools of
  levels 1–3 an **anamorphic depth (AD) block** (below) on the pooled map. The fourth pool's output
  (``w_3`` channels, ``H/16``) is the bottom; there is no conv at the bottom, so ``size_divisor = 16``.
- AD block: the ENet bottleneck the code names ``Bottleneck`` — ``CBR 1×1 (C → C/4)``,
  ``CBR 3×3 (C/4 → C/4)``, ``CBR 1×1 (C/4 → C)``, dropout (p = 0 in the code), added to the
  input, ReLU. The 4× squeeze-then-expand of depth is the "anamorphic" embedding.
- Decoder: four stages ``ConvTranspose 2×2 → (AD block, stages 1–3 only) → concat(·, s_i) →
  CBR 3×3 (2·w_i → w_i)``, deepest first; the transposed conv maps to the skip's width.
- Head: Conv 1×1 → ``num_classes`` logits (the code: 3 classes, background / ground-glass /
  consolidation; here the zoo's ``num_classes``).

Deviations and choices:

- Convolutions followed by BatchNorm have no bias (the authors' ``conv*_block`` / ``conv_up_*``
  have one; a bias before BatchNorm is cancelled by it). With those biases put back, the
  parameter count at base 64, 1 input channel and 3 classes is the authors' model's (test).
- ``inner = max(2, C // 4)`` (the code raises for C < 4). One inner channel (C < 8, tiny test
  widths only) would make the block's first BatchNorm scale-invariant at initialisation — its
  weight would get exactly zero gradient — so at least two.
- One-channel CT input (the code: one channel too, 512² slices); ``num_classes`` logits, no softmax.
- Loss: the authors train with class-weighted cross-entropy (weights = inverse class frequency,
  Adam lr 5e-4); lungseg trains every model with the loss its config names (the results tables use
  one loss for all rows), so the paper's loss is not part of the model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvNormAct, SegmentationModel, UpConv, cbr


class AnamorphicDepthBlock(nn.Module):
    """ENet bottleneck: ``ReLU(x + Dropout(CBR1×1(C/4→C)(CBR3×3(CBR1×1(C→C/4)(x)))))``."""

    def __init__(self, channels: int, *, ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = max(2, channels // ratio)
        self.squeeze = ConvNormAct(channels, inner, 1)
        self.conv = ConvNormAct(inner, inner, 3)
        self.expand = ConvNormAct(inner, channels, 1)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = self.drop(self.expand(self.conv(self.squeeze(x))))  # (B, C, H, W)
        return F.relu(x + ext)  # (B, C, H, W)


class AnamNet(SegmentationModel):
    """Anam-Net: a 4-level U-shaped net with single-conv stages and AD blocks after pools and up-convs."""

    size_divisor = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 64):
        super().__init__(in_channels, num_classes, base_channels)
        b = base_channels
        w = [b, 2 * b, 4 * b, 4 * b]  # authors: 64, 128, 256, 256
        self.enc = nn.ModuleList([cbr(in_channels if i == 0 else w[i - 1], w[i]) for i in range(4)])
        self.enc_ad = nn.ModuleList([AnamorphicDepthBlock(w[i]) for i in range(3)])
        # decoder stage k (k = 0..3) goes from level 3-k+1 to level 3-k; up-conv to the skip's width
        self.up = nn.ModuleList([UpConv(w[3] if k == 0 else w[4 - k], w[3 - k]) for k in range(4)])
        self.dec_ad = nn.ModuleList([AnamorphicDepthBlock(w[3 - k]) for k in range(3)])
        self.dec = nn.ModuleList([cbr(2 * w[3 - k], w[3 - k]) for k in range(4)])
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for i, conv in enumerate(self.enc):
            x = conv(x)  # (B, w_i, H/2^i, W/2^i)
            skips.append(x)
            x = F.max_pool2d(x, 2)  # (B, w_i, H/2^(i+1), W/2^(i+1))
            if i < 3:
                x = self.enc_ad[i](x)
        # x: bottom (B, w_3, H/16, W/16)
        for k in range(4):
            x = self.up[k](x)  # (B, w_{3-k}, H/2^(3-k), W/2^(3-k))
            if k < 3:
                x = self.dec_ad[k](x)
            x = self.dec[k](torch.cat([x, skips.pop()], dim=1))  # (B, w_{3-k}, ·, ·)
        return self.head(x)  # (B, num_classes, H, W)
