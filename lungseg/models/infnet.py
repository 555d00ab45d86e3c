"""Inf-Net (Fan, Zhou, Ji, Zhou, Chen, Fu, Shen & Shao, "Inf-Net: Automatic COVID-19 Lung Infection
Segmentation From CT Images", IEEE TMI 39(8):2626–2637, 2020, arXiv:2004.14133; PR-Net's
reference [19]).

What was read: the authors' code, github.com/DengPingFan/Inf-Net —
``Code/model_lung_infection/InfNet_Res2Net.py`` (commit 2d5ba5ffd2a16d64e6866b53672cde8499e59d75),
``Code/model_lung_infection/backbone/Res2Net.py`` (commit 145a8d2ea95c1fe5b1ee349d3c699dadf3b90fd3),
``MyTrain_LungInf.py`` and ``MyTest_LungInf.py`` (which output is the prediction, the loss). The
paper's PDF is not available here; the code is followed.

Architecture (code names in brackets), at ``base_channels = b`` (the authors' numbers are b = 64):

- Backbone: Res2Net-50 v1b 26w×4s (:mod:`lungseg.models.res2net`) with stem width ``b``: features
  ``f1..f4`` with ``4b, 8b, 16b, 32b`` channels at strides 4, 8, 16, 32 (authors: 256 … 2048).
- Receptive-field blocks [``RFB_modified``] on ``f2, f3, f4`` → ``c = b/2`` channels each
  (authors' ``channel = 32``): four branches (1×1; 1×1→1×k→k×1→3×3 dilated k, k = 3, 5, 7),
  concat → 3×3, plus a 1×1 shortcut, ReLU.
- Parallel partial decoder [``aggregation``] on the three RFB outputs → the global map ``S_g``
  (stride 8).
- Edge attention [``edge_conv1..3``] on ``f1``: 1×1 (→ ``b``), 3×3, 3×3 → edge features ``e``
  (``b`` channels, stride 4); [``edge_conv4``] 3×3 → the edge logits (stride 4).
- Reverse attention, deepest first: at stride 32, 16, 8 the feature ``f_i`` is multiplied by
  ``1 − σ(S)`` (``S`` = the coarser map resized to that stride), concatenated with ``e`` resized
  there, refined by convs (stride 32: 1×1 → ``4b``, three 5×5, 1×1 → K; strides 16 and 8: 1×1 →
  ``b``, two 3×3, 3×3 → K) and **added to** ``S``: ``S_4, S_3, S_2``.
- Outputs, each resized to the input: ``S_2`` (the prediction: ``MyTest_LungInf.py`` uses it),
  ``S_3``, ``S_4``, ``S_g`` and the edge map. :meth:`forward_heads` returns
  ``[S_2, S_3, S_4, S_g, edge]``; ``forward`` returns ``S_2``. Five outputs with equal weights
  (``deep_supervision_weights``): ``loss = L(S_2) + L(S_3) + L(S_4) + L(S_g) + BCE(edge, ∂mask)``
  as ``MyTrain_LungInf.py`` sums them; the edge head is trained against the mask's boundary
  (``deep_supervision_targets``).

``size_divisor = 32`` (the backbone's stride). On small inputs the deep maps are tiny (at 64²:
4×4 at stride 16, 2×2 at stride 32), so the RFBs' dilated 3×3 convs (dilation 3, 5, 7) see only
or mostly their centre tap there; the code's 352² training size gives 22×22 and 11×11.

Deviations and choices:

- **No pretrained backbone by default — trained from scratch.** The authors initialise Res2Net
  from ImageNet; no weights can be downloaded here. ``pretrained_backbone`` (a path to a local
  Res2Net state dict, e.g. ``res2net50_v1b_26w_4s-3cf99910.pth``) loads one when you have it
  (only at ``base_channels = 64``, the original width; a three-channel first conv is summed over
  its input channels for one-channel CT). A missing or mismatched file raises
  :class:`~lungseg.errors.DataError`. The path is a constructor argument, so it is part of a
  trained model's identity: rebuilding the model (evaluation, ``--resume``) reads the file again
  before the checkpoint's weights replace it. From scratch, Inf-Net is not the paper's model in
  effect: read its results with that in mind.
- Width scaling: every width is proportional to ``base_channels`` (mapping above; the Res2Net
  group width is ``max(1, ⌊planes·26/64⌋)``), so ``base_channels = 64`` is the authors' network
  (with one input channel) and ``base_channels = 8`` trains on a CPU.
- ``conv→BN`` units without ReLU where the code has them: its ``BasicConv2d`` defines a ReLU but
  never applies it (PraNet heritage), so RFB branches and the decoder convs are linear conv+BN
  chains; the reverse-attention convs get the explicit ReLUs of the code. The last conv of each
  reverse-attention branch and of the edge branch is a conv+BN too, as in the code.
- Multi-class (``num_classes = K ≥ 2``): the reverse weight is the background probability
  ``softmax(S)[:, 0]`` (for K = 1 it is ``1 − σ(S)``, the code's). The edge head has one channel
  for any K (the boundary of the foreground, class-agnostic); the code's has K.
- Losses: the code trains the four maps with its "joint loss" (boundary-weighted BCE + weighted
  IoU) and the edge with BCE; lungseg uses the configured loss for the four maps (one loss for
  all rows of a results table) and BCE for the edge. The code's multi-scale training (0.75, 1,
  1.25 rescaling of each batch) and gradient clipping are not used. The edge target is computed on
  the fly from the mask (:func:`lungseg.losses.deep_supervision.boundary_map`); the authors ship
  precomputed edge images.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import SegmentationModel, upsample_like
from .res2net import Res2NetBackbone, load_backbone_state


class ConvBN(nn.Sequential):
    """Conv (k×k or kh×kw, optional dilation) → BN, no ReLU (the code's ``BasicConv2d``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int], *, dilation: int = 1):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        pad = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        super().__init__(
            nn.Conv2d(in_ch, out_ch, (kh, kw), padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(out_ch)
        )


class ReceptiveFieldBlock(nn.Module):
    """RFB (the code's ``RFB_modified``): 4 branches of growing receptive field, fused, + 1×1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.branch0 = ConvBN(in_ch, out_ch, 1)
        self.branches = nn.ModuleList(
            [
                nn.Sequential(
                    ConvBN(in_ch, out_ch, 1),
                    ConvBN(out_ch, out_ch, (1, k)),
                    ConvBN(out_ch, out_ch, (k, 1)),
                    ConvBN(out_ch, out_ch, 3, dilation=k),
                )
                for k in (3, 5, 7)
            ]
        )
        self.conv_cat = ConvBN(4 * out_ch, out_ch, 3)
        self.conv_res = ConvBN(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.branch0(x), *(b(x) for b in self.branches)]  # 4 × (B, out, H, W)
        return F.relu(self.conv_cat(torch.cat(parts, 1)) + self.conv_res(x))  # (B, out, H, W)


class PartialDecoder(nn.Module):
    """Parallel partial decoder (the code's ``aggregation``): fuses the RFB maps at strides 32, 16, 8.

    Products of up-sampled deeper maps with shallower ones, two concat-and-conv steps, then
    ``conv4`` (3×3) and ``conv5`` (1×1 with bias → ``num_classes``). Up-sampling is bilinear ×2 with
    ``align_corners=True`` (as the code).
    """

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.conv_upsample1 = ConvBN(c, c, 3)
        self.conv_upsample2 = ConvBN(c, c, 3)
        self.conv_upsample3 = ConvBN(c, c, 3)
        self.conv_upsample4 = ConvBN(c, c, 3)
        self.conv_upsample5 = ConvBN(2 * c, 2 * c, 3)
        self.conv_concat2 = ConvBN(2 * c, 2 * c, 3)
        self.conv_concat3 = ConvBN(3 * c, 3 * c, 3)
        self.conv4 = ConvBN(3 * c, 3 * c, 3)
        self.conv5 = nn.Conv2d(3 * c, num_classes, 1)

    @staticmethod
    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, x4: torch.Tensor, x3: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        up = self.up
        x3_1 = self.conv_upsample1(up(x4)) * x3  # (B, c, H/16, W/16)
        x2_1 = self.conv_upsample2(up(up(x4))) * self.conv_upsample3(up(x3)) * x2  # (B, c, H/8, W/8)
        x3_2 = self.conv_concat2(torch.cat([x3_1, self.conv_upsample4(up(x4))], 1))  # (B, 2c, H/16, W/16)
        x2_2 = self.conv_concat3(torch.cat([x2_1, self.conv_upsample5(up(x3_2))], 1))  # (B, 3c, H/8, W/8)
        return self.conv5(self.conv4(x2_2))  # (B, K, H/8, W/8)


class ReverseAttention(nn.Module):
    """One reverse-attention branch: ``f ⊙ reverse(S)`` → 1×1 → concat edge features → convs → ``+ S``.

    ``n_convs`` k×k conv+BN+ReLU after the concat (the first maps ``mid + edge → mid``), then a last
    conv+BN to ``num_classes`` (kernel ``last_kernel``), as the code's ``ra4_*`` (k = 5, three convs,
    last 1×1) and ``ra3_*``/``ra2_*`` (k = 3, two convs, last 3×3).
    """

    def __init__(
        self, in_ch: int, mid: int, edge_ch: int, num_classes: int, *, kernel: int, n_convs: int, last_kernel: int
    ):
        super().__init__()
        self.reduce = ConvBN(in_ch, mid, 1)
        self.convs = nn.ModuleList([ConvBN(mid + edge_ch if i == 0 else mid, mid, kernel) for i in range(n_convs)])
        self.out = ConvBN(mid, num_classes, last_kernel)

    def forward(self, feat: torch.Tensor, prior: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        if prior.shape[1] == 1:
            rev = 1 - torch.sigmoid(prior)  # (B, 1, h, w)   erase what is already foreground
        else:
            rev = torch.softmax(prior, dim=1)[:, :1]  # (B, 1, h, w)   background probability
        x = torch.cat([self.reduce(feat * rev), upsample_like(edge, feat)], 1)  # (B, mid + e, h, w)
        for conv in self.convs:
            x = F.relu(conv(x))  # (B, mid, h, w)
        return self.out(x) + prior  # (B, K, h, w)


class InfNet(SegmentationModel):
    """Inf-Net: Res2Net backbone, partial decoder, reverse attention guided by edge features."""

    size_divisor = 32
    deep_supervision_weights = (1.0, 1.0, 1.0, 1.0, 1.0)
    deep_supervision_targets = ("mask", "mask", "mask", "mask", "edge")

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        base_channels: int = 64,
        *,
        pretrained_backbone: str | None = None,
    ):
        super().__init__(in_channels, num_classes, base_channels)
        b = base_channels
        c, e = max(1, b // 2), b  # authors: channel 32, edge 64
        self.resnet = Res2NetBackbone(in_channels, width=b)
        if pretrained_backbone is not None:
            load_backbone_state(self.resnet, pretrained_backbone)
        self.pretrained_backbone = pretrained_backbone
        f1, f2, f3, f4 = self.resnet.out_channels  # 4b, 8b, 16b, 32b
        self.rfb2 = ReceptiveFieldBlock(f2, c)
        self.rfb3 = ReceptiveFieldBlock(f3, c)
        self.rfb4 = ReceptiveFieldBlock(f4, c)
        self.decoder = PartialDecoder(c, num_classes)
        self.edge = nn.Sequential(ConvBN(f1, e, 1), ConvBN(e, e, 3), ConvBN(e, e, 3))
        self.edge_head = ConvBN(e, 1, 3)
        self.ra4 = ReverseAttention(f4, 4 * b, e, num_classes, kernel=5, n_convs=3, last_kernel=1)
        self.ra3 = ReverseAttention(f3, b, e, num_classes, kernel=3, n_convs=2, last_kernel=3)
        self.ra2 = ReverseAttention(f2, b, e, num_classes, kernel=3, n_convs=2, last_kernel=3)

    def _maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([S_2, S_3, S_4, S_g], edge features)`` at their own strides."""
        self.check_input(x)
        f1, f2, f3, f4 = self.resnet(x)  # strides 4, 8, 16, 32
        edge = self.edge(f1)  # (B, e, H/4, W/4)
        s_g = self.decoder(self.rfb4(f4), self.rfb3(f3), self.rfb2(f2))  # (B, K, H/8, W/8)
        s_4 = self.ra4(f4, upsample_like(s_g, f4), edge)  # (B, K, H/32, W/32)   (S_g resized down)
        s_3 = self.ra3(f3, upsample_like(s_4, f3), edge)  # (B, K, H/16, W/16)
        s_2 = self.ra2(f2, upsample_like(s_3, f2), edge)  # (B, K, H/8, W/8)
        return [s_2, s_3, s_4, s_g], edge

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[S_2, S_3, S_4, S_g]`` as ``(B, K, H, W)`` logits, then the edge logits ``(B, 1, H, W)``."""
        maps, edge = self._maps(x)
        outs = [upsample_like(m, x) for m in maps]  # 4 × (B, K, H, W)
        return [*outs, upsample_like(self.edge_head(edge), x)]  # + (B, 1, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps, _ = self._maps(x)
        return upsample_like(maps[0], x)  # (B, K, H, W)
