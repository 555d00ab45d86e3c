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

PCM kernels (``pcm_impl``, one function computed three ways; ``tests/models/test_attention.py``):

- ``"reference"`` (:func:`pixel_correlation`): the original autograd ops, rows in checkpointed
  chunks. Kept unchanged as the ground truth.
- ``"blocked"`` (:func:`pixel_correlation_blocked`): one custom autograd op that never holds N×N;
  row blocks of ~``PCM_BLOCK_ELEMS`` affinities, recomputed in backward, whose gradients use the
  symmetry of the affinity matrix. Equal to the reference in output and gradients to 1e-12 in
  float64 and 1e-5 (absolute) in float32, with and without pooling, for B > 1, odd N and rows whose
  only positive score is the diagonal or that have none (θ_i = 0). The CPU default.
- ``"flex"`` (:func:`pixel_correlation_flex`): FlexAttention with the score ``log(ReLU(s) + t)`` and
  an exact lse correction; compiled on CUDA (the GPU default). On CPU FlexAttention is forward-only:
  its forward is tested against the reference there (1e-5), and the correction's gradients with a
  dense autograd stand-in for the kernel; **the CUDA kernel itself is not run by the tests here.**

DSA attention kernels (``dsa_impl``, PR-Net; the same softmax attention computed two ways):

- ``"reference"``: three q/k/v convs and :func:`torch.nn.functional.scaled_dot_product_attention`,
  the original path, kept unchanged as the ground truth.
- ``"blocked"`` (:func:`softmax_attention_blocked`): one q/k/v conv of the three convs' concatenated
  weights and one custom autograd op over blocks of keys × queries that never holds N×N, backward
  from the saved log-sum-exp. Equal to the reference to 1e-12 in float64 and as close in float32 as
  SDPA is to float64 itself (tested). The default on one CPU thread, where PyTorch's flash backward
  at head dim 8 dominated a PR-Net train step (:func:`resolve_dsa_impl`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
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

PCM_IMPLS = ("auto", "reference", "blocked", "flex")
"""Valid ``pcm_impl`` values; see :func:`resolve_pcm_impl`."""

#: Elements of one affinity block of the blocked PCM at c + C = 24 (2^17 fp32 = 512 KiB, one L2 of
#: the Zen 3 cores measured): small enough that the block stays in cache between the GEMM that
#: writes it and the passes that read it; :func:`block_rows_for` scales it with the channels.
PCM_BLOCK_ELEMS = 1 << 17

#: The constant added inside FlexAttention's ``log(relu(s) + t)``: any t > 0 works because the
#: ``lse`` correction in :func:`pixel_correlation_flex` removes it exactly; 1e-12 keeps ``log t`` finite
#: in fp32 and the correction's cancellation (rows with no positive score) far below fp32 rounding.
_FLEX_TINY = 1e-12


def check_pcm_impl(impl: str) -> str:
    """``impl`` itself, or ``ValueError`` naming the valid values."""
    if impl not in PCM_IMPLS:
        raise ValueError(f"unknown pcm_impl {impl!r} (valid: {', '.join(PCM_IMPLS)})")
    return impl


def flex_available() -> bool:
    """Whether this torch has FlexAttention (``torch.nn.attention.flex_attention``, torch ≥ 2.5)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_pcm_impl(impl: str, device: torch.device) -> str:
    """The PCM implementation that runs for ``impl`` on ``device``.

    ``"auto"``: ``"flex"`` on CUDA when FlexAttention is available, ``"reference"`` on the ``meta``
    device (nothing is computed there; the FLOP counter then sees the textbook matmuls, not the
    blocked kernel's extra ones column and padding), else ``"blocked"`` (FlexAttention has no
    backward on CPU). Other values are returned as they are (``ValueError`` when unknown).
    """
    check_pcm_impl(impl)
    if impl != "auto":
        return impl
    if device.type == "meta":
        return "reference"
    return "flex" if device.type == "cuda" and flex_available() else "blocked"


def _pcm_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows ``q`` (B,n,c) against all keys ``k`` (B,N,c) (unit-norm), values ``v`` (B,N,C)."""
    a = torch.relu(q @ k.transpose(1, 2))  # (B, n, N)   ReLU(cos)
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)  # (B, n, C)   row-normalised Σ_j Â_ij v_j


def _tokens(theta: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` = unit-norm θ tokens (B,N,c) and ``v`` = value tokens (B,N,C) of (B,·,H,W) maps."""
    k = F.normalize(theta.flatten(2).transpose(1, 2), dim=-1)  # (B, N, c)
    v = value.flatten(2).transpose(1, 2)  # (B, N, C)
    return k, v


def _to_map(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B,N,C) tokens → (B,C,H,W)."""
    return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], h, w)


def pixel_correlation(
    theta: torch.Tensor, value: torch.Tensor, *, eps: float = 1e-6, chunk_rows: int | None = 1024
) -> torch.Tensor:
    """PCM (Eq. 4): ``y_i = Σ_j ReLU(cos(θ_i, θ_j)) v_j / (Σ_j ReLU(cos(θ_i, θ_j)) + ε)``.

    The reference implementation (``pcm_impl="reference"``): plain autograd ops, kept unchanged as
    the ground truth the fused paths are tested against. ``theta`` (B,c,H,W), ``value`` (B,C,H,W) →
    (B,C,H,W). Rows are computed ``chunk_rows`` at a time; when gradients are needed each chunk is
    checkpointed (recomputed in backward), so neither pass holds more than one (chunk × N) block of
    affinities. ``chunk_rows=None``: one block.
    """
    b, c, h, w = theta.shape
    n = h * w
    k, v = _tokens(theta, value)  # (B, N, c), (B, N, C)
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
    return _to_map(y, h, w)


def _pad_cols(x: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Zero columns up to a multiple of ``multiple``: a GEMM output of C+1 columns costs as much as
    one of the next multiple of 8 (measured), so the padding is free and keeps MKL on its fast path;
    the zeros only add exact zeros to the products. (Padding an inner dimension is not free.)"""
    m = x.shape[-1]
    return x if m % multiple == 0 else F.pad(x, (0, multiple - m % multiple))


class _BlockedPCM(torch.autograd.Function):
    """PCM on unit-norm tokens ``k`` (B,N,c) and values ``v`` (B,N,C), one block of rows at a time.

    Forward per image and block of n rows: ``S = k_r kᵀ`` (n,N), ``A = ReLU(S)`` in place, then one
    GEMM ``A·[v, 1]`` gives numerator and row sum together. Only ``k, v, y, den`` (O(N·C)) are saved;
    backward recomputes each block's ``S`` instead of storing N×N.

    Backward uses that ``A`` is symmetric (``S = k kᵀ``), so every gradient of a row block needs only
    that block's rows of ``A``: with ``g_num = ∂L/∂y / den`` and ``g_den = −(∂L/∂y · y) / den``,
    ``∂L/∂v_r = A_r · g_num`` and ``∂L/∂k_r = ((g_num_r vᵀ + v_r g_numᵀ + g_den_r 1ᵀ + 1 g_denᵀ) ⊙ [S_r > 0]) · k``,
    the bracket being one GEMM of ``[g_num_r, v_r, g_den_r, 1]`` with ``[v, g_num, 1, g_den]ᵀ``.

    Choices from micro-benchmarks on one CPU thread (MKL): 2-D GEMMs per image rather than ``bmm``
    over the batch (the block then stays ~``PCM_BLOCK_ELEMS`` whatever B is), the forward's output
    width C+1 zero-padded to a multiple of 8, and ``∂L/∂k_r`` computed transposed (``kᵀ·Gᵀ``, c×n):
    MKL ran ``G·k`` with c = 8 output columns at about a fifth of the transposed form's speed.
    """

    @staticmethod
    def forward(ctx, k: torch.Tensor, v: torch.Tensor, eps: float, rows: int) -> torch.Tensor:
        b, n, _ = k.shape
        cv = v.shape[-1]
        v1 = _pad_cols(torch.cat([v, v.new_ones(b, n, 1)], dim=-1)).contiguous()  # (B, N, ≥C+1)   col C → row sums
        acc = v.new_empty(v1.shape)  # (B, N, ≥C+1)   [Σ_j A_ij v_j, Σ_j A_ij, 0…]
        for i in range(b):
            ki, kti, vi, acci = k[i], k[i].t(), v1[i], acc[i]
            for s in range(0, n, rows):
                a = torch.mm(ki[s : s + rows], kti)  # (n, N)   S = cos
                a.relu_()  # A = ReLU(S)
                torch.mm(a, vi, out=acci[s : s + rows])  # (n, ≥C+1)
        den = acc[..., cv : cv + 1] + eps  # (B, N, 1)
        y = acc[..., :cv] / den  # (B, N, C)
        ctx.save_for_backward(k, v, y, den)
        ctx.rows = rows
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        k, v, y, den = ctx.saved_tensors
        rows = ctx.rows
        b, n, c = k.shape
        gy = gy.to(y.dtype)
        g_num = gy / den  # (B, N, C)
        g_den = -(gy * y).sum(-1, keepdim=True) / den  # (B, N, 1)
        ones = torch.ones_like(g_den)
        left = torch.cat([g_num, v, g_den, ones], dim=-1)  # (B, N, 2C+2)
        right = torch.cat([v, g_num, ones, g_den], dim=-1).transpose(1, 2).contiguous()  # (B, 2C+2, N)
        gkt, gv = k.new_empty(b, c, n), torch.empty_like(v)  # ∂L/∂k transposed (B, c, N); ∂L/∂v (B, N, C)
        for i in range(b):
            ki, kti = k[i], k[i].t()
            for s in range(0, n, rows):
                r = slice(s, s + rows)
                a = torch.mm(ki[r], kti)  # (n, N)   S recomputed
                g = torch.mm(left[i, r], right[i])  # (n, N)   (∂L/∂A)_r + (∂L/∂A)ᵀ_r
                g = torch.ops.aten.threshold_backward(g, a, 0)  # (n, N)   ⊙ [S > 0] (ReLU's backward)
                a.relu_()  # A_r
                torch.mm(a, g_num[i], out=gv[i, r])  # (n, C)   A symmetric: (Aᵀ)_r = A_r
                gkt[i, :, r] = torch.mm(kti, g.t())  # (c, n)
        return gkt.transpose(1, 2), gv, None, None


def block_rows_for(n: int, channels: int, block_elems: int | None = None) -> int:
    """Rows per block of the blocked PCM for ``n`` tokens and ``channels = c + C``.

    ``block_elems·max(channels, 24)/24 / n`` rows (default ``PCM_BLOCK_ELEMS``: a 512 KiB fp32
    block at c + C = 24, where the passes over the block dominate), but at least ``channels`` and 16
    rows (the GEMMs re-read k and v once per block; with wide channels they need more rows to stay
    efficient), at most n. Measured on one CPU thread: best 32 rows at N = 4096, c + C = 24;
    64–128 at c + C = 48–96 and 128–256 at c + C = 192 (N = 4096–16384); 8 rows were 3–7× slower there.
    """
    elems = PCM_BLOCK_ELEMS if block_elems is None else block_elems
    rows = max(elems * max(channels, 24) // (24 * max(n, 1)), channels, 16)
    return max(1, min(n, rows))


def pixel_correlation_blocked(
    theta: torch.Tensor, value: torch.Tensor, *, eps: float = 1e-6, block_rows: int | None = None
) -> torch.Tensor:
    """PCM (same function as :func:`pixel_correlation`) as one autograd op that never holds N×N.

    Rows are processed ``block_rows`` at a time per image (``None``: :func:`block_rows_for`, from N
    and the channels); forward saves only O(N·C) and backward
    recomputes each block. Runs on any device; computes in the promoted dtype of θ and v with
    autocast off (mixed precision would change the affinities' rounding, not the memory).
    """
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be >= 1 or None, got {block_rows}")
    b, c, h, w = theta.shape
    n = h * w
    k, v = _tokens(theta, value)  # (B, N, c), (B, N, C)
    dt = torch.promote_types(k.dtype, v.dtype)
    rows = block_rows_for(n, c + value.shape[1]) if block_rows is None else min(block_rows, n)
    with torch.autocast(k.device.type, enabled=False):
        y = _BlockedPCM.apply(k.to(dt).contiguous(), v.to(dt).contiguous(), float(eps), rows)  # (B, N, C)
    return _to_map(y, h, w)


def _pad_last(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.pad(x, (0, size - x.shape[-1]))


def _flex_dim(d: int) -> int:
    """Head dim FlexAttention's GPU kernels take: a power of two ≥ 16 (zero padding is exact here)."""
    return max(16, 1 << (d - 1).bit_length())


def _relu_log_score(score, b, h, q_idx, kv_idx):
    return torch.log(torch.relu(score) + _FLEX_TINY)


_compiled_flex = None


def _flex_fn(device: torch.device, needs_grad: bool):
    """``flex_attention`` compiled once per process on CUDA (eager FlexAttention materialises the
    scores); eager elsewhere, forward only (``RuntimeError`` when gradients are needed: FlexAttention
    has no backward on CPU)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if device.type != "cuda":
        if needs_grad:
            raise RuntimeError(
                f"pcm_impl='flex' has no backward on {device.type} (FlexAttention); "
                "use pcm_impl='blocked' or 'auto' to train"
            )
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def pixel_correlation_flex(theta: torch.Tensor, value: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """PCM through FlexAttention (the fused GPU path; **not run on a GPU in this repository's tests**).

    With unit-norm θ as query and key, ``scale=1`` and ``score_mod = log(ReLU(s) + t)``, softmax
    attention returns ``o_i = (num_i + t·Σ_j v_j) / (Σ_j ReLU(s_ij) + N·t)`` and ``lse_i = log(Σ_j ReLU(s_ij) + N·t)``.
    The reference ``num_i / (Σ_j ReLU(s_ij) + ε)`` is recovered exactly (not only up to t) as
    ``(o_i·e^{lse_i} − t·Σ_j v_j) / (e^{lse_i} − N·t + ε)``, also in rows with no positive score
    (θ_i = 0), where plain softmax would return the mean of v instead of 0. Head dims are zero-padded
    to a power of two ≥ 16 (exact: zeros add nothing to cos or to the output's kept channels).
    FlexAttention has no backward on CPU: there this path is forward-only (``RuntimeError`` if
    gradients are needed); on CUDA the compiled kernel runs forward and backward.
    """
    from torch.nn.attention.flex_attention import AuxRequest

    b, c, h, w = theta.shape
    n, cv = h * w, value.shape[1]
    k, v = _tokens(theta, value)  # (B, N, c), (B, N, C)
    needs_grad = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
    if not needs_grad:
        k, v = k.detach(), v.detach()  # views made under no_grad still report requires_grad
    dt = v.dtype if torch.is_autocast_enabled(v.device.type) else torch.promote_types(k.dtype, v.dtype)
    qk = _pad_last(k.to(dt), _flex_dim(c)).unsqueeze(1)  # (B, 1, N, c')
    vv = _pad_last(v.to(dt), _flex_dim(cv)).unsqueeze(1)  # (B, 1, N, C')
    o, aux = _flex_fn(theta.device, needs_grad)(
        qk, qk, vv, score_mod=_relu_log_score, scale=1.0, return_aux=AuxRequest(lse=True)
    )  # (B, 1, N, C'), lse (B, 1, N)
    ct = torch.promote_types(dt, torch.float32)  # the correction in fp32 at least (bf16 under autocast)
    z = aux.lse[:, 0].to(ct).exp().unsqueeze(-1)  # (B, N, 1)   Σ_j ReLU(s_ij) + N·t
    o = o[:, 0, :, :cv].to(ct)  # (B, N, C)
    vsum = v.to(ct).sum(1, keepdim=True)  # (B, 1, C)
    y = (o * z - _FLEX_TINY * vsum) / (z - n * _FLEX_TINY + eps)  # (B, N, C)
    return _to_map(y.to(dt), h, w)


def pcm(
    theta: torch.Tensor,
    value: torch.Tensor,
    *,
    max_tokens: int | None,
    eps: float = 1e-6,
    chunk_rows: int | None = 1024,
    impl: str = "reference",
    block_rows: int | None = None,
) -> torch.Tensor:
    """PCM with the ``max_tokens`` budget: pool θ and v, attend on the grid, resize back.

    ``impl`` (see :func:`resolve_pcm_impl`): ``"reference"`` = :func:`pixel_correlation`
    (``chunk_rows``), ``"blocked"`` = :func:`pixel_correlation_blocked` (``block_rows``),
    ``"flex"`` = :func:`pixel_correlation_flex`, ``"auto"`` = flex on CUDA, else blocked.
    """
    size = tuple(theta.shape[-2:])
    grid = token_grid(*size, max_tokens)
    t, v = _pool(theta, grid), _pool(value, grid)
    impl = resolve_pcm_impl(impl, theta.device)
    if impl != "reference" and torch.jit.is_tracing():
        # a tracer (TorchScript, ONNX export) records plain tensor ops, not a Python autograd.Function
        # or a compiled kernel: export the reference ops, the same function
        impl = "reference"
    if impl == "reference":
        y = pixel_correlation(t, v, eps=eps, chunk_rows=chunk_rows)
    elif impl == "blocked":
        y = pixel_correlation_blocked(t, v, eps=eps, block_rows=block_rows)
    else:
        y = pixel_correlation_flex(t, v, eps=eps)
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

    ``pcm_impl`` picks the PCM kernel (:func:`resolve_pcm_impl`; resolved at each call from the
    input's device). The reference runs the four quadrants one by one (today's path, unchanged); the
    fused implementations stack them along the batch (one call of batch 4B, the same function).
    """

    def __init__(
        self,
        channels: int,
        *,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        chunk_rows: int | None = 1024,
        eps: float = 1e-6,
        pcm_impl: str = "auto",
        block_rows: int | None = None,
    ):
        super().__init__()
        self.theta = nn.Conv2d(channels, max(1, channels // 2), 1)
        self.max_tokens = max_tokens
        self.chunk_rows = chunk_rows
        self.eps = eps
        self.pcm_impl = check_pcm_impl(pcm_impl)
        self.block_rows = block_rows

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        t = self.theta(f)  # (B, C/2, H, W)
        impl = resolve_pcm_impl(self.pcm_impl, f.device)
        kw = dict(
            max_tokens=self.max_tokens, eps=self.eps, chunk_rows=self.chunk_rows, impl=impl, block_rows=self.block_rows
        )
        g = pcm(t, f, **kw)  # (B, C, H, W)   F* (global)
        if impl == "reference":
            loc = from_quadrants(
                [pcm(tq, fq, **kw) for tq, fq in zip(quadrants(t), quadrants(f))]
            )  # (B, C, H, W)   f* (four quadrants, each (B, C, H/2, W/2))
        else:
            tq, fq = torch.cat(quadrants(t), dim=0), torch.cat(quadrants(f), dim=0)  # (4B, ·, H/2, W/2)
            loc = from_quadrants(list(pcm(tq, fq, **kw).chunk(4, dim=0)))  # (B, C, H, W)   f*
        return f * pixel_weighted_aggregation(loc, g, self.eps)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"max_tokens={self.max_tokens}, pcm_impl={self.pcm_impl!r}, chunk_rows={self.chunk_rows}"


# ----------------------------------------------------------------------------------------------
# DSA / GC / PAM (PR-Net §2.3)
# ----------------------------------------------------------------------------------------------

DSA_IMPLS = ("auto", "reference", "blocked")
"""Valid ``dsa_impl`` values; see :func:`resolve_dsa_impl`."""

#: Scores per block of the blocked DSA attention (2^18 fp32 = 1 MiB; backward holds two): 4096 keys ×
#: 64 queries, the best of 16–128 queries measured on one CPU thread at N = 4096, d = 8.
#: :func:`dsa_block_shape` turns it into query rows and head-maps per block.
DSA_BLOCK_ELEMS = 1 << 18

_LOG2E = math.log2(math.e)


def check_dsa_impl(impl: str) -> str:
    """``impl`` itself, or ``ValueError`` naming the valid values."""
    if impl not in DSA_IMPLS:
        raise ValueError(f"unknown dsa_impl {impl!r} (valid: {', '.join(DSA_IMPLS)})")
    return impl


def resolve_dsa_impl(impl: str, device: torch.device, threads: int | None = None) -> str:
    """The DSA attention kernel that runs for ``impl`` on ``device``.

    ``"auto"``: ``"blocked"`` on CPU when torch computes on one thread (``threads``, default
    ``torch.get_num_threads()``; e.g. each rank of a torchrun launch, which sets ``OMP_NUM_THREADS=1``),
    ``"reference"`` otherwise. Measured (PR-Net's shapes at 128², base 16, N = 4096, d = 8): on one
    thread the blocked kernel trains ~2× faster than SDPA, whose CPU flash backward is the slow part;
    on two threads SDPA's flash kernel, parallel over batch × heads in one parallel region, was
    ~2.3× faster than on one and ahead of the blocked kernel, whose many small GEMMs and passes
    parallelise poorly. CUDA: SDPA's fused kernels; ``meta``: the FLOP counter sees SDPA's textbook
    matmuls. Other values are returned as they are (``ValueError`` when unknown).
    """
    check_dsa_impl(impl)
    if impl != "auto":
        return impl
    if device.type != "cpu":
        return "reference"
    return "blocked" if (torch.get_num_threads() if threads is None else threads) == 1 else "reference"


def dsa_block_shape(n: int, maps: int, block_elems: int | None = None) -> tuple[int, int]:
    """``(rows, maps per block)`` of the blocked DSA attention for ``maps`` head-maps of ``n`` tokens.

    ``block_elems / n`` rows (at least 16, at most n) of one head-map; when a whole head-map fits,
    as many whole head-maps as fit (one batched GEMM per block instead of a Python loop over tiny
    ones).
    """
    elems = DSA_BLOCK_ELEMS if block_elems is None else block_elems
    rows = max(1, min(n, max(elems // max(n, 1), 16)))
    group = max(1, min(maps, elems // (rows * max(n, 1)))) if rows == n else 1
    return rows, group


def _blocks(g: int, n: int, rows: int, group: int, buffers: list[torch.Tensor]):
    """Blocks of ``group`` head-maps × ``rows`` query columns covering ``g`` × ``n``: yields
    ``(maps, [(columns, block views)…])``. ``maps`` is an int when ``group == 1`` (2-D GEMMs: ``bmm``
    over a batch of one costs a per-call ``select``) and a slice otherwise; each block view is the
    start of a flat buffer shaped ``([g',] n, n')``."""
    for g0 in range(0, g, group):
        gg = min(group, g - g0)
        maps = g0 if group == 1 else slice(g0, g0 + gg)
        lead = () if group == 1 else (gg,)
        cols, views = [], {}
        for s in range(0, n, rows):
            w = min(rows, n - s)
            if w not in views:
                views[w] = [b[: gg * n * w].view(*lead, n, w) for b in buffers]
            cols.append((slice(s, s + w), views[w]))
        yield maps, cols


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b, out=out) if a.dim() == 2 else torch.bmm(a, b, out=out)


def _mm_acc(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    c.addmm_(a, b) if c.dim() == 2 else c.baddbmm_(a, b)


class _BlockedSoftmaxAttention(torch.autograd.Function):
    """``softmax(scale·QKᵀ)V`` on channel-major head-maps ``qt, kt, vt`` = Qᵀ, Kᵀ, Vᵀ (G,d,N); returns
    the output transposed too (G,d,N). One block of n query columns at a time, never N×N.

    Forward per block: ``S₂ᵀ = K·q₂`` (N×n, keys × queries) with ``q₂ = qᵀ·scale·log₂e`` (logits in
    base 2), ``P̃ᵀ = exp2(S₂ᵀ − max)`` in place, then one GEMM ``[Vᵀ; 1]·P̃ᵀ`` gives the numerators and
    the row sums together. Only ``qt, kt, vt, out, lse₂`` (O(N·d)) are saved; backward recomputes
    ``Pᵀ = exp2([K, 1]·[q₂; −lse₂])`` (the subtraction inside the GEMM) and, with ``D = Σ_c dO ⊙ O``,
    ``dSᵀ = Pᵀ ⊙ ([V, 1]·[dOᵀ; −D])``, ``dVᵀ += dOᵀP``, ``dKᵀ += (scale·Q)ᵀdS``, ``dQᵀ = scale·KᵀdSᵀ``:
    five GEMMs, one exp2 and one multiply per block.

    Choices, measured on one CPU thread at N = 4096, d = 8 (per head-map, fp32): PyTorch's CPU
    flash kernel took ~40 ms forward and ~160 ms backward. Here ``exp2`` instead of ``exp`` (~12 ms
    against ~24 ms per N×N pass); blocks keys × queries rather than queries × keys (the GEMMs with
    a dimension of d = 8 or 9 ran 20–40 % faster in that orientation, and the inputs, outputs and
    gradients are then in the channel-major layout of the conv maps, without copies); the d+1 rows
    of ``[Vᵀ; 1]`` not zero-padded to 16 (unlike the PCM's output columns: here the forward was ~8 %
    faster without); blocks of :data:`DSA_BLOCK_ELEMS` scores.
    """

    @staticmethod
    def forward(ctx, qt, kt, vt, scale: float, rows: int, group: int):
        g, d, n = qt.shape
        q2t = qt * (scale * _LOG2E)  # (G, d, N)   queries, logits in base 2
        k = kt.transpose(1, 2)  # (G, N, d)
        v1t = torch.cat([vt, vt.new_ones(g, 1, n)], dim=1)  # (G, d+1, N)   row d → column sums of P̃ᵀ
        acc = vt.new_empty(v1t.shape)  # (G, d+1, N)   [Σ_j P̃_ij v_j; Σ_j P̃_ij] per query i
        mx = qt.new_empty(g, 1, n)  # (G, 1, N)   max_j S₂_ij
        buf = qt.new_empty(min(g, group) * min(n, rows) * n)
        for i, cols in _blocks(g, n, rows, group, [buf]):
            q2g, kg, v1g, accg, mxg = q2t[i], k[i], v1t[i], acc[i], mx[i]  # one head-map, or g' of them
            for r, (a,) in cols:
                _mm(kg, q2g[..., r], out=a)  # ([g',] N, n')   S₂ᵀ
                m = torch.amax(a, -2, keepdim=True, out=mxg[..., r])  # ([g',] 1, n')
                a.sub_(m).exp2_()  # P̃ᵀ = 2^(S₂ᵀ − max) ≤ 1
                _mm(v1g, a, out=accg[..., r])  # ([g',] d+1, n')
        den = acc[:, d : d + 1]  # (G, 1, N)   ≥ 1
        out = acc[:, :d] / den  # (G, d, N)   Oᵀ
        ctx.save_for_backward(qt, kt, vt, out, mx + torch.log2(den))  # lse₂ (G, 1, N)
        ctx.scale, ctx.rows, ctx.group = scale, rows, group
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        qt, kt, vt, out, lse2 = ctx.saved_tensors
        scale, rows, group = ctx.scale, ctx.rows, ctx.group
        g, d, n = qt.shape
        gout = gout.to(out.dtype).contiguous()  # (G, d, N)   dOᵀ
        dsum = (gout * out).sum(1, keepdim=True)  # (G, 1, N)   D_i = Σ_j P_ij dP_ij
        ones = qt.new_ones(g, 1, n)
        ql = torch.cat([qt * (scale * _LOG2E), -lse2], dim=1)  # (G, d+1, N)   [q₂; −lse₂]
        k1 = torch.cat([kt, ones], dim=1).transpose(1, 2)  # (G, N, d+1)   [K, 1]
        gl = torch.cat([gout, -dsum], dim=1)  # (G, d+1, N)   [dOᵀ; −D]
        v1 = torch.cat([vt, ones], dim=1).transpose(1, 2)  # (G, N, d+1)   [V, 1]
        qst = qt * scale  # (G, d, N)
        dqt, dkt, dvt = qt.new_empty(g, d, n), qt.new_zeros(g, d, n), qt.new_zeros(g, d, n)
        size = min(g, group) * min(n, rows) * n
        for i, cols in _blocks(g, n, rows, group, [qt.new_empty(size), qt.new_empty(size)]):
            qlg, k1g, glg, v1g, ktg = ql[i], k1[i], gl[i], v1[i], kt[i]  # one head-map, or g' of them
            goutg, qstg, dqtg, dktg, dvtg = gout[i], qst[i], dqt[i], dkt[i], dvt[i]
            for r, (pt, dst) in cols:
                _mm(k1g, qlg[..., r], out=pt).exp2_()  # ([g',] N, n')   Pᵀ
                _mm_acc(dvtg, goutg[..., r], pt.transpose(-1, -2))  # dVᵀ += dO_rᵀ P_r
                _mm(v1g, glg[..., r], out=dst).mul_(pt)  # dSᵀ = Pᵀ ⊙ (dPᵀ − D)
                _mm(ktg, dst, out=dqtg[..., r])  # ([g',] d, n')   dQ_rᵀ / scale
                _mm_acc(dktg, qstg[..., r], dst.transpose(-1, -2))  # dKᵀ += (scale·Q_r)ᵀ dS_r
        return dqt * scale, dkt, dvt, None, None, None


def softmax_attention_blocked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, block_rows: int | None = None
) -> torch.Tensor:
    """``softmax(scale·q kᵀ) v`` (the function of :func:`torch.nn.functional.scaled_dot_product_attention`
    without mask or dropout) as one autograd op that never holds N×N; see :class:`_BlockedSoftmaxAttention`.

    ``q, k, v`` (…, N, d) with the same leading dims (cheapest as transposed views of channel-major
    (…, d, N) tensors, which is what the result is too); ``scale=None`` is SDPA's ``1/√d``;
    ``block_rows=None`` sizes blocks by :func:`dsa_block_shape` (a number: that many query rows, one
    head-map per block). Computes in float32 at least (float64 stays float64; half precision, e.g.
    under autocast, is computed in float32 like SDPA's CPU kernels accumulate) with autocast off,
    and returns the dtype of ``q``.
    """
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be >= 1 or None, got {block_rows}")
    *lead, n, d = q.shape
    g = math.prod(lead)
    rows, group = dsa_block_shape(n, g) if block_rows is None else (min(block_rows, n), 1)
    sc = d**-0.5 if scale is None else float(scale)
    dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.promote_types(v.dtype, torch.float32))
    qkv_t = [t.transpose(-1, -2).reshape(g, d, n).to(dt).contiguous() for t in (q, k, v)]  # (G, d, N) each
    with torch.autocast(q.device.type, enabled=False):
        yt = _BlockedSoftmaxAttention.apply(*qkv_t, sc, rows, group)  # (G, d, N)
    return yt.reshape(*lead, d, n).transpose(-1, -2).to(q.dtype)  # (…, N, d)


def default_heads(channels: int, min_head_dim: int = 8, max_heads: int = 8) -> int:
    """Most heads (≤ ``max_heads``) that divide ``channels`` with head dim ≥ ``min_head_dim`` (≥ 1 head)."""
    for h in range(min(max_heads, channels // min_head_dim), 1, -1):
        if channels % h == 0:
            return h
    return 1


class DilatedSelfAttention(nn.Module):
    """DSA(x, r): q, k, v = three 3×3 convs with dilation r (bias, no norm); multi-head dot-product
    attention over the pixels, softmax over keys; reshaped back to (B,C,H,W).

    ``scaled``: logits ``q·k/√d`` (d = head dim; the transformer default, and what DSA computed
    before the option existed) when True; ``q·k`` as written in PR-Net's Eq. 1 when False.

    ``dsa_impl`` picks the implementation (:func:`resolve_dsa_impl`, resolved at each call from the
    input's device and torch's thread count), the same function and parameters either way:

    - ``"reference"``: three convs, per-head q/k/v made contiguous, then
      :func:`torch.nn.functional.scaled_dot_product_attention` (the original path, unchanged; with
      contiguous inputs the CPU dispatcher takes its fused flash kernel, with strided ones the
      unfused math kernel, ~2× slower in training).
    - ``"blocked"``: the three convs as one conv with their weights concatenated at call time
      (3C outputs: one pass over x; the parameters and state_dict keys stay the three convs'), the
      maps kept channel-major, and :func:`softmax_attention_blocked` (``block_rows``). Equal to the
      reference to 1e-12 in float64 (output and gradients of input and parameters, with and
      without pooling, scaled and unscaled; tested). The default on one CPU thread.

    Under a tracer (TorchScript, ONNX export) or torch.compile the reference runs.

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
        scaled: bool = True,
        dsa_impl: str = "auto",
        block_rows: int | None = None,
    ):
        super().__init__()
        self.heads = default_heads(channels) if heads is None else heads
        if channels % self.heads:
            raise ValueError(f"channels {channels} not divisible by heads {self.heads}")
        self.qkv = nn.ModuleList(
            [nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation) for _ in range(3)]
        )
        self.max_tokens = max_tokens
        self.scaled = bool(scaled)
        self.dsa_impl = check_dsa_impl(dsa_impl)
        self.block_rows = block_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        grid = token_grid(h, w, self.max_tokens)
        n = grid[0] * grid[1]
        scale = None if self.scaled else 1.0  # None: 1/√d
        impl = resolve_dsa_impl(self.dsa_impl, x.device)
        if impl != "reference" and (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            # a tracer (TorchScript, ONNX export) records plain tensor ops, not a Python
            # autograd.Function; torch.compile / torch.export would unroll its Python loops
            impl = "reference"
        if impl == "reference":
            q, k, v = (_pool(conv(x), grid) for conv in self.qkv)  # 3 × (B, C, h', w')

            def heads(t: torch.Tensor) -> torch.Tensor:  # (B, C, h', w') → (B, heads, N', C/heads), contiguous
                return t.reshape(b, self.heads, c // self.heads, n).transpose(2, 3).contiguous()

            y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)  # (B, heads, N', C/heads)
        else:
            # the three convs as one conv of 3C outputs (their parameters concatenated, so the
            # state_dict is unchanged): one pass over x instead of three
            conv = self.qkv[0]
            weight = torch.cat([m.weight for m in self.qkv])  # (3C, C, 3, 3)
            bias = torch.cat([m.bias for m in self.qkv])  # (3C,)
            qkv = F.conv2d(x, weight, bias, padding=conv.padding, dilation=conv.dilation)  # (B, 3C, H, W)
            qkv = _pool(qkv, grid).reshape(b, 3, self.heads, c // self.heads, n)  # (B, 3, heads, C/heads, N')
            q, k, v = (t.transpose(2, 3) for t in qkv.unbind(1))  # 3 × (B, heads, N', C/heads), channel-major
            y = softmax_attention_blocked(q, k, v, scale=scale, block_rows=self.block_rows)  # (B, heads, N', C/heads)
        y = y.transpose(2, 3).reshape(b, c, *grid)  # (B, C, h', w')
        return _unpool(y, (h, w))  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, max_tokens={self.max_tokens}, scaled={self.scaled}, dsa_impl={self.dsa_impl!r}"


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
    ``g2 = GC(g1, d3)``, output ``CBR1×1(concat(c, g1, g2))`` with C channels. ``dsa_scaled`` and
    ``dsa_impl`` are :class:`DilatedSelfAttention`'s ``scaled`` and ``dsa_impl`` for both DSAs."""

    def __init__(
        self,
        channels: int,
        *,
        heads: int | None = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        dsa_scaled: bool = True,
        dsa_impl: str = "auto",
    ):
        super().__init__()
        self.conv = cbr(channels, channels, 3)
        dsa = dict(heads=heads, max_tokens=max_tokens, scaled=dsa_scaled, dsa_impl=dsa_impl)
        self.dsa2 = DilatedSelfAttention(channels, 2, **dsa)
        self.dsa3 = DilatedSelfAttention(channels, 3, **dsa)
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
