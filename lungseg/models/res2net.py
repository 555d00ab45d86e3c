"""Res2Net-50 v1b (26w×4s) backbone, width-scalable, for Inf-Net (:mod:`lungseg.models.infnet`).

Gao, Cheng, Zhao, Zhang, Yang & Torr, "Res2Net: A New Multi-Scale Backbone Architecture", IEEE TPAMI
2021, arXiv:1904.01169; the "v1b" variant as shipped with Inf-Net: github.com/DengPingFan/Inf-Net,
``Code/model_lung_infection/backbone/Res2Net.py`` (commit 145a8d2ea95c1fe5b1ee349d3c699dadf3b90fd3).

Structure (as that file): a deep stem ``3×3 s2 (→ w/2), 3×3 (→ w/2), 3×3 (→ w)`` (BN + ReLU
between, then ``bn1`` + ReLU), 3×3 max-pool s2, then four stages of ``[3, 4, 6, 3]``
:class:`Bottle2neck` blocks with ``planes = w·(1, 2, 4, 8)`` and outputs ``4·planes``; the first
block of stages 2–4 has stride 2 (in its 3×3 convs), and a shortcut that average-pools then
projects (the "v1b" down-sampling). A Bottle2neck splits ``conv1``'s output into ``scale = 4``
groups of ``width = ⌊planes·26/64⌋`` channels, runs 3×3 convs hierarchically on three of them
(each adding the previous group's output, except in a stage's first block) and concatenates.
Outputs at strides 4, 8, 16, 32.

Width scaling (lungseg's vocabulary): ``width`` = the stem's output ``w``. 64 is the original:
Inf-Net at ``base_channels = 64`` has Res2Net-50 exactly (23.67 M parameters without the
classifier at 3 input channels, 25.72 M with the 1000-class one: the Res2Net paper's ≈ 25.7 M).
``width = 8`` is 1/8 of every layer; the group width is ``max(1, ⌊planes·26/64⌋)``.

Module and parameter names are the original's (``conv1.0``, ``bn1``, ``layer1.0.convs.0`` …), so a
state dict of the original (e.g. the ImageNet-pretrained ``res2net50_v1b_26w_4s-3cf99910.pth``)
loads with :func:`load_backbone_state`; the classifier (``fc``) is not built.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from lungseg.errors import DataError


class Bottle2neck(nn.Module):
    """Res2Net bottleneck (expansion 4): 1×1 → hierarchical 3×3 on ``scale`` groups → 1×1, + shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 26,
        scale: int = 4,
        stype: str = "normal",
    ):
        super().__init__()
        width = max(1, int(math.floor(planes * (base_width / 64.0))))
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.nums = 1 if scale == 1 else scale - 1
        if stype == "stage":
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1)
        self.convs = nn.ModuleList(
            [nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False) for _ in range(self.nums)]
        )
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(self.nums)])
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stype = stype
        self.scale = scale
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, width·scale, H, W)
        spx = torch.split(out, self.width, 1)  # scale × (B, width, H, W)
        parts = []
        sp = spx[0]
        for i in range(self.nums):
            sp = spx[i] if i == 0 or self.stype == "stage" else sp + spx[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))  # (B, width, H/s, W/s)
            parts.append(sp)
        if self.scale != 1:
            last = spx[self.nums]
            parts.append(self.pool(last) if self.stype == "stage" else last)  # (B, width, H/s, W/s)
        out = self.bn3(self.conv3(torch.cat(parts, 1)))  # (B, 4·planes, H/s, W/s)
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Res2NetBackbone(nn.Module):
    """Res2Net-50 v1b 26w×4s without the classifier; ``forward`` returns the four stage outputs."""

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        base_width: int = 26,
        scale: int = 4,
    ):
        super().__init__()
        half = max(1, width // 2)
        self.inplanes = width
        self.base_width = base_width
        self.scale = scale
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, half, 3, 2, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, width, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.out_channels = tuple(4 * width * 2**i for i in range(4))
        for m in self.modules():  # the original's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottle2neck.expansion:
            downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(self.inplanes, planes * Bottle2neck.expansion, 1, bias=False),
                nn.BatchNorm2d(planes * Bottle2neck.expansion),
            )
        layers = [Bottle2neck(self.inplanes, planes, stride, downsample, self.base_width, self.scale, "stage")]
        self.inplanes = planes * Bottle2neck.expansion
        layers += [
            Bottle2neck(self.inplanes, planes, base_width=self.base_width, scale=self.scale) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, width, H/4, W/4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.layer1(self.stem(x))  # (B, 4w, H/4, W/4)
        x2 = self.layer2(x1)  # (B, 8w, H/8, W/8)
        x3 = self.layer3(x2)  # (B, 16w, H/16, W/16)
        x4 = self.layer4(x3)  # (B, 32w, H/32, W/32)
        return [x1, x2, x3, x4]


def load_backbone_state(backbone: Res2NetBackbone, path: str | Path) -> None:
    """Load a Res2Net state dict from the local file ``path`` into ``backbone``.

    Accepts the original's keys (its ``fc.*`` classifier entries are ignored) or a file saved from
    :class:`Res2NetBackbone`. A three-channel first conv loaded into a one-channel backbone is summed
    over its input channels (= the RGB network applied to a grey image copied to R, G and B).
    Raises :class:`~lungseg.errors.DataError` naming the file when it is missing, not a state dict,
    or does not fit (missing/unexpected keys, other shapes — e.g. another ``base_channels``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "Res2Net backbone weights not found (pretrained_backbone must be a local file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error; the cause is kept
        raise DataError(path, f"cannot read the Res2Net weights: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, "not a state dict of tensors (expected the Res2Net-50 v1b weights)")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = backbone.state_dict()
    key = "conv1.0.weight"
    if key in state and key in own and state[key].ndim == 4 and state[key].shape[1] == 3 and own[key].shape[1] == 1:
        state[key] = state[key].sum(dim=1, keepdim=True)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise DataError(
            path,
            f"does not fit the Res2Net backbone: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}",
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise DataError(
            path,
            f"{len(wrong)} tensors have other shapes than this backbone, e.g. {k}: file {got}, "
            f"model {want} (weights for another base_channels or in_channels?)",
        )
    backbone.load_state_dict(state)
