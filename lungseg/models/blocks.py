"""Building blocks shared by every model of the zoo.

Notation (see the design note beside the repository, ``../shared/design/architecture.md``): CBR = Conv→BatchNorm→ReLU,
CIR = Conv→InstanceNorm→ReLU. Convolutions followed by a norm have ``bias=False``
(the norm's shift makes a bias redundant, and a bias before BatchNorm gets no gradient).

Everything a model needs twice lives here (or in :mod:`lungseg.models.attention`), so that
model files only wire blocks together.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "instance", "none"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        # affine=True so the norm has learnable scale/shift like BN (PyTorch's default is False).
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (valid: batch, instance, none)")


class ConvNormAct(nn.Sequential):
    """Conv(k×k, 'same' padding, optional dilation) → norm → ReLU (ReLU optional).

    ``norm="batch"`` gives CBR, ``norm="instance"`` gives CIR. The conv has a bias only when no
    norm follows it.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        norm: Norm = "batch",
        act: bool = True,
    ):
        pad = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=pad, dilation=dilation, bias=norm == "none"),
            _norm(norm, out_ch),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def cbr(in_ch: int, out_ch: int, kernel_size: int = 3, *, dilation: int = 1) -> ConvNormAct:
    """Conv → BatchNorm → ReLU."""
    return ConvNormAct(in_ch, out_ch, kernel_size, dilation=dilation, norm="batch")


def cir(in_ch: int, out_ch: int, kernel_size: int = 3, *, dilation: int = 1) -> ConvNormAct:
    """Conv → InstanceNorm(affine) → ReLU."""
    return ConvNormAct(in_ch, out_ch, kernel_size, dilation=dilation, norm="instance")


class DoubleConv(nn.Sequential):
    """Two 3×3 conv-norm-ReLU (the U-Net stage): ``in → mid → out`` (``mid`` defaults to ``out``)."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None, *, norm: Norm = "batch"):
        mid = out_ch if mid_ch is None else mid_ch
        super().__init__(ConvNormAct(in_ch, mid, 3, norm=norm), ConvNormAct(mid, out_ch, 3, norm=norm))


class ConvStack(nn.Sequential):
    """``n`` 3×3 CBR in series (VGG/SegNet stage): ``in → out → … → out``."""

    def __init__(self, in_ch: int, out_ch: int, n: int):
        super().__init__(*[cbr(in_ch if i == 0 else out_ch, out_ch) for i in range(n)])


class SqueezeExcite(nn.Module):
    """Channel gate ``s = σ(W2·ReLU(W1·GAP(u)))`` (Hu et al.); returns ``s`` of shape (B,C,1,1).

    ``W1`` reduces ``C`` to ``max(1, C // reduction)``; both are 1×1 convs with bias (= FC layers).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = F.adaptive_avg_pool2d(u, 1)  # (B, C, 1, 1)   Eq. 11 (squeeze)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z))))  # (B, C, 1, 1)   Eq. 12 (excite)


class RSEBlock(nn.Module):
    """Residual squeeze-and-excitation block of LG-Net (§2.4, Eq. 11–13).

    ``x' = Conv1×1(x)``; ``u = BN(Dropout(Conv3×3(x')))``; ``s = SE(u)`` with reduction 6;
    ``y = x' + u ⊙ s``. ``Conv1×1`` keeps its bias (no norm follows it); ``Conv3×3`` has none
    (BN follows it, after the dropout). Dropout is channel-wise (``Dropout2d``), p = 0.1 by default
    (the paper gives no rate).
    """

    def __init__(self, in_ch: int, out_ch: int, *, reduction: int = 6, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, 1)
        self.conv = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.drop = nn.Dropout2d(dropout)
        self.bn = nn.BatchNorm2d(out_ch)
        self.se = SqueezeExcite(out_ch, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, out, H, W)
        u = self.bn(self.drop(self.conv(x)))  # (B, out, H, W)
        return x + u * self.se(u)  # (B, out, H, W)   Eq. 13


class UpConv(nn.Module):
    """×2 up-sampling that maps ``in_ch → out_ch`` channels.

    ``mode="transpose"``: ConvTranspose 2×2 stride 2 with bias (Ronneberger's "up-conv 2×2").
    ``mode="bilinear"``: bilinear ×2 (``align_corners=False``) then CBR 1×1 (LG-Net's decoder).
    """

    def __init__(self, in_ch: int, out_ch: int, mode: Literal["transpose", "bilinear"] = "transpose"):
        super().__init__()
        if mode not in ("transpose", "bilinear"):
            raise ValueError(f"unknown up-sampling mode {mode!r} (valid: transpose, bilinear)")
        self.mode = mode
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        else:
            self.up = cbr(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "bilinear":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # (B, in, 2H, 2W)
        return self.up(x)  # (B, out, 2H, 2W)


class DecoderStage(nn.Module):
    """Up-sample the deeper map (``in_ch → out_ch``), merge it with the skip (``out_ch``), double CBR.

    ``fuse(skip, up)`` must return ``2·out_ch`` channels; default: ``concat(skip, up)`` (U-Net).
    LG-Net passes its FF module, Attention U-Net its attention gate.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        up: Literal["transpose", "bilinear"] = "transpose",
        fuse: nn.Module | None = None,
    ):
        super().__init__()
        self.up = UpConv(in_ch, out_ch, up)
        self.fuse = fuse
        self.conv = DoubleConv(2 * out_ch, out_ch)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        d = self.up(deep)  # (B, out, H, W)
        z = torch.cat([skip, d], dim=1) if self.fuse is None else self.fuse(skip, d)  # (B, 2·out, H, W)
        return self.conv(z)  # (B, out, H, W)


def encoder_levels(in_ch: int, chans: list[int], block=None) -> nn.ModuleList:
    """``block(in, chans[0]), block(chans[0], chans[1]), …`` (default block: :class:`DoubleConv`)."""
    block = DoubleConv if block is None else block
    return nn.ModuleList([block(in_ch if i == 0 else chans[i - 1], c) for i, c in enumerate(chans)])


def upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``ref`` (no-op when equal)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def widths(base: int, n: int = 5) -> list[int]:
    """Encoder widths ``base·(1, 2, 4, …)`` (5 levels: the U-Net frame)."""
    if base < 1:
        raise ValueError(f"base_channels must be >= 1, got {base}")
    return [base * 2**i for i in range(n)]


class SegmentationModel(nn.Module):
    """Base class: holds the common vocabulary and checks the input size.

    Subclasses set ``size_divisor`` (H and W must be multiples of it) and call
    :meth:`check_input` at the top of ``forward``.

    Deep supervision (the training contract of models whose paper trains several outputs): such a
    model has ``forward_heads(x) -> list[Tensor]`` (main output first, the one ``forward`` returns)
    and sets ``deep_supervision_weights`` to one weight per head; training then minimises
    ``Σ_k w_k · L(head_k, target_k)`` (:class:`lungseg.losses.DeepSupervisionLoss`) and computes its
    metrics on the main output. ``deep_supervision_targets`` names each head's target: ``"mask"``
    (the segmentation mask, the default for every head) or ``"edge"`` (the mask's boundary, for a
    one-channel edge head such as Inf-Net's). ``None`` (the default) = train ``forward`` alone;
    UNet++ and U²-Net-P keep that default although they have ``forward_heads``.
    """

    size_divisor: int = 16
    #: one loss weight per ``forward_heads`` output, or ``None`` (train on ``forward`` only)
    deep_supervision_weights: tuple[float, ...] | None = None
    #: per head ``"mask"`` or ``"edge"``; ``None`` = every head is trained against the mask
    deep_supervision_targets: tuple[str, ...] | None = None

    def __init__(self, in_channels: int, num_classes: int, base_channels: int):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("base_channels", base_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.base_channels = base_channels

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input channel(s), got {x.shape[1]}")
        h, w = x.shape[-2:]
        d = self.size_divisor
        if h % d or w % d:
            raise ValueError(
                f"input {h}×{w} is not a multiple of {d} ({type(self).__name__} down-samples by {d}); "
                f"pad or crop H and W to a multiple of {d}"
            )

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"base_channels={self.base_channels}, size_divisor={self.size_divisor}"
        )


def encode_decode(
    x: torch.Tensor,
    encoder: nn.ModuleList,
    decoder: nn.ModuleList,
    *,
    down=F.max_pool2d,
    skip_blocks: nn.ModuleList | None = None,
) -> torch.Tensor:
    """The U-shaped pass shared by U-Net, LG-Net and PR-Net.

    ``encoder[i]`` maps level i-1 (after ``down(·, 2)``) to level i; the last level is the
    bottleneck. ``skip_blocks[i]`` (optional) transforms skip i; ``decoder[j]`` takes
    ``(deeper, skip)``, deepest first. Returns the finest decoder output.
    """
    return encode_decode_levels(x, encoder, decoder, down=down, skip_blocks=skip_blocks)[-1]


def encode_decode_levels(
    x: torch.Tensor,
    encoder: nn.ModuleList,
    decoder: nn.ModuleList,
    *,
    down=F.max_pool2d,
    skip_blocks: nn.ModuleList | None = None,
) -> list[torch.Tensor]:
    """:func:`encode_decode`, returning every decoder output, deepest first (the last is the finest):
    what a deep-supervised model puts its side heads on (AWSnet)."""
    skips = []
    for i, stage in enumerate(encoder):
        x = stage(x if i == 0 else down(x, 2))  # (B, C_i, H/2^i, W/2^i)
        skips.append(x)
    x = skips.pop()  # bottleneck (B, C_last, H/2^L, W/2^L)
    if skip_blocks is not None:
        skips = [blk(s) for blk, s in zip(skip_blocks, skips)]  # shapes unchanged
    outs = []
    for stage in decoder:
        x = stage(x, skips.pop())  # (B, C_i, H/2^i, W/2^i), deepest level first
        outs.append(x)
    return outs
