"""The blocked DSA attention on several CPU threads (#24): the head-maps split into one chunk per
thread, each chunk's forward and backward run by :class:`~lungseg.models.attention.dsa_attention.
_BlockedSoftmaxAttention` (or its query-softmax twin) in its own Python thread, each thread's ops
kept to one intra-op thread (:func:`~lungseg.models.attention.workers.run_chunks`, shared with the
parallel PCM).

Why a candidate: the blocked kernel is the default on one thread only, because its many small GEMMs
and passes parallelise poorly inside each op, and SDPA's flash kernel (parallel over batch × heads
in one region) wins on two (:func:`~lungseg.models.attention.dsa_attention.resolve_dsa_impl`).
Whether this wins is measured by ``bench/bench_attention.py`` (``parallel`` rows) and written in
``bench/results/ATTENTION.md``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch.autograd.function import once_differentiable

from .dsa_attention import blocked_inputs, blocked_output, dsa_block_shape
from .workers import run_chunks, split


class _Ctx(SimpleNamespace):
    """What the blocked kernels' ``forward``/``backward`` read and write on ``ctx``."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


class _ParallelBlocked(torch.autograd.Function):
    """The blocked kernel ``op`` over ``chunks`` of head-maps (G,d,N), one per worker thread."""

    @staticmethod
    def forward(ctx, qt, kt, vt, scale: float, rows: int, group: int, op, workers: int):
        bounds = split(qt.shape[0], workers)  # the largest chunk has ceil(G / workers) head-maps
        ctxs = [_Ctx() for _ in bounds]
        calls = [(op.forward, c, qt[a:b], kt[a:b], vt[a:b], scale, rows, group) for c, (a, b) in zip(ctxs, bounds)]
        out = torch.cat(run_chunks(calls))
        ctx.chunks, ctx.op = list(zip(ctxs, bounds)), op
        return out

    @staticmethod
    @once_differentiable  # as the blocked kernels' backward: no graph for a second derivative
    def backward(ctx, gout):
        gout = gout.contiguous()
        grads = [r[:3] for r in run_chunks([(ctx.op.backward, c, gout[a:b]) for c, (a, b) in ctx.chunks])]
        ctx.chunks = None  # free the saved tensors
        return (*(torch.cat(parts) for parts in zip(*grads)), None, None, None, None, None)


def softmax_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    block_rows: int | None = None,
    softmax: str = "key",
    workers: int | None = None,
) -> torch.Tensor:
    """:func:`~lungseg.models.attention.dsa_attention.softmax_attention_blocked` with the head-maps
    split over ``workers`` threads (default ``torch.get_num_threads()``); the same arguments, the
    same values up to float rounding (each head-map is computed by the same blocked code, but a
    chunk's blocks may group other head-maps than the one-thread kernel's, so sums can round
    differently: ≤ 1.2e-7 in float32, 2.2e-16 in float64, in the #24 review)."""
    qkv_t, sc, op = blocked_inputs(q, k, v, scale, block_rows, softmax)
    n, g = q.shape[-2], qkv_t[0].shape[0]
    workers = max(1, min(torch.get_num_threads() if workers is None else workers, g))
    per = math.ceil(g / workers)
    rows, group = dsa_block_shape(n, per) if block_rows is None else (min(block_rows, n), 1)
    with torch.autocast(q.device.type, enabled=False):
        yt = _ParallelBlocked.apply(*qkv_t, sc, rows, group, op, workers)  # (G, d, N)
    return blocked_output(yt, q)


__all__ = ["softmax_attention_parallel"]
