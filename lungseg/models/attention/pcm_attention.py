"""PCM and LG-Attention: the pixel-correlation attention LG-Net puts on its skips (Lu, Yuan & Xu,
"Research on lung CT image segmentation algorithm based on the improved U-Net network", Intelligent
Computer and Applications 13(7), 2023, §1.3 and §2.3, Eq. 4–10; ``seeds/000_a63c139867e588ca.txt``),
read as fixed by ``../shared/design/architecture.md`` §LG-Net. The model is
:class:`lungseg.models.lgnet.LGNet`; the ``max_tokens`` budget is :mod:`lungseg.models.attention.tokens`.

PCM kernels (``pcm_impl``, one function computed three ways; ``tests/models/test_attention.py``):

- ``"reference"`` (:func:`pixel_correlation`): the original autograd ops, rows in checkpointed
  chunks. Kept unchanged as the ground truth.
- ``"blocked"`` (:func:`pixel_correlation_blocked`): one custom autograd op that never holds N×N;
  row blocks of ~``PCM_BLOCK_ELEMS`` affinities, recomputed in backward, whose gradients use the
  symmetry of the affinity matrix. Equal to the reference in output and gradients to 1e-12 in
  float64 and 1e-5 (absolute) in float32, with and without pooling, for B > 1, odd N and rows whose
  only positive score is the diagonal or that have none (θ_i = 0). The CPU default on one thread.
- ``"parallel"``: the blocked kernel with its (image, row block) pairs split over torch's threads,
  one intra-op thread each (#24; :mod:`~lungseg.models.attention.workers`); bitwise the blocked
  kernel's result on one thread. The CPU default with several threads.
- ``"flex"`` (:func:`pixel_correlation_flex`): FlexAttention with the score ``log(ReLU(s) + t)`` and
  an exact lse correction; compiled on CUDA (the GPU default). On CPU FlexAttention is forward-only:
  its forward is tested against the reference there (1e-5), and the correction's gradients with a
  dense autograd stand-in for the kernel; **the CUDA kernel itself is not run by the tests here.**

Layout: the kernels, then the pieces of Eq. 5–10 (quadrants, PWA), then :class:`LGAttention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from .tokens import DEFAULT_MAX_TOKENS, pool, positive_or_none, token_grid, unpool
from .workers import run_chunks, split

PCM_IMPLS = ("auto", "reference", "blocked", "parallel", "flex")
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


def resolve_pcm_impl(impl: str, device: torch.device, threads: int | None = None) -> str:
    """The PCM implementation that runs for ``impl`` on ``device``.

    ``"auto"``: ``"flex"`` on CUDA when FlexAttention is available, ``"reference"`` on the ``meta``
    device (nothing is computed there; the FLOP counter then sees the textbook matmuls, not the
    blocked kernel's extra ones column and padding); on the CPU ``"blocked"`` when torch computes on
    one thread (``threads``, default ``torch.get_num_threads()``) and ``"parallel"`` (the blocked
    kernel's blocks split over the threads, one intra-op thread each) on several: the blocked
    kernel's small GEMMs barely used a second core (LG-Net trained at 2 threads no faster than at
    one, bench/results/README.md); elsewhere ``"blocked"`` (FlexAttention has no backward on CPU).
    Other values are returned as they are (``ValueError`` when unknown).
    """
    check_pcm_impl(impl)
    if impl != "auto":
        return impl
    if device.type == "meta":
        return "reference"
    if device.type == "cuda" and flex_available():
        return "flex"
    if torch.compiler.is_compiling():
        return "reference"  # see pcm(); asked before the thread count, which dynamo cannot trace (a graph break)
    if device.type == "cpu" and (torch.get_num_threads() if threads is None else threads) > 1:
        return "parallel"
    return "blocked"


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


def _blocks(b: int, n: int, rows: int) -> list[tuple[int, slice]]:
    """The (image, row block) pairs of a blocked PCM over ``b`` images of ``n`` tokens, in order."""
    return [(i, slice(s, s + rows)) for i in range(b) for s in range(0, n, rows)]


def _forward_blocks(k: torch.Tensor, v1: torch.Tensor, acc: torch.Tensor, blocks: list[tuple[int, slice]]) -> None:
    """``acc[i, r] = ReLU(k_r kᵀ) · v1`` for each (image i, rows r) of ``blocks`` (written in place)."""
    for i, r in blocks:
        a = torch.mm(k[i, r], k[i].t())  # (n, N)   S = cos
        a.relu_()  # A = ReLU(S)
        torch.mm(a, v1[i], out=acc[i, r])  # (n, ≥C+1)


def _backward_blocks(k, left, right, g_num, gkt, gv, blocks: list[tuple[int, slice]]) -> None:
    """``∂L/∂v`` and ``∂L/∂k`` (transposed) of each (image i, rows r) of ``blocks`` (written in place)."""
    for i, r in blocks:
        kti = k[i].t()
        a = torch.mm(k[i, r], kti)  # (n, N)   S recomputed
        g = torch.mm(left[i, r], right[i])  # (n, N)   (∂L/∂A)_r + (∂L/∂A)ᵀ_r
        g = torch.ops.aten.threshold_backward(g, a, 0)  # (n, N)   ⊙ [S > 0] (ReLU's backward)
        a.relu_()  # A_r
        torch.mm(a, g_num[i], out=gv[i, r])  # (n, C)   A symmetric: (Aᵀ)_r = A_r
        gkt[i, :, r] = torch.mm(kti, g.t())  # (c, n)


def _run_blocks(fn, blocks: list[tuple[int, slice]], workers: int, *args) -> None:
    """``fn(*args, blocks)``, the blocks split over ``workers`` threads (each writes its own rows)."""
    if workers <= 1:
        fn(*args, blocks)
        return
    run_chunks([(fn, *args, blocks[a:b]) for a, b in split(len(blocks), workers)])


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

    ``workers`` > 1 (``pcm_impl="parallel"``): the (image, block) pairs are split into ``workers``
    contiguous chunks, each run on its own thread with one intra-op thread
    (:func:`~lungseg.models.attention.workers.run_chunks`). Every block is the same arithmetic as on
    one thread and writes only its own rows, so the result is bitwise that of ``workers=1`` computed
    on one torch thread.
    """

    @staticmethod
    def forward(ctx, k: torch.Tensor, v: torch.Tensor, eps: float, rows: int, workers: int = 1) -> torch.Tensor:
        b, n, _ = k.shape
        cv = v.shape[-1]
        v1 = _pad_cols(torch.cat([v, v.new_ones(b, n, 1)], dim=-1)).contiguous()  # (B, N, ≥C+1)   col C → row sums
        acc = v.new_empty(v1.shape)  # (B, N, ≥C+1)   [Σ_j A_ij v_j, Σ_j A_ij, 0…]
        _run_blocks(_forward_blocks, _blocks(b, n, rows), workers, k, v1, acc)
        den = acc[..., cv : cv + 1] + eps  # (B, N, 1)
        y = acc[..., :cv] / den  # (B, N, C)
        ctx.save_for_backward(k, v, y, den)
        ctx.rows, ctx.workers = rows, workers
        return y

    @staticmethod
    @once_differentiable  # its GEMMs write into preallocated outputs: no graph for a second derivative
    def backward(ctx, gy: torch.Tensor):
        k, v, y, den = ctx.saved_tensors
        b, n, c = k.shape
        gy = gy.to(y.dtype)
        g_num = gy / den  # (B, N, C)
        g_den = -(gy * y).sum(-1, keepdim=True) / den  # (B, N, 1)
        ones = torch.ones_like(g_den)
        left = torch.cat([g_num, v, g_den, ones], dim=-1)  # (B, N, 2C+2)
        right = torch.cat([v, g_num, ones, g_den], dim=-1).transpose(1, 2).contiguous()  # (B, 2C+2, N)
        gkt, gv = k.new_empty(b, c, n), torch.empty_like(v)  # ∂L/∂k transposed (B, c, N); ∂L/∂v (B, N, C)
        _run_blocks(_backward_blocks, _blocks(b, n, ctx.rows), ctx.workers, k, left, right, g_num, gkt, gv)
        return gkt.transpose(1, 2), gv, None, None, None


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
    theta: torch.Tensor,
    value: torch.Tensor,
    *,
    eps: float = 1e-6,
    block_rows: int | None = None,
    workers: int = 1,
) -> torch.Tensor:
    """PCM (same function as :func:`pixel_correlation`) as one autograd op that never holds N×N.

    Rows are processed ``block_rows`` at a time per image (``None``: :func:`block_rows_for`, from N
    and the channels); forward saves only O(N·C) and backward
    recomputes each block. Runs on any device; computes in the promoted dtype of θ and v with
    autocast off (mixed precision would change the affinities' rounding, not the memory).
    ``workers`` > 1: the (image, block) pairs split over that many threads (``pcm_impl="parallel"``;
    bitwise the one-thread result, see :class:`_BlockedPCM`).
    """
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be >= 1 or None, got {block_rows}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    b, c, h, w = theta.shape
    n = h * w
    k, v = _tokens(theta, value)  # (B, N, c), (B, N, C)
    dt = torch.promote_types(k.dtype, v.dtype)
    rows = block_rows_for(n, c + value.shape[1]) if block_rows is None else min(block_rows, n)
    with torch.autocast(k.device.type, enabled=False):
        y = _BlockedPCM.apply(k.to(dt).contiguous(), v.to(dt).contiguous(), float(eps), rows, workers)  # (B, N, C)
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
    ``"parallel"`` = the same over ``torch.get_num_threads()`` threads, ``"flex"`` =
    :func:`pixel_correlation_flex`, ``"auto"`` = flex on CUDA, blocked / parallel on the CPU by threads.
    """
    size = tuple(theta.shape[-2:])
    grid = token_grid(*size, max_tokens)
    t, v = pool(theta, grid), pool(value, grid)
    impl = resolve_pcm_impl(impl, theta.device)
    if impl != "reference" and torch.jit.is_tracing():
        # a tracer (TorchScript, ONNX export) records plain tensor ops, not a Python autograd.Function
        # or a compiled kernel: export the reference ops, the same function
        impl = "reference"
    if impl in ("blocked", "parallel") and torch.compiler.is_compiling():
        # torch.compile (train.compile, predict --compile): the blocked kernels' Python loops and worker
        # threads break the graph dozens of times (PR-Net's and LG-Net's inductor compiles took 6–13 min
        # at 32²); the reference ops are the same function and one graph that inductor can fuse
        impl = "reference"
    if impl == "reference":
        y = pixel_correlation(t, v, eps=eps, chunk_rows=chunk_rows)
    elif impl in ("blocked", "parallel"):
        workers = torch.get_num_threads() if impl == "parallel" else 1
        y = pixel_correlation_blocked(t, v, eps=eps, block_rows=block_rows, workers=workers)
    else:
        y = pixel_correlation_flex(t, v, eps=eps)
    return unpool(y, size)


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
        self.max_tokens = positive_or_none("max_tokens", max_tokens)
        self.chunk_rows = positive_or_none("chunk_rows", chunk_rows)
        self.eps = eps
        self.pcm_impl = check_pcm_impl(pcm_impl)
        self.block_rows = positive_or_none("block_rows", block_rows)

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
