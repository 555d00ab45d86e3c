"""DSA, gated conv and PAM: the progressive attention module PR-Net puts on its skips (the residual +
progressive-attention lung CT segmentation network of ``seeds/001_1629151eb43ef42a.txt``, §2.3, Eq. 1–2),
read as fixed by ``../shared/design/architecture.md`` §PR-Net. The model is
:class:`lungseg.models.prnet.PRNet`; the ``max_tokens`` budget is :mod:`lungseg.models.attention.tokens`.

DSA attention kernels (``dsa_impl``; the same softmax attention computed two ways):

- ``"reference"``: three q/k/v convs and :func:`torch.nn.functional.scaled_dot_product_attention`,
  the original path, kept unchanged as the ground truth.
- ``"blocked"`` (:func:`softmax_attention_blocked`): one q/k/v conv of the three convs' concatenated
  weights and one custom autograd op over blocks of keys × queries that never holds N×N, backward
  from the saved log-sum-exp. Equal to the reference to 1e-12 in float64 and as close in float32 as
  SDPA is to float64 itself (tested). The default on one CPU thread, where PyTorch's flash backward
  at head dim 8 dominated a PR-Net train step (:func:`resolve_dsa_impl`).

Normalisation (``softmax``, PR-Net's ``dsa_softmax``): ``"key"`` (default) = the standard attention
``y_i = Σ_j softmax_j(s_ij) v_j`` (each query's weights sum to 1); ``"query"`` = PR-Net's Eq. 1 as
written, ``B_ij = exp(M_i·N_j) / Σ_k exp(M_k·N_j)`` (DANet style: each *key*'s weights over the
queries sum to 1) and ``y = B·T``, i.e. ``y_i = Σ_j softmax_i(s_ij) v_j``. Both kernels compute both:
the reference with an explicit N×N softmax over the query axis (:func:`query_softmax_attention`),
the blocked one with :class:`_BlockedQuerySoftmaxAttention` (never N×N).

Layout: the kernels, then :class:`DilatedSelfAttention`, :class:`GatedConv` and
:class:`ProgressiveAttention` (which composes them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..blocks import cbr
from .tokens import DEFAULT_MAX_TOKENS, pool, positive_or_none, token_grid, unpool

DSA_IMPLS = ("auto", "reference", "blocked", "parallel")  # parallel: dsa_parallel.py (#24)
"""Valid ``dsa_impl`` values; see :func:`resolve_dsa_impl`."""

#: Scores per block of the blocked DSA attention (2^18 fp32 = 1 MiB; backward holds two): 4096 keys ×
#: 64 queries, the best of 16–128 queries measured on one CPU thread at N = 4096, d = 8.
#: :func:`dsa_block_shape` turns it into query rows and head-maps per block.
DSA_BLOCK_ELEMS = 1 << 18

_LOG2E = math.log2(math.e)


DSA_SOFTMAX = ("key", "query")
"""Valid ``softmax`` (PR-Net ``dsa_softmax``) values: the axis the attention weights are normalised over."""


def check_dsa_softmax(axis: str) -> str:
    """``axis`` itself, or ``ValueError`` naming the valid values."""
    if axis not in DSA_SOFTMAX:
        raise ValueError(f"unknown dsa_softmax {axis!r} (valid: {', '.join(DSA_SOFTMAX)})")
    return axis


def check_dsa_impl(impl: str) -> str:
    """``impl`` itself, or ``ValueError`` naming the valid values."""
    if impl not in DSA_IMPLS:
        raise ValueError(f"unknown dsa_impl {impl!r} (valid: {', '.join(DSA_IMPLS)})")
    return impl


def resolve_dsa_impl(impl: str, device: torch.device, threads: int | None = None) -> str:
    """The DSA attention kernel that runs for ``impl`` on ``device``.

    ``"auto"``: ``"blocked"`` on CPU when torch computes on one thread (``threads``, default
    ``torch.get_num_threads()``; e.g. each rank of a torchrun launch, which sets ``OMP_NUM_THREADS=1``),
    ``"parallel"`` on CPU with several threads, ``"reference"`` (SDPA) on other devices. Measured
    (PR-Net's shapes at 128², base 16, N = 4096, d = 8): on one thread the blocked kernel trains ~2×
    faster than SDPA, whose CPU flash backward is the slow part; on two threads the blocked kernel
    itself parallelises poorly (many small GEMMs), SDPA's flash kernel was ~2.3× faster than on one
    thread, and the ``parallel`` kernel (the blocked one over chunks of head-maps, one thread each)
    1.36–1.56× faster than SDPA (bench/results/ATTENTION.md, a busy machine). CUDA: SDPA's fused
    kernels; ``meta``: the FLOP counter sees SDPA's textbook matmuls. Other values are returned as they
    are (``ValueError`` when unknown).
    """
    check_dsa_impl(impl)
    if impl != "auto":
        return impl
    if device.type != "cpu" or torch.compiler.is_compiling():
        # compiling: the forward runs the reference anyway; the thread count (below) is a graph break
        return "reference"
    # several threads: the blocked kernel over chunks of head-maps, one thread each (#24, dsa_parallel.py;
    # measured ahead of SDPA at 2 threads, bench/results/ATTENTION.md)
    return "blocked" if (torch.get_num_threads() if threads is None else threads) == 1 else "parallel"


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


def _transposed(a: torch.Tensor) -> torch.Tensor:
    """The flat block buffer view ``([g',] n, w)`` re-viewed as ``([g',] w, n)`` (same elements)."""
    return a.view(*a.shape[:-2], a.shape[-1], a.shape[-2])


class _BlockedQuerySoftmaxAttention(torch.autograd.Function):
    """PR-Net's Eq. 1, ``y_i = Σ_j P_ij v_j`` with ``P_ij = exp(s_ij − lse_j)``, ``lse_j = log Σ_i
    exp(s_ij)`` (softmax over the **query** index i, ``s = scale·QKᵀ``), on channel-major head-maps
    ``qt, kt, vt`` (G,d,N) like :class:`_BlockedSoftmaxAttention`; never holds N×N.

    Forward: pass 1 over blocks of keys (rows × all queries) gives ``lse₂`` per key (base 2); pass 2
    over blocks of queries computes ``Pᵀ = exp2([K, −lse₂]·[q₂; 1])`` (the subtraction inside the
    GEMM) and ``Oᵀ = VᵀPᵀ`` (no row normalisation). Saved: ``qt, kt, vt, lse₂`` (O(N·d)).
    Backward (softmax over i for each key j): ``dV_j = Σ_i P_ij dO_i``, ``E_j = Σ_i P_ij dP_ij =
    v_j·dV_j``, ``dS_ij = P_ij (dO_i·v_j − E_j)`` — a pass for ``dVᵀ`` (then ``E``), a pass for
    ``dSᵀ = Pᵀ ⊙ ([V, −E]·[dOᵀ; 1])``, ``dQᵀ = scale·KᵀdSᵀ``, ``dKᵀ += (scale·Q)ᵀdS``.
    """

    @staticmethod
    def forward(ctx, qt, kt, vt, scale: float, rows: int, group: int):
        g, d, n = qt.shape
        q2t = qt * (scale * _LOG2E)  # (G, d, N)   queries, logits in base 2
        ktt = kt.transpose(1, 2)  # (G, N, d)
        lse2 = qt.new_empty(g, n, 1)  # (G, N, 1)   log₂ Σ_i 2^(S₂_ij) per key j
        buf = qt.new_empty(min(g, group) * min(n, rows) * n)
        for i, cols in _blocks(g, n, rows, group, [buf]):
            ktg, q2g, lg = ktt[i], q2t[i], lse2[i]
            for r, (a,) in cols:  # r: a block of keys
                a = _transposed(a)  # ([g',] n', N)   keys × queries
                _mm(ktg[..., r, :], q2g, out=a)
                m = torch.amax(a, -1, keepdim=True)  # ([g',] n', 1)
                lg[..., r, :] = m + torch.log2(a.sub_(m).exp2_().sum(-1, keepdim=True))
        kl = torch.cat([ktt, -lse2], dim=2)  # (G, N, d+1)   [K, −lse₂]
        q1 = torch.cat([q2t, qt.new_ones(g, 1, n)], dim=1)  # (G, d+1, N)   [q₂; 1]
        out = qt.new_empty(g, d, n)  # (G, d, N)   Oᵀ
        for i, cols in _blocks(g, n, rows, group, [buf]):
            klg, q1g, vg, og = kl[i], q1[i], vt[i], out[i]
            for r, (a,) in cols:  # r: a block of queries
                _mm(klg, q1g[..., r], out=a).exp2_()  # ([g',] N, n')   Pᵀ
                _mm(vg, a, out=og[..., r])  # ([g',] d, n')
        ctx.save_for_backward(qt, kt, vt, lse2)
        ctx.scale, ctx.rows, ctx.group = scale, rows, group
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        qt, kt, vt, lse2 = ctx.saved_tensors
        scale, rows, group = ctx.scale, ctx.rows, ctx.group
        g, d, n = qt.shape
        gout = gout.to(qt.dtype).contiguous()  # (G, d, N)   dOᵀ
        ones = qt.new_ones(g, 1, n)
        kl = torch.cat([kt.transpose(1, 2), -lse2], dim=2)  # (G, N, d+1)
        q1 = torch.cat([qt * (scale * _LOG2E), ones], dim=1)  # (G, d+1, N)
        dvt = qt.new_zeros(g, d, n)
        size = min(g, group) * min(n, rows) * n
        bufs = [qt.new_empty(size), qt.new_empty(size)]
        for i, cols in _blocks(g, n, rows, group, bufs):
            klg, q1g, goutg, dvtg = kl[i], q1[i], gout[i], dvt[i]
            for r, (pt, _) in cols:
                _mm(klg, q1g[..., r], out=pt).exp2_()  # ([g',] N, n')   Pᵀ
                _mm_acc(dvtg, goutg[..., r], pt.transpose(-1, -2))  # dVᵀ += dO_rᵀ P_r
        ve = torch.cat([vt, -(dvt * vt).sum(1, keepdim=True)], dim=1).transpose(1, 2)  # (G, N, d+1)   [V, −E]
        g1 = torch.cat([gout, ones], dim=1)  # (G, d+1, N)   [dOᵀ; 1]
        qst = qt * scale  # (G, d, N)
        dqt, dkt = qt.new_empty(g, d, n), qt.new_zeros(g, d, n)
        for i, cols in _blocks(g, n, rows, group, bufs):
            klg, q1g, veg, g1g, ktg = kl[i], q1[i], ve[i], g1[i], kt[i]
            qstg, dqtg, dktg = qst[i], dqt[i], dkt[i]
            for r, (pt, dst) in cols:
                _mm(klg, q1g[..., r], out=pt).exp2_()  # Pᵀ
                _mm(veg, g1g[..., r], out=dst).mul_(pt)  # dSᵀ = Pᵀ ⊙ (dPᵀ − E)
                _mm(ktg, dst, out=dqtg[..., r])  # ([g',] d, n')   dQ_rᵀ / scale
                _mm_acc(dktg, qstg[..., r], dst.transpose(-1, -2))  # dKᵀ += (scale·Q_r)ᵀ dS_r
        return dqt * scale, dkt, dvt, None, None, None


def query_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """PR-Net's Eq. 1 written out: ``softmax(scale·q kᵀ, dim=−2) v`` — the weights of each key
    normalised over the queries — with an explicit N×N score matrix (the reference kernel's form).
    ``q, k, v`` (…, N, d); ``scale=None`` is ``1/√d``."""
    sc = q.shape[-1] ** -0.5 if scale is None else float(scale)
    scores = torch.matmul(q, k.transpose(-1, -2)) * sc  # (…, N queries, N keys)
    return torch.matmul(scores.softmax(dim=-2), v)  # (…, N, d)


def softmax_attention_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    block_rows: int | None = None,
    softmax: str = "key",
) -> torch.Tensor:
    """``softmax(scale·q kᵀ) v`` (the function of :func:`torch.nn.functional.scaled_dot_product_attention`
    without mask or dropout) as one autograd op that never holds N×N; see :class:`_BlockedSoftmaxAttention`.

    ``q, k, v`` (…, N, d) with the same leading dims (cheapest as transposed views of channel-major
    (…, d, N) tensors, which is what the result is too); ``scale=None`` is SDPA's ``1/√d``;
    ``block_rows=None`` sizes blocks by :func:`dsa_block_shape` (a number: that many query rows, one
    head-map per block). ``softmax="query"``: Eq. 1's normalisation over the queries instead
    (:class:`_BlockedQuerySoftmaxAttention`; :func:`query_softmax_attention` written out).
    Computes in float32 at least (float64 stays float64; half precision, e.g.
    under autocast, is computed in float32 like SDPA's CPU kernels accumulate) with autocast off,
    and returns the dtype of ``q``.
    """
    qkv_t, sc, op = blocked_inputs(q, k, v, scale, block_rows, softmax)
    n, g = q.shape[-2], qkv_t[0].shape[0]
    rows, group = dsa_block_shape(n, g) if block_rows is None else (min(block_rows, n), 1)
    with torch.autocast(q.device.type, enabled=False):
        yt = op.apply(*qkv_t, sc, rows, group)  # (G, d, N)
    return blocked_output(yt, q)


def blocked_inputs(q, k, v, scale: float | None, block_rows: int | None, softmax: str):
    """What the blocked kernels (this one and ``dsa_parallel``'s) compute on: ``q, k, v`` (…, N, d) as
    channel-major (G, d, N) copies in float32 at least, the scale (``None``: ``1/√d``) and the autograd
    op of ``softmax`` (key or Eq. 1's query normalisation); ``block_rows`` checked."""
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be >= 1 or None, got {block_rows}")
    *lead, n, d = q.shape
    g = math.prod(lead)
    sc = d**-0.5 if scale is None else float(scale)
    dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.promote_types(v.dtype, torch.float32))
    qkv_t = [t.transpose(-1, -2).reshape(g, d, n).to(dt).contiguous() for t in (q, k, v)]  # (G, d, N) each
    op = _BlockedSoftmaxAttention if check_dsa_softmax(softmax) == "key" else _BlockedQuerySoftmaxAttention
    return qkv_t, sc, op


def blocked_output(yt: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A blocked kernel's (G, d, N) result back to ``q``'s layout (…, N, d) and dtype."""
    *lead, n, d = q.shape
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

    ``softmax``: ``"key"`` (default; the standard softmax over keys, architecture.md §PR-Net 4 — a
    deviation from Eq. 1) or ``"query"`` (Eq. 1 as written: each key's weights normalised over the
    queries, DANet style; the reference computes it with an explicit N×N softmax,
    :func:`query_softmax_attention`, the blocked kernel without N×N). No output projection (the
    paper has none).
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
        softmax: str = "key",
    ):
        super().__init__()
        self.softmax = check_dsa_softmax(softmax)
        self.heads = default_heads(channels) if heads is None else heads
        if channels % self.heads:
            raise ValueError(f"channels {channels} not divisible by heads {self.heads}")
        self.qkv = nn.ModuleList(
            [nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation) for _ in range(3)]
        )
        self.max_tokens = positive_or_none("max_tokens", max_tokens)
        self.scaled = bool(scaled)
        self.dsa_impl = check_dsa_impl(dsa_impl)
        self.block_rows = positive_or_none("block_rows", block_rows)

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
            q, k, v = (pool(conv(x), grid) for conv in self.qkv)  # 3 × (B, C, h', w')

            def heads(t: torch.Tensor) -> torch.Tensor:  # (B, C, h', w') → (B, heads, N', C/heads), contiguous
                return t.reshape(b, self.heads, c // self.heads, n).transpose(2, 3).contiguous()

            if self.softmax == "query":  # Eq. 1: explicit N×N softmax over the query axis
                y = query_softmax_attention(heads(q), heads(k), heads(v), scale=scale)  # (B, heads, N', C/heads)
            else:
                y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)  # (B, heads, N', C/heads)
        else:
            # the three convs as one conv of 3C outputs (their parameters concatenated, so the
            # state_dict is unchanged): one pass over x instead of three
            conv = self.qkv[0]
            weight = torch.cat([m.weight for m in self.qkv])  # (3C, C, 3, 3)
            bias = torch.cat([m.bias for m in self.qkv])  # (3C,)
            qkv = F.conv2d(x, weight, bias, padding=conv.padding, dilation=conv.dilation)  # (B, 3C, H, W)
            qkv = pool(qkv, grid).reshape(b, 3, self.heads, c // self.heads, n)  # (B, 3, heads, C/heads, N')
            q, k, v = (t.transpose(2, 3) for t in qkv.unbind(1))  # 3 × (B, heads, N', C/heads), channel-major
            from .dsa_parallel import softmax_attention_parallel  # (#24; it imports this module)

            kernel = softmax_attention_parallel if impl == "parallel" else softmax_attention_blocked
            y = kernel(q, k, v, scale=scale, block_rows=self.block_rows, softmax=self.softmax)  # (B, heads, N', d)
        y = y.transpose(2, 3).reshape(b, c, *grid)  # (B, C, h', w')
        return unpool(y, (h, w))  # (B, C, H, W)

    def extra_repr(self) -> str:
        text = f"heads={self.heads}, max_tokens={self.max_tokens}, scaled={self.scaled}, dsa_impl={self.dsa_impl!r}"
        return text + (f", softmax={self.softmax!r}" if self.softmax != "key" else "")


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
    ``g2 = GC(g1, d3)``, output ``CBR1×1(concat(c, g1, g2))`` with C channels. ``dsa_scaled``,
    ``dsa_impl`` and ``dsa_softmax`` are :class:`DilatedSelfAttention`'s ``scaled``, ``dsa_impl`` and
    ``softmax`` for both DSAs."""

    def __init__(
        self,
        channels: int,
        *,
        heads: int | None = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        dsa_scaled: bool = True,
        dsa_impl: str = "auto",
        dsa_softmax: str = "key",
    ):
        super().__init__()
        self.conv = cbr(channels, channels, 3)
        dsa = dict(heads=heads, max_tokens=max_tokens, scaled=dsa_scaled, dsa_impl=dsa_impl, softmax=dsa_softmax)
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
