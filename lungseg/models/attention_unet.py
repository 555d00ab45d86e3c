"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas",
MIDL 2018, arXiv:1804.03999).

U-Net frame (widths ``base·(1,2,4,8,16)``, 2×2 max-pool, ConvTranspose 2×2 up, ``size_divisor = 16``)
with an additive attention gate on every skip (:class:`lungseg.models.attention.AttentionGate`,
intermediate width C/2, one gate coefficient per pixel).

Choices: the gating signal is the decoder map after up-sampling (same resolution as the skip),
as MONAI's ``AttentionUnet`` does, instead of Oktay's strided skip projection and gate resampling;
no deep supervision (optional in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionGate
from .blocks import DecoderStage, SegmentationModel, encode_decode, encoder_levels, widths


class GatedConcat(nn.Module):
    """``concat(AttentionGate(skip, g=up), up)``: the merge step of an Attention U-Net decoder stage."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = AttentionGate(channels, channels)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.gate(skip, up), up], dim=1)  # (B, 2C, H, W)


class AttentionUNet(SegmentationModel):
    size_divisor = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 64):
        super().__init__(in_channels, num_classes, base_channels)
        w = widths(base_channels)
        self.encoder = encoder_levels(in_channels, w)
        self.decoder = nn.ModuleList(
            [DecoderStage(w[i + 1], w[i], "transpose", GatedConcat(w[i])) for i in reversed(range(4))]
        )
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = encode_decode(x, self.encoder, self.decoder)  # (B, base, H, W)
        return self.head(x)  # (B, num_classes, H, W)
