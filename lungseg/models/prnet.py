"""PR-Net (the residual + progressive-attention lung CT segmentation network of
``seeds/001_1629151eb43ef42a.txt``), read as fixed by ``../shared/design/architecture.md`` §PR-Net.

Structure (widths ``base·(1,2,4,8,16)``, four 2×2 average-pool down-samplings,
``size_divisor = 16``):
- Encoder level = residual block with InstanceNorm: ``r = CIR1×1(x)``, ``h = CIR3×3(CIR3×3(r))``,
  output ``r + h`` (the residual is the 1×1 output, as the paper stresses). Level 5 is the bottleneck.
- Skip enhancement on each of the 4 skips: double CBR 3×3 → PAM
  (:class:`lungseg.models.attention.ProgressiveAttention`: CBR3×3, DSA with dilation 2 and 3,
  two gated convs, CBR1×1 fusion of ``concat(c, g1, g2)``). ``use_pam=False`` keeps only the
  double CBR (ablation).
- Decoder level = ConvTranspose 2×2 stride 2 (with bias) → concat with the enhanced skip → double
  CBR 3×3. Head Conv 1×1 → logits.

Choices and deviations:
- ``dsa_softmax`` (default ``"key"``): DSA normalises its weights over the keys (the standard
  softmax, ``scaled_dot_product_attention``; architecture.md §PR-Net 4 — a deviation from Eq. 1,
  kept as the default so every recorded result keeps its model, bitwise); ``"query"`` = Eq. 1 as
  written, ``B_ij = exp(M_i·N_j) / Σ_k exp(M_k·N_j)`` (each key's weights over the queries sum to 1,
  DANet style), in both ``dsa_impl`` kernels (the paper preset's choice).
- ``heads=None`` → the most heads ≤ 8 with head dim ≥ 8 (1 head when C < 16). q/k/v convs have a
  bias (no norm follows); no output projection.
- ``dsa_scaled`` (default True): DSA logits are ``q·k/√d`` (d = head dim), the transformer
  scaling DSA always used here; Eq. 1 has no ``1/√d`` (``dsa_scaled=False``, the paper preset's
  choice). The default keeps the scaling: the logits' standard deviation grows as √d (d = 8 to 64
  at base 64), so unscaled logits at d = 64 are 8× wider and push the softmax towards one-hot rows
  with small gradients, the reason Vaswani et al. introduced the factor; it also keeps the results
  recorded so far comparable.
- ``dsa_impl`` (default ``"auto"``) picks how DSA is computed, the same function and parameters
  in every case (:class:`lungseg.models.attention.DilatedSelfAttention`,
  :func:`lungseg.models.attention.resolve_dsa_impl`): ``"reference"`` = three q/k/v convs and
  ``scaled_dot_product_attention`` with contiguous per-head q/k/v (PyTorch's fused flash kernel on
  CPU; strided inputs fell back to the unfused math kernel), the original path kept as the ground
  truth; ``"blocked"`` = one conv of the three convs' concatenated weights and a blocked softmax
  attention (custom autograd op, never N×N, backward from the saved log-sum-exp), equal to the
  reference to 1e-10 in float64 over the whole network's output and parameter gradients, with and
  without pooling (tested). ``"auto"`` = blocked on CPU with one torch thread (there PyTorch's
  flash backward at head dim 8 was ~2/3 of a train step at 128², base 16; the blocked kernel
  made the step ~2× faster, ``bench/results/ATTENTION.md``), the reference elsewhere (CUDA; CPU
  with several threads, where flash parallelises over batch × heads). A checkpoint loads under
  any of them (same state_dict keys, tested).
- ``max_tokens`` default 4096 (64×64), see :mod:`lungseg.models.attention`.
- InstanceNorm with ``affine=True`` (learnable scale/shift; PyTorch's default has none).
- Loss: not in the paper; ``lungseg.losses`` provides the documented default (BCE + soft Dice).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .attention import DEFAULT_MAX_TOKENS, ProgressiveAttention
from .blocks import DecoderStage, DoubleConv, SegmentationModel, cir, encode_decode, encoder_levels, widths


class INResidualBlock(nn.Module):
    """``r = CIR1×1(x)``; ``out = r + CIR3×3(CIR3×3(r))``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = cir(in_ch, out_ch, 1)
        self.body = nn.Sequential(cir(out_ch, out_ch, 3), cir(out_ch, out_ch, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.proj(x)  # (B, out, H, W)
        return r + self.body(r)  # (B, out, H, W)


class PRNet(SegmentationModel):
    size_divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        base_channels: int = 64,
        *,
        use_pam: bool = True,
        heads: int | None = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        dsa_scaled: bool = True,
        dsa_impl: str = "auto",
        dsa_softmax: str = "key",
    ):
        super().__init__(in_channels, num_classes, base_channels)
        self.use_pam = use_pam
        w = widths(base_channels)
        self.encoder = encoder_levels(in_channels, w, INResidualBlock)
        pam = dict(
            heads=heads, max_tokens=max_tokens, dsa_scaled=dsa_scaled, dsa_impl=dsa_impl, dsa_softmax=dsa_softmax
        )
        self.skip_enhance = nn.ModuleList(
            [
                nn.Sequential(
                    DoubleConv(w[i], w[i]),
                    *([ProgressiveAttention(w[i], **pam)] if use_pam else []),
                )
                for i in range(4)
            ]
        )
        self.decoder = nn.ModuleList([DecoderStage(w[i + 1], w[i], "transpose") for i in reversed(range(4))])
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        # encoder (B, base·2^i, H/2^i, W/2^i) with 2×2 avg-pool; skips 0..3 → double CBR + PAM
        x = encode_decode(x, self.encoder, self.decoder, down=F.avg_pool2d, skip_blocks=self.skip_enhance)
        return self.head(x)  # (B, num_classes, H, W)
