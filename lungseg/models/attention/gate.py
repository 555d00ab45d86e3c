"""The additive attention gate of Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to
Look for the Pancreas", MIDL 2018, arXiv:1804.03999); the model is
:class:`lungseg.models.attention_unet.AttentionUNet`.
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionGate(nn.Module):
    """``α = σ(ψ(ReLU(W_x·x + W_g·g)))``, output ``x ⊙ α`` (one gate map per pixel).

    ``W_x``, ``W_g``, ``ψ`` are 1×1 conv + BN. Choice (as in MONAI's ``AttentionUnet``): the gating
    signal ``g`` is taken after the decoder's up-sampling, at the skip's resolution, instead of
    Oktay's strided ``W_x`` on the skip and resampling of ``α``.
    """

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int | None = None):
        super().__init__()
        inter = max(1, skip_ch // 2) if inter_ch is None else inter_ch
        self.w_x = nn.Sequential(nn.Conv2d(skip_ch, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.w_g = nn.Sequential(nn.Conv2d(gate_ch, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1, bias=False), nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.w_x(x) + self.w_g(g))  # (B, inter, H, W)
        return x * torch.sigmoid(self.psi(a))  # (B, C, H, W) ⊙ (B, 1, H, W)
