"""Attention pieces shared by the zoo: token-budget pooling, PCM / LG-Attention (LG-Net),
DSA / gated conv / PAM (PR-Net) and the additive attention gate (Attention U-Net).

``max_tokens`` (PCM and DSA are O(N²) in the number of pixels N = H·W): when N exceeds it, the
attention inputs are average-pooled to the largest grid ``h'×w'`` with ``h'·w' <= max_tokens`` that
keeps the aspect ratio, attention runs on that grid, and the result is resized bilinearly back to
H×W. ``max_tokens=None`` is always exact; when ``N <= max_tokens`` the exact path is taken, so the
two agree bit for bit there (tested). Default ``DEFAULT_MAX_TOKENS = 64·64 = 4096``: at that size a
full N×N affinity is 4096² fp32 = 64 MiB per image and head, which keeps LG-Net and PR-Net
trainable at 512² batch 4 (base 64) on one 80 GB GPU (measured in ``bench/results``), while maps
of 64×64 and smaller (the two deepest skips at 512², everything at ≤ 256² for deep levels) stay
exact. The cost of pooling is resolution of the long-range term only: the skip itself is
multiplied/added at full resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import cbr

DEFAULT_MAX_TOKENS = 64 * 64


def token_grid(h: int, w: int, max_tokens: int | None) -> tuple[int, int]:
    """The grid attention runs on: ``(h, w)`` itself when it fits, else the largest aspect-keeping
    grid within ``max_tokens`` tokens."""
    if max_tokens is None or h * w <= max_tokens:
        return h, w
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    s = math.sqrt(max_tokens / (h * w))
    gh, gw = max(1, int(h * s)), max(1, int(w * s))
    # grow either side while it still fits (int() rounds both down)
    while (gh + 1) * gw <= max_tokens and gh < h:
        gh += 1
    while gh * (gw + 1) <= max_tokens and gw < w:
        gw += 1
    return gh, gw


def _pool(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == grid else F.adaptive_avg_pool2d(x, grid)


def _unpool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------
# PCM / LG-Attention (LG-Net §1.3, §2.3)
# ----------------------------------------------------------------------------------------------


def _pcm_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows ``q`` (B,n,c) against all keys ``k`` (B,N,c) (unit-norm), values ``v`` (B,N,C)."""
    a = torch.relu(q @ k.transpose(1, 2))  # (B, n, N)   ReLU(cos)
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)  # (B, n, C)   row-normalised Σ_j Â_ij v_j


def pixel_correlation(
    theta: torch.Tensor, value: torch.Tensor, *, eps: float = 1e-6, chunk_rows: int | None = 1024
) -> torch.Tensor:
    """PCM (Eq. 4): ``y_i = Σ_j ReLU(cos(θ_i, θ_j)) v_j / (Σ_j ReLU(cos(θ_i, θ_j)) + ε)``.

    ``theta`` (B,c,H,W), ``value`` (B,C,H,W) → (B,C,H,W). Rows are computed ``chunk_rows`` at a time;
    when gradients are needed each chunk is checkpointed (recomputed in backward), so neither pass
    holds more than one (chunk × N) block of affinities. ``chunk_rows=None``: one block.
    """
    b, c, h, w = theta.shape
    n = h * w
    k = F.normalize(theta.flatten(2).transpose(1, 2), dim=-1)  # (B, N, c)
    v = value.flatten(2).transpose(1, 2)  # (B, N, C)
    if chunk_rows is None or n <= chunk_rows:
        y = _pcm_rows(k, k, v, eps)  # (B, N, C)
    else:
        grad = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
        parts = []
        for s in range(0, n, chunk_rows):
            q = k[:, s : s + chunk_rows]
            if grad:
                parts.append(checkpoint(_pcm_rows, q, k, v, eps, use_reentrant=False))
            else:
                parts.append(_pcm_rows(q, k, v, eps))
        y = torch.cat(parts, dim=1)  # (B, N, C)
    return y.transpose(1, 2).reshape(b, value.shape[1], h, w)


def pcm(
    theta: torch.Tensor,
    value: torch.Tensor,
    *,
    max_tokens: int | None,
    eps: float = 1e-6,
    chunk_rows: int | None = 1024,
) -> torch.Tensor:
    """PCM with the ``max_tokens`` budget: pool θ and v, attend on the grid, resize back."""
    size = tuple(theta.shape[-2:])
    grid = token_grid(*size, max_tokens)
    y = pixel_correlation(_pool(theta, grid), _pool(value, grid), eps=eps, chunk_rows=chunk_rows)
    return _unpool(y, size)


def quadrants(x: torch.Tensor) -> list[torch.Tensor]:
    """The four spatial quadrants of (B,C,H,W), H and W even: top-left, top-right, bottom-left, bottom-right."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]


def from_quadrants(parts: list[torch.Tensor]) -> torch.Tensor:
    tl, tr, bl, br = parts
    return torch.cat([torch.cat([tl, tr], dim=-1), torch.cat([bl, br], dim=-1)], dim=-2)


def pixel_weighted_aggregation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 10: ``x·x/(x+y) + y·y/(x+y) = (x² + y²)/(x + y + ε)`` (x, y ≥ 0)."""
    return (x * x + y * y) / (x + y + eps)


class LGAttention(nn.Module):
    """Local and global attention fusion on a skip (LG-Net §2.3, Eq. 5–10).

    ``θ = Conv1×1(C → C/2)`` (with bias); global ``F* = PCM(F)``; local: PCM on each quadrant, put
    back in place → ``f*``; output ``F ⊙ PWA(f*, F*)``. ``F`` must be non-negative (it is: the skips
    end with a ReLU), so the PCM outputs and the PWA weights are non-negative too.
    """

    def __init__(
        self,
        channels: int,
        *,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        chunk_rows: int | None = 1024,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.theta = nn.Conv2d(channels, max(1, channels // 2), 1)
        self.max_tokens = max_tokens
        self.chunk_rows = chunk_rows
        self.eps = eps

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        t = self.theta(f)  # (B, C/2, H, W)
        kw = dict(max_tokens=self.max_tokens, eps=self.eps, chunk_rows=self.chunk_rows)
        g = pcm(t, f, **kw)  # (B, C, H, W)   F* (global)
        loc = from_quadrants(
            [pcm(tq, fq, **kw) for tq, fq in zip(quadrants(t), quadrants(f))]
        )  # (B, C, H, W)   f* (four quadrants, each (B, C, H/2, W/2))
        return f * pixel_weighted_aggregation(loc, g, self.eps)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"max_tokens={self.max_tokens}, chunk_rows={self.chunk_rows}"


# ----------------------------------------------------------------------------------------------
# DSA / GC / PAM (PR-Net §2.3)
# ----------------------------------------------------------------------------------------------


def default_heads(channels: int, min_head_dim: int = 8, max_heads: int = 8) -> int:
    """Most heads (≤ ``max_heads``) that divide ``channels`` with head dim ≥ ``min_head_dim`` (≥ 1 head)."""
    for h in range(min(max_heads, channels // min_head_dim), 1, -1):
        if channels % h == 0:
            return h
    return 1


class DilatedSelfAttention(nn.Module):
    """DSA(x, r): q, k, v = three 3×3 convs with dilation r (bias, no norm); multi-head scaled
    dot-product attention over the pixels, softmax over keys
    (:func:`torch.nn.functional.scaled_dot_product_attention`); reshaped back to (B,C,H,W).

    Deviation: PR-Net's Eq. 1 normalises over the query index (DANet style); the standard
    key-softmax is used (architecture.md §PR-Net 4). No output projection (the paper has none).
    """

    def __init__(
        self,
        channels: int,
        dilation: int,
        *,
        heads: int | None = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
    ):
        super().__init__()
        self.heads = default_heads(channels) if heads is None else heads
        if channels % self.heads:
            raise ValueError(f"channels {channels} not divisible by heads {self.heads}")
        self.qkv = nn.ModuleList(
            [nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation) for _ in range(3)]
        )
        self.max_tokens = max_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        grid = token_grid(h, w, self.max_tokens)
        q, k, v = (_pool(conv(x), grid) for conv in self.qkv)  # 3 × (B, C, h', w')
        n = grid[0] * grid[1]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, C, h', w') → (B, heads, N', C/heads)
            return t.reshape(b, self.heads, c // self.heads, n).transpose(2, 3)

        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # (B, heads, N', C/heads)
        y = y.transpose(2, 3).reshape(b, c, *grid)  # (B, C, h', w')
        return _unpool(y, (h, w))  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, max_tokens={self.max_tokens}"


class GatedConv(nn.Module):
    """GC(low, high) (PR-Net Eq. 2): ``ReLU(Conv3×3(low)) ⊙ σ(Conv3×3(high))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.feat = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.feat(low)) * torch.sigmoid(self.gate(high))  # (B, C, H, W)


class ProgressiveAttention(nn.Module):
    """PAM(x): ``c = CBR3×3(x)``, ``d2 = DSA(x, 2)``, ``d3 = DSA(x, 3)``, ``g1 = GC(c, d2)``,
    ``g2 = GC(g1, d3)``, output ``CBR1×1(concat(c, g1, g2))`` with C channels."""

    def __init__(self, channels: int, *, heads: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS):
        super().__init__()
        self.conv = cbr(channels, channels, 3)
        self.dsa2 = DilatedSelfAttention(channels, 2, heads=heads, max_tokens=max_tokens)
        self.dsa3 = DilatedSelfAttention(channels, 3, heads=heads, max_tokens=max_tokens)
        self.gc1 = GatedConv(channels)
        self.gc2 = GatedConv(channels)
        self.fuse = cbr(3 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)  # (B, C, H, W)
        g1 = self.gc1(c, self.dsa2(x))  # (B, C, H, W)
        g2 = self.gc2(g1, self.dsa3(x))  # (B, C, H, W)
        return self.fuse(torch.cat([c, g1, g2], dim=1))  # (B, 3C, H, W) → (B, C, H, W)


# ----------------------------------------------------------------------------------------------
# Additive attention gate (Attention U-Net, Oktay et al. 2018)
# ----------------------------------------------------------------------------------------------


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
