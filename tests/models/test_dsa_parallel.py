"""The DSA attention over several threads (#24, ``dsa_impl="parallel"``): the same function as SDPA
and the one-thread blocked kernel (values and gradients, both softmax axes), torch's thread count
put back after forward and backward, and PR-Net with it equal to PR-Net with the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lungseg.models import create_model
from lungseg.models.attention.dsa_attention import (
    query_softmax_attention,
    resolve_dsa_impl,
    softmax_attention_blocked,
)
from lungseg.models.attention.dsa_parallel import softmax_attention_parallel


def _grads(fn, q, k, v, g):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    y = fn(q, k, v)
    return (y, *torch.autograd.grad(y, (q, k, v), g))


@pytest.mark.parametrize("workers", [1, 2, 3, 4])  # 4: six head-maps in uneven chunks (2, 2, 1, 1)
@pytest.mark.parametrize("softmax", ["key", "query"])
@pytest.mark.parametrize("block_rows", [None, 5])
def test_parallel_attention_is_the_attention_in_float64(workers, softmax, block_rows):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 4, dtype=torch.float64) for _ in range(3))
    g = torch.randn(2, 3, 37, 4, dtype=torch.float64)
    ref = F.scaled_dot_product_attention if softmax == "key" else query_softmax_attention
    want = _grads(ref, q, k, v, g)
    got = _grads(
        lambda *t: softmax_attention_parallel(*t, softmax=softmax, block_rows=block_rows, workers=workers), q, k, v, g
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_parallel_attention_in_float32_matches_the_blocked_kernel_and_restores_the_threads():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 8).transpose(-1, -2).contiguous().transpose(-1, -2) for _ in range(3))
    g = torch.randn(2, 4, 300, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = _grads(lambda *t: softmax_attention_parallel(*t, block_rows=64), q, k, v, g)
        assert torch.get_num_threads() == 2  # put back after forward and backward
        torch.set_num_threads(1)  # each chunk of the parallel kernel runs on one intra-op thread: compare alike
        want = _grads(lambda *t: softmax_attention_blocked(*t, block_rows=64), q, k, v, g)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(got, want):  # one head-map per block either way: the same arithmetic up to the GEMM
        # kernel's choice, which depends on the process's thread setting (bitwise at OMP_NUM_THREADS=1 only)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_parallel_attention_under_autocast_computes_in_float32_and_returns_the_input_dtype():
    q, k, v = (torch.randn(1, 2, 16, 8, dtype=torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = softmax_attention_parallel(q, k, v, workers=2)
    assert y.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(*(t.float() for t in (q, k, v)))
    torch.testing.assert_close(y.float(), want, rtol=0, atol=1e-2)


def test_prnet_with_the_parallel_kernel_equals_prnet_with_the_reference():
    torch.manual_seed(0)
    ref = create_model("prnet", base_channels=4, dsa_impl="reference", max_tokens=64).double()
    par = create_model("prnet", base_channels=4, dsa_impl="parallel", max_tokens=64).double()
    par.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    ya, yb = ref(x), par(x)
    torch.testing.assert_close(yb, ya, rtol=0, atol=1e-10)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (name, a), b in zip(ref.named_parameters(), par.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-9, msg=name)


def test_auto_picks_the_parallel_kernel_on_several_cpu_threads():
    assert resolve_dsa_impl("auto", torch.device("cpu"), threads=1) == "blocked"
    assert resolve_dsa_impl("auto", torch.device("cpu"), threads=2) == "parallel"
    assert resolve_dsa_impl("auto", torch.device("cuda"), threads=2) == "reference"
    assert resolve_dsa_impl("parallel", torch.device("cpu"), threads=1) == "parallel"


def test_a_second_derivative_through_the_parallel_kernel_is_refused_not_zero():
    """As the blocked DSA kernel's backward, the parallel one's has no graph for a second derivative:
    refused, not a detached gradient (#24 re-review F2)."""
    q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    y = softmax_attention_parallel(q, k, v, workers=2)
    (g,) = torch.autograd.grad(y.square().sum(), v, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.square().sum().backward()
