"""The PCM over several threads (#24, ``pcm_impl="parallel"``): the blocked kernel's (image, row
block) pairs split over worker threads. The same function as the reference (values and gradients,
float64), bitwise the blocked kernel computed on one thread (float32), torch's thread count put back,
and LG-Net with it equal to LG-Net with the reference; the shared worker helper
(:mod:`lungseg.models.attention.workers`) splits, restores the threads on error and under concurrent
callers."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lungseg.models import create_model
from lungseg.models.attention import pcm, pixel_correlation, pixel_correlation_blocked
from lungseg.models.attention.workers import run_chunks, split


def _inputs(b, c, cv, h, w, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    value = torch.rand(b, cv, h, w, generator=g, dtype=dtype)  # skips are ≥ 0 (ReLU)
    grad_out = torch.randn(b, cv, h, w, generator=g, dtype=dtype)
    return theta, value, grad_out


def _grads(fn, theta, value, g):
    theta, value = theta.detach().requires_grad_(), value.detach().requires_grad_()
    y = fn(theta, value)
    return (y, *torch.autograd.grad(y, (theta, value), g))


@pytest.mark.parametrize("workers", [2, 3, 7])
@pytest.mark.parametrize("shape", [(2, 4, 6, 9, 7), (1, 3, 5, 5, 11), (3, 2, 4, 4, 4)])
def test_parallel_pcm_is_the_reference_in_float64(workers, shape):
    theta, value, g = _inputs(*shape, torch.float64)
    want = _grads(lambda t, v: pixel_correlation(t, v, chunk_rows=None), theta, value, g)
    got = _grads(lambda t, v: pixel_correlation_blocked(t, v, block_rows=5, workers=workers), theta, value, g)
    for name, a, b in zip(("output", "d/dtheta", "d/dvalue"), got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


def test_parallel_pcm_is_bitwise_the_one_thread_blocked_kernel_and_restores_the_threads():
    theta, value, g = _inputs(3, 8, 16, 16, 16, torch.float32, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = _grads(lambda t, v: pcm(t, v, max_tokens=None, impl="parallel", block_rows=40), theta, value, g)
        assert torch.get_num_threads() == 2  # put back after forward and backward
        torch.set_num_threads(1)  # each chunk runs on one intra-op thread: compare with the same arithmetic
        want = _grads(lambda t, v: pcm(t, v, max_tokens=None, impl="blocked", block_rows=40), theta, value, g)
    finally:
        torch.set_num_threads(threads)
    for name, a, b in zip(("output", "d/dtheta", "d/dvalue"), got, want):
        assert torch.equal(a, b), name


def test_parallel_pcm_rejects_a_bad_worker_count():
    theta, value, _ = _inputs(1, 2, 2, 4, 4, torch.float32)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            pixel_correlation_blocked(theta, value, workers=bad)


@pytest.mark.slow
def test_lgnet_with_the_parallel_kernel_equals_lgnet_with_the_reference():
    torch.manual_seed(0)
    kw = dict(base_channels=4, max_tokens=64, rse_dropout=0.0)  # no dropout: the same function in train mode
    ref = create_model("lgnet", pcm_impl="reference", **kw).double()
    par = create_model("lgnet", pcm_impl="parallel", **kw).double()
    par.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the parallel kernel splits over torch's thread count
        ya, yb = ref(x), par(x)
        torch.testing.assert_close(yb, ya, rtol=0, atol=1e-10)
        ya.square().sum().backward()
        yb.square().sum().backward()
    finally:
        torch.set_num_threads(threads)
    for (name, a), b in zip(ref.named_parameters(), par.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-9, msg=name)


def test_split_gives_contiguous_near_equal_non_empty_chunks():
    assert split(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split(2, 5) == [(0, 1), (1, 2)]  # never an empty chunk
    assert split(7, 1) == [(0, 7)]
    for total in range(1, 30):
        for parts in range(1, 9):
            bounds = split(total, parts)
            sizes = [b - a for a, b in bounds]
            assert bounds[0][0] == 0 and bounds[-1][1] == total
            assert all(a == prev_b for (a, _), (_, prev_b) in zip(bounds[1:], bounds))
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def _fail(x):
    raise RuntimeError(f"chunk {x} failed")


def test_run_chunks_raises_a_chunk_s_error_and_puts_the_threads_back():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = run_chunks([(lambda: torch.get_num_threads(),), (lambda: torch.is_grad_enabled(),)])
        assert seen == [1, False]  # one intra-op thread per chunk, no autograd recording inside
        with pytest.raises(RuntimeError, match="chunk 1 failed"):
            run_chunks([(abs, -1), (_fail, 1)])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def _in_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_concurrent_callers_leave_torch_on_its_thread_count():
    """Two threads calling the parallel kernel at once (a served model answering two requests). torch's
    thread count is process-wide and each thread reads it at its first torch call: without the lock
    around the set-to-one and the restore, a caller could read the other's one-thread setting as its
    own and "restore" it, leaving itself and every thread started later on one thread."""
    threads = torch.get_num_threads()
    gate = threading.Barrier(2)
    seen, errors = [], []

    def caller():  # its first torch call is inside run_chunks
        try:
            gate.wait()
            for _ in range(10):
                run_chunks([(time.sleep, 0.005)] * 2)  # chunks that take a while: the callers overlap
            seen.append(torch.get_num_threads())
        except Exception as exc:  # re-raised below: a failing caller fails the test
            errors.append(exc)

    try:
        torch.set_num_threads(2)
        callers = [threading.Thread(target=caller) for _ in range(2)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert not errors, errors
        assert seen == [2, 2]
        assert _in_new_thread(torch.get_num_threads) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name, kw", [("lgnet", {"pcm_impl": "parallel"}), ("prnet", {"dsa_impl": "parallel"})])
def test_parallel_kernels_run_under_inference_mode(name, kw):
    """Serving predicts under ``torch.inference_mode``, which is thread-local: the worker threads take
    it from the caller (they wrote into the caller's inference tensors and were refused, #24)."""
    torch.manual_seed(0)
    net = create_model(name, base_channels=4, max_tokens=64, **kw).eval()
    x = torch.rand(2, 1, 32, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            got = net(x)
        with torch.no_grad():
            want = net(x)
    finally:
        torch.set_num_threads(threads)
    assert got.is_inference()
    assert torch.equal(got, want)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_derivative_through_the_blocked_kernels_is_refused_not_zero(workers):
    """The blocked PCM's backward writes into preallocated outputs: it has no graph for a second
    derivative. With workers > 1 the gradient came back detached and a gradient penalty silently added
    nothing (#24 re-review F2); now both refuse (``once_differentiable``)."""
    theta, value, _ = _inputs(1, 2, 3, 4, 4, torch.float64)
    theta.requires_grad_()
    value.requires_grad_()
    y = pixel_correlation_blocked(theta, value, block_rows=3, workers=workers)
    (g,) = torch.autograd.grad(y.square().sum(), value, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.square().sum().backward()
