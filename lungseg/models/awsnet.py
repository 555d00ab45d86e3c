"""AWSnet (Wang, Yang, Miao, Li, Yao, Zhou, Xue, Zhou, Zhuang & Ni, "AWSnet: An Auto-weighted
Supervision Attention Network for Myocardial Scar and Edema Segmentation in Multi-sequence Cardiac
Magnetic Resonance Images", Medical Image Analysis 77:102362, 2022, arXiv:2201.05344; PR-Net's
reference [20], which describes it as a coarse-to-fine model with a pixel-attention strategy and
auto-weighted supervision).

What was read: the paper's abstract and the authors' code, github.com/soleilssss/AWSnet,
``ASAN_training/`` at commit 667454e8201e32ed71290d8b02666122911562c8: ``Network/Models.py``
(``AttU_Net`` with ``deep_supervision=True``, base width 32), ``pure_training.py`` (the fine model
and the reinforcement-learning weight search), ``loss_deepsupvision.py`` (``LossPRSnet_dicece``)
and ``train_val.py``. The paper's method section is not available here; the coarse model is not in
the public code.

The paper's design, for cardiac MR: a *coarse* model segments the left-ventricle myocardium, which
is given to a *fine* model as a shape prior; the fine model is an attention U-Net ("pixel-wise
attention": one attention coefficient per pixel on every skip) with four supervised outputs whose
loss weights are searched by reinforcement learning ("auto-weighted supervision").

How lungseg adapts it to one-channel CT and one target (the lung field / lesion mask):

- **Coarse stage**: a plain U-Net (:class:`lungseg.models.unet.UNet`, widths
  ``coarse_channels·(1, 2, 4, 8, 16)``, default ``coarse_channels = max(1, base_channels // 2)``)
  on the CT slice, trained against the *same* mask (CT has no separate anatomical structure to
  use as the prior; the mask itself is the shape the fine stage refines). Its probability map
  (sigmoid, or softmax over the K classes) is the shape prior.
- **Fine stage**: lungseg's Attention U-Net (:class:`lungseg.models.attention_unet.AttentionUNet`,
  widths ``base·(1, 2, 4, 8, 16)``; the code's ``AttU_Net`` has base 32) on ``concat(image, prior)``
  (``in_channels + K`` channels; the code concatenates two MR sequences). The prior is detached,
  so each stage learns from its own loss, as two separately trained models would.
- **Supervision**: a 1×1 head on each of the four decoder outputs (strides 1, 2, 4, 8), resized to
  the input (bilinear; the code up-samples the features before its 1×1 heads, which is the same map
  since both steps are linear), plus the coarse output. :meth:`forward_heads` returns
  ``[fine, fine@2, fine@4, fine@8, coarse]``; ``forward`` returns ``fine``.
- **Auto-weighted supervision → fixed weights.** The code searches the four weights with REINFORCE:
  10 copies of the model train one epoch each with weights ``softmax(coeff + 0.15·action)`` and
  the best copy seeds the next epoch — 10× the training cost. lungseg does not run the search: the
  weights are the search's starting point, ``softmax(0.5, 0.5, 0.5, 1)`` from the deepest to the
  finest head, i.e. ``0.355`` for the fine output and ``0.215`` for each of the three others
  (``supervision_logits``, finest first, lets you set searched values), and
  ``coarse_weight = 1`` for the coarse stage's own loss. These are ``deep_supervision_weights``.
- Loss per head: the code uses soft Dice on the softmax (its CE weight is 0); lungseg uses the
  configured loss (one loss for all rows of a results table).

``size_divisor = 16``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .attention_unet import AttentionUNet
from .blocks import SegmentationModel, encode_decode_levels, upsample_like
from .unet import UNet

#: the code's initial supervision coefficients (``coeff``), finest head first
AUTHORS_SUPERVISION_LOGITS = (1.0, 0.5, 0.5, 0.5)


class AWSNet(SegmentationModel):
    """Coarse U-Net → shape prior → deeply supervised Attention U-Net."""

    size_divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        base_channels: int = 64,
        *,
        coarse_channels: int | None = None,
        supervision_logits: Sequence[float] = AUTHORS_SUPERVISION_LOGITS,
        coarse_weight: float = 1.0,
    ):
        super().__init__(in_channels, num_classes, base_channels)
        logits = [float(v) for v in supervision_logits]
        if len(logits) != 4:
            raise ValueError(f"supervision_logits needs 4 values (finest head first), got {list(supervision_logits)}")
        if coarse_weight < 0:
            raise ValueError(f"coarse_weight must be >= 0, got {coarse_weight}")
        self.coarse_channels = max(1, base_channels // 2) if coarse_channels is None else coarse_channels
        self.coarse = UNet(in_channels, num_classes, self.coarse_channels)
        self.fine = AttentionUNet(in_channels + num_classes, num_classes, base_channels)
        w = [base_channels * 2**i for i in range(4)]
        self.aux_heads = nn.ModuleList([nn.Conv2d(w[i], num_classes, 1) for i in (1, 2, 3)])
        exp = [math.exp(v - max(logits)) for v in logits]  # softmax in Python: also under torch.device("meta")
        self.deep_supervision_weights = (*(round(e / sum(exp), 6) for e in exp), float(coarse_weight))

    def _prior(self, coarse_logits: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(coarse_logits) if coarse_logits.shape[1] == 1 else torch.softmax(coarse_logits, 1)
        return p.detach()  # (B, K, H, W)   the coarse stage learns from its own loss only

    def _fine(self, x: torch.Tensor, coarse_logits: torch.Tensor) -> list[torch.Tensor]:
        """Decoder outputs of the fine Attention U-Net, deepest first: strides 8, 4, 2, 1."""
        h = torch.cat([x, self._prior(coarse_logits)], 1)  # (B, C_in + K, H, W)
        return encode_decode_levels(h, self.fine.encoder, self.fine.decoder)  # (B, w_i, H/2^i, W/2^i), i = 3..0

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[fine, fine@2, fine@4, fine@8, coarse]`` logits, each ``(B, K, H, W)``."""
        self.check_input(x)
        coarse = self.coarse(x)  # (B, K, H, W)
        d8, d4, d2, d1 = self._fine(x, coarse)
        aux = [upsample_like(head(d), x) for head, d in zip(self.aux_heads, (d2, d4, d8))]  # 3 × (B, K, H, W)
        return [self.fine.head(d1), *aux, coarse]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        d1 = self._fine(x, self.coarse(x))[-1]  # (B, base, H, W)
        return self.fine.head(d1)  # (B, K, H, W)
