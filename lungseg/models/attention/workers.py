"""Chunks of a blocked attention kernel on several CPU threads (#24), shared by the parallel DSA
(:mod:`~lungseg.models.attention.dsa_parallel`) and the parallel PCM
(:mod:`~lungseg.models.attention.pcm_attention`).

Each chunk runs in its own Python thread with torch's intra-op threads at one meanwhile: the chunks
are the parallelism. ATen releases the GIL inside each op, so the chunks' GEMMs and elementwise
passes overlap; only the Python between them is serialised. The blocked kernels are made of many
small GEMMs (a few dozen rows against a few thousand tokens) that MKL parallelises poorly inside
one call; two chunks of them on two threads do use both cores.

torch's thread count is process-wide: it is set to one for the duration of a batch of chunks and put
back afterwards, under one lock, so that two callers (e.g. a served model answering two requests
at once) cannot interleave the set and the restore and leave the process on one thread. Such
callers run their parallel kernels one after the other; their other ops are not held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE < workers:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lungseg-attn")
        _POOL_SIZE = workers
    return _POOL


def _no_grad(inference: bool, fn: Callable, *args):
    # grad and inference mode are thread-local: a worker takes the caller's inference mode, else
    # writing into a tensor the caller made under torch.inference_mode (e.g. served predictions)
    # would be refused ("Inplace update to inference tensor outside InferenceMode")
    with torch.inference_mode() if inference else torch.no_grad():
        return fn(*args)


def run_chunks(calls: Sequence[tuple]) -> list:
    """``[fn(*args) for fn, *args in calls]`` under ``torch.no_grad`` (``torch.inference_mode`` when
    the caller is in it), one worker thread each, with torch's intra-op threads at one meanwhile, put
    back afterwards (also when a chunk raises: its exception is re-raised here). A single call runs
    in the calling thread, on its thread count."""
    inference = torch.is_inference_mode_enabled()
    if len(calls) == 1:
        fn, *args = calls[0]
        return [_no_grad(inference, fn, *args)]
    with _LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pool = _pool(len(calls))
            futures = [pool.submit(_no_grad, inference, *call) for call in calls]
            return [f.result() for f in futures]
        finally:
            torch.set_num_threads(threads)


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` bounds of at most ``parts`` contiguous, near-equal, non-empty chunks of ``range(total)``."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for p in range(parts):
        stop = start + base + (p < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


__all__ = ["run_chunks", "split"]
