"""LG-Net (Lu, Yuan & Xu, "Research on lung CT image segmentation algorithm based on the improved
U-Net network", Intelligent Computer and Applications 13(7), 2023; ``seeds/000_a63c139867e588ca.txt``),
read as fixed by ``../shared/design/architecture.md`` §LG-Net.

Structure (widths ``base·(1,2,4,8,16)``, four 2×2 max-pools, ``size_divisor = 16``):
- Encoder stage = double CBR 3×3 → MRC (``use_mrc``) on the first ``mrc_levels`` levels
  (default 4). The paper puts MRC "at the tail of each down-sampling level" (各级下采样尾部) and
  keeps U-Net's four down-samplings; architecture.md reads this as "double CBR → MRC, then 2×2
  max-pool", i.e. the 4 levels followed by a max-pool, so the bottleneck (level 5) is a plain
  double CBR by default. ``mrc_levels=5`` adds MRC to the bottleneck too (the reading used before
  this option existed; at base 64 the bottleneck's MRC alone holds 59.8 M of the 129.2 M
  parameters; with 4 levels LG-Net has 69.4 M, tested). Every new checkpoint records
  ``mrc_levels``; one recorded before the option loads with 5 (``versioned_options``).
- MRC(c): three residual units in series, ``u_k = CBR3×3(u_{k-1}) + BN(Conv3×3(u_{k-1}))``;
  ``concat(u1,u2,u3)`` → CBR 1×1 → c.
- Each of the 4 skips goes through LG-Attention (``use_lg_attention``), see
  :class:`lungseg.models.attention.LGAttention` (θ 1×1 → C/2, ReLU-cos PCM, v = X, global + four
  quadrants, PWA, multiplied into the skip).
- Decoder stage = bilinear ×2 + CBR 1×1 halving → FF(skip, up) (``use_ff``; off = plain concat) →
  double CBR 3×3. Head Conv 1×1 → logits.
- FF(s, d): ``z = concat(s, d)``; L1 = CBR1×1(2C→C) → Conv3×3(C→C) → RSE(C→C);
  L2 = CBR1×1(2C→C) → Conv5×5(C→C) → RSE(C→C); output ``concat(s ⊙ σ(L1(z)), d ⊙ σ(L2(z)))``.
- RSE per Eq. 11–13, reduction 6, ``Dropout2d(rse_dropout=0.1)`` (rate not in the paper).

Choices where paper and architecture.md are silent:
- The FF branch convs after the 1×1 reduction (3×3 and 5×5) have a bias and no norm (the paper
  draws no norm there; RSE's 1×1 follows). The reduction width is C (half of the concat).
- θ has a bias. PCM ε = 1e-6, PWA ε = 1e-6.
- ``max_tokens`` default 4096 (= 64×64), applied to every PCM call (global and each quadrant);
  see :mod:`lungseg.models.attention` for the rule and the justification; ``None`` = exact.
  At 512², ``max_tokens=65536`` (256²) keeps the three deepest skips (256², 128², 64²) and all
  quadrants exact and pools only the first skip's global map to 256².
- ``pcm_impl`` (default ``"auto"``) picks the PCM kernel, the same function in every case
  (:func:`lungseg.models.attention.resolve_pcm_impl`): ``"blocked"`` (CPU and any device: one
  autograd op over blocks of ``pcm_block_rows`` rows, never N×N, backward recomputes each block;
  exact against the reference in forward and gradients, tested), ``"parallel"`` (CPU: the blocked
  kernel's blocks split over torch's threads, one intra-op thread each; bitwise the blocked
  kernel on one thread, tested), ``"flex"`` (CUDA:
  FlexAttention with a ``log(ReLU(s))`` score and an exact lse correction; its forward tested
  against the reference on CPU, the correction's gradients with a dense stand-in for the kernel;
  the CUDA kernel itself not run in this repository's tests), ``"reference"`` (the original
  autograd ops, rows in checkpointed chunks of ``chunk_rows=1024``; ``None`` = one chunk).
  ``"auto"`` = flex on CUDA, blocked on one CPU thread, parallel on several, blocked elsewhere.
  The choice changes speed and memory, not the
  parameters, so a checkpoint loads under any of them.
- With ``use_mrc = use_lg_attention = use_ff = False`` the network is exactly
  ``UNet(up="bilinear")`` (same modules, same parameter count; tested).

Loss (Eq. 14–16) lives in ``lungseg.losses``, not here.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import DEFAULT_MAX_TOKENS, LGAttention
from .blocks import DecoderStage, DoubleConv, RSEBlock, SegmentationModel, cbr, encode_decode, widths


class ResidualUnit(nn.Module):
    """MRC unit: ``CBR3×3(x) + BN(Conv3×3(x))`` (residual branch with conv + BN, as in the paper)."""

    def __init__(self, channels: int):
        super().__init__()
        self.trunk = cbr(channels, channels, 3)
        self.shortcut = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x) + self.shortcut(x)  # (B, C, H, W)


class MultiLevelResidualConv(nn.Module):
    """MRC (§2.2): three residual units in series, outputs concatenated and fused by CBR 1×1."""

    def __init__(self, channels: int, units: int = 3):
        super().__init__()
        self.units = nn.ModuleList([ResidualUnit(channels) for _ in range(units)])
        self.fuse = cbr(units * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for unit in self.units:
            x = unit(x)  # (B, C, H, W)
            outs.append(x)
        return self.fuse(torch.cat(outs, dim=1))  # (B, 3C, H, W) → (B, C, H, W)


class FeatureFusion(nn.Module):
    """FF (§2.4): two weight-map branches (1×1 → 3×3 → RSE and 1×1 → 5×5 → RSE) on ``concat(s, d)``."""

    def __init__(self, channels: int, *, rse_reduction: int = 6, rse_dropout: float = 0.1):
        super().__init__()

        def branch(k: int) -> nn.Sequential:
            return nn.Sequential(
                cbr(2 * channels, channels, 1),
                nn.Conv2d(channels, channels, k, padding=k // 2),
                RSEBlock(channels, channels, reduction=rse_reduction, dropout=rse_dropout),
            )

        self.l1 = branch(3)
        self.l2 = branch(5)

    def forward(self, s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        z = torch.cat([s, d], dim=1)  # (B, 2C, H, W)
        ws = torch.sigmoid(self.l1(z))  # (B, C, H, W)   weight map for the skip
        wd = torch.sigmoid(self.l2(z))  # (B, C, H, W)   weight map for the up-sampled map
        return torch.cat([s * ws, d * wd], dim=1)  # (B, 2C, H, W)


class LGNet(SegmentationModel):
    """LG-Net; the three switches re-run the paper's ablation (Table 2) through one class."""

    size_divisor = 16
    #: identities recorded before ``mrc_levels`` existed were built with MRC on all 5 levels
    #: (:func:`lungseg.models.complete_options`)
    versioned_options = {"mrc_levels": 5}

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        base_channels: int = 64,
        *,
        use_mrc: bool = True,
        mrc_levels: int = 4,
        use_lg_attention: bool = True,
        use_ff: bool = True,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        pcm_impl: str = "auto",
        chunk_rows: int | None = 1024,
        pcm_block_rows: int | None = None,
        rse_dropout: float = 0.1,
    ):
        super().__init__(in_channels, num_classes, base_channels)
        if isinstance(mrc_levels, bool) or not isinstance(mrc_levels, int) or not 1 <= mrc_levels <= 5:
            raise ValueError(
                f"mrc_levels must be an integer in 1..5 (4: the levels followed by a max-pool, 5: also the "
                f"bottleneck), got {mrc_levels!r}"
            )
        self.use_mrc, self.use_lg_attention, self.use_ff = use_mrc, use_lg_attention, use_ff
        self.mrc_levels = mrc_levels
        w = widths(base_channels)
        self.encoder = nn.ModuleList()
        for i in range(5):
            conv = DoubleConv(in_channels if i == 0 else w[i - 1], w[i])
            mrc = use_mrc and i < mrc_levels
            self.encoder.append(nn.Sequential(conv, MultiLevelResidualConv(w[i])) if mrc else conv)
        attn = dict(max_tokens=max_tokens, pcm_impl=pcm_impl, chunk_rows=chunk_rows, block_rows=pcm_block_rows)
        self.attention = nn.ModuleList(
            [LGAttention(w[i], **attn) if use_lg_attention else nn.Identity() for i in range(4)]
        )
        self.decoder = nn.ModuleList(
            [
                DecoderStage(
                    w[i + 1], w[i], "bilinear", FeatureFusion(w[i], rse_dropout=rse_dropout) if use_ff else None
                )
                for i in reversed(range(4))
            ]
        )
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        # encoder (B, base·2^i, H/2^i, W/2^i), i = 0..4; LG-Attention on skips 0..3; decoder back up
        x = encode_decode(x, self.encoder, self.decoder, skip_blocks=self.attention)  # (B, base, H, W)
        return self.head(x)  # (B, num_classes, H, W)
