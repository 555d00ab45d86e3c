"""PCM kernels (lungseg.models.attention): the blocked and FlexAttention paths against the reference.

Tolerances: float64 inputs must agree with the reference to 1e-12 (forward and gradients; measured
≤ 4e-15), float32 to 1e-5 absolute (measured ≤ 2.3e-6). FlexAttention is forward-only on CPU, so its
formulation is checked there without gradients; its CUDA kernel is not run by these tests.
"""

from __future__ import annotations

import pytest
import torch

from lungseg.models.attention import (
    PCM_IMPLS,
    DilatedSelfAttention,
    block_rows_for,
    flex_available,
    pcm,
    pixel_correlation,
    pixel_correlation_blocked,
    pixel_correlation_flex,
    resolve_pcm_impl,
)

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

# (B, c, C, H, W): B > 1, odd N (9·7 = 63, 5·11 = 55), c not C/2, one single-image case
SHAPES = [(2, 4, 6, 9, 7), (1, 8, 16, 16, 16), (3, 3, 5, 5, 11)]


def _inputs(shape, dtype, seed=0):
    b, c, cv, h, w = shape
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(b, c, h, w, generator=g, dtype=dtype).requires_grad_()
    value = torch.rand(b, cv, h, w, generator=g, dtype=dtype).requires_grad_()  # skips are ≥ 0 (ReLU)
    grad_out = torch.randn(b, cv, h, w, generator=g, dtype=dtype)
    return theta, value, grad_out


def _value_and_grads(fn, theta, value, grad_out):
    y = fn(theta, value)
    return (y, *torch.autograd.grad(y, (theta, value), grad_out))


def _assert_close_all(got, want, tol):
    for name, a, b in zip(("output", "d/dtheta", "d/dvalue"), got, want):
        assert a.shape == b.shape, name
        err = (a - b).abs().max().item()
        assert err <= tol, f"{name}: max abs difference {err:.3g} > {tol:g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_rows", [None, 1, 7, 10_000])
def test_blocked_pcm_equals_the_reference_forward_and_gradients(shape, dtype, block_rows):
    theta, value, gy = _inputs(shape, dtype)
    want = _value_and_grads(lambda t, v: pixel_correlation(t, v, chunk_rows=None), theta, value, gy)
    got = _value_and_grads(lambda t, v: pixel_correlation_blocked(t, v, block_rows=block_rows), theta, value, gy)
    _assert_close_all(got, want, TOL[dtype])


@pytest.mark.parametrize("max_tokens", [None, 64, 20])  # exact, pooled to 8×8, pooled to an odd grid (5×4)
def test_blocked_pcm_equals_the_reference_with_and_without_pooling(max_tokens):
    theta, value, gy = _inputs((2, 4, 8, 16, 16), torch.float64, seed=1)
    ref = _value_and_grads(
        lambda t, v: pcm(t, v, max_tokens=max_tokens, impl="reference", chunk_rows=50), theta, value, gy
    )
    got = _value_and_grads(
        lambda t, v: pcm(t, v, max_tokens=max_tokens, impl="blocked", block_rows=5), theta, value, gy
    )
    _assert_close_all(got, ref, TOL[torch.float64])


def _mostly_negative_theta(dtype):
    """θ (1, 2, 4, 4): token 0 = (1, 0) has cos ≤ 0 with every other token but itself (its row sum is
    the diagonal's 1); token 1 is exactly zero (θ_i = 0: every score 0, the row is only ε); token 2
    = (0, 1) is orthogonal to token 0 (score exactly 0, the ReLU's kink); the rest point left."""
    g = torch.Generator().manual_seed(3)
    t = torch.empty(16, 2, dtype=dtype)
    t[:, 0] = -torch.rand(16, generator=g, dtype=dtype) - 0.1
    t[:, 1] = torch.randn(16, generator=g, dtype=dtype)
    t[0] = torch.tensor([1.0, 0.0])
    t[1] = 0.0
    t[2] = torch.tensor([0.0, 1.0])
    return t.T.reshape(1, 2, 4, 4).contiguous().requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blocked_pcm_rows_with_almost_no_positive_score(dtype):
    theta = _mostly_negative_theta(dtype)
    value = torch.rand(1, 3, 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(4)).requires_grad_()
    gy = torch.randn(1, 3, 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(5))
    want = _value_and_grads(lambda t, v: pixel_correlation(t, v, chunk_rows=None), theta, value, gy)
    got = _value_and_grads(lambda t, v: pixel_correlation_blocked(t, v, block_rows=3), theta, value, gy)
    _assert_close_all(got, want, TOL[dtype])
    y = got[0].flatten(2)[0]  # (C, N)
    v = value.detach().flatten(2)[0]
    # row 0: only the diagonal is positive → y_0 = v_0 / (1 + ε); row 1 (θ = 0) → 0
    torch.testing.assert_close(y[:, 0], v[:, 0] / (1 + 1e-6))
    assert torch.equal(y[:, 1], torch.zeros_like(y[:, 1]))
    assert all(torch.isfinite(g).all() for g in got)


def test_block_rows_follow_the_cache_budget_and_the_channels():
    assert block_rows_for(4096, 24) == (1 << 17) // 4096 == 32  # 512 KiB block at c + C = 24
    assert block_rows_for(4096, 192) == 8 * 32  # the budget grows with the channels
    assert block_rows_for(16384, 96) == 96  # at least c + C rows …
    assert block_rows_for(1 << 20, 8) == 16  # … and at least 16
    assert block_rows_for(10, 24) == 10  # never more rows than tokens
    with pytest.raises(ValueError, match="block_rows must be >= 1"):
        pixel_correlation_blocked(torch.randn(1, 2, 4, 4), torch.rand(1, 2, 4, 4), block_rows=0)


def test_blocked_pcm_never_saves_an_n_by_n_tensor():
    """What autograd keeps between forward and backward is O(N·C): no (N, N) or (n, N) block."""
    theta, value, _ = _inputs((1, 4, 8, 32, 32), torch.float32)  # N = 1024
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pixel_correlation_blocked(theta, value, block_rows=64)
    assert shapes and all(1024 * 1024 > torch.Size(s).numel() for s in shapes), shapes
    assert all(s.count(1024) <= 1 for s in shapes), shapes


# ---------- FlexAttention (forward on CPU) ----------
needs_flex = pytest.mark.skipif(not flex_available(), reason="this torch has no FlexAttention")


@pytest.mark.slow
@needs_flex
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("shape", SHAPES)
def test_flex_pcm_forward_equals_the_reference(shape):
    theta, value, _ = _inputs(shape, torch.float32)
    with torch.no_grad():
        want = pixel_correlation(theta, value, chunk_rows=None)
        got = pixel_correlation_flex(theta, value)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert (got - want).abs().max().item() <= 1e-5


@needs_flex
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_pcm_corrects_rows_with_almost_no_positive_score():
    """Plain softmax of log(ReLU(s) + t) would give a θ = 0 row the mean of v; the lse correction
    gives the reference's 0, and the diagonal-only row v_0 / (1 + ε)."""
    theta = _mostly_negative_theta(torch.float32).detach()
    value = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = pixel_correlation(theta, value, chunk_rows=None)
        got = pixel_correlation_flex(theta, value)
        pooled_ref = pcm(theta.repeat(1, 1, 4, 4), value.repeat(1, 1, 4, 4), max_tokens=64, impl="reference")
        pooled = pcm(theta.repeat(1, 1, 4, 4), value.repeat(1, 1, 4, 4), max_tokens=64, impl="flex")
    assert (got - want).abs().max().item() <= 1e-6
    assert got.flatten(2)[0, :, 1].abs().max().item() <= 1e-6  # θ = 0 row
    assert (pooled - pooled_ref).abs().max().item() <= 1e-5


@needs_flex
def test_flex_pcm_refuses_gradients_on_cpu():
    theta, value, _ = _inputs((1, 2, 4, 4, 4), torch.float32)
    with pytest.raises(RuntimeError, match="no backward on cpu .*use pcm_impl=.blocked. or .auto. to train"):
        pixel_correlation_flex(theta, value)


@needs_flex
def test_flex_formulation_gradients_with_an_autograd_stand_in(monkeypatch):
    """The GPU kernel cannot run here, but the algebra around it can: with an autograd stand-in for
    ``flex_attention`` (dense softmax of the same ``score_mod``, natural-log lse), the flex path's
    output and gradients, through the lse correction, equal the reference's (float64)."""
    from torch.nn.attention.flex_attention import AuxOutput

    from lungseg.models import attention

    def stand_in(q, k, v, *, score_mod, scale, return_aux):
        s = score_mod(scale * q @ k.transpose(-1, -2), None, None, None, None)  # (B, 1, N, N)
        return torch.softmax(s, dim=-1) @ v, AuxOutput(lse=torch.logsumexp(s, dim=-1))

    monkeypatch.setattr(attention, "_flex_fn", lambda device, needs_grad: stand_in)
    for theta, value, gy in (_inputs((2, 4, 6, 9, 7), torch.float64), _inputs((3, 3, 5, 5, 11), torch.float64)):
        want = _value_and_grads(lambda t, v: pixel_correlation(t, v, chunk_rows=None), theta, value, gy)
        got = _value_and_grads(pixel_correlation_flex, theta, value, gy)
        _assert_close_all(got, want, 1e-10)
    theta = _mostly_negative_theta(torch.float64)
    value = torch.rand(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    want = _value_and_grads(lambda t, v: pixel_correlation(t, v, chunk_rows=None), theta, value, gy)
    _assert_close_all(_value_and_grads(pixel_correlation_flex, theta, value, gy), want, 1e-10)


# ---------- selector ----------
def test_pcm_impl_selector():
    assert PCM_IMPLS == ("auto", "reference", "blocked", "flex")
    assert resolve_pcm_impl("auto", torch.device("cpu")) == "blocked"
    assert resolve_pcm_impl("auto", torch.device("meta")) == "reference"  # FLOP counting sees the textbook ops
    assert resolve_pcm_impl("auto", torch.device("cuda")) == ("flex" if flex_available() else "blocked")
    for impl in PCM_IMPLS[1:]:
        assert resolve_pcm_impl(impl, torch.device("cpu")) == impl
    with pytest.raises(ValueError, match="unknown pcm_impl 'fast' .*auto, reference, blocked, flex"):
        resolve_pcm_impl("fast", torch.device("cpu"))


# ---------- DSA (PR-Net) ----------
def _dsa_by_hand(m: DilatedSelfAttention, x: torch.Tensor, scale: float) -> torch.Tensor:
    b, c, h, w = x.shape
    q, k, v = (conv(x).reshape(b, m.heads, c // m.heads, h * w) for conv in m.qkv)  # (B, heads, d, N)
    att = torch.softmax(scale * q.transpose(2, 3) @ k, dim=-1)  # (B, heads, N, N), softmax over keys
    return (att @ v.transpose(2, 3)).transpose(2, 3).reshape(b, c, h, w)


@pytest.mark.parametrize("scaled", [True, False])
def test_dsa_scale_option_and_fused_kernel_equal_the_formula(scaled):
    torch.manual_seed(0)
    m = DilatedSelfAttention(16, 2, heads=2, max_tokens=None, scaled=scaled).double()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64, requires_grad=True)
    d = 16 // 2
    got = m(x)
    want = _dsa_by_hand(m, x, d**-0.5 if scaled else 1.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    gy = torch.randn_like(got)
    g_got = torch.autograd.grad(got, [x, *m.parameters()], gy)
    g_want = torch.autograd.grad(want, [x, *m.parameters()], gy)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert f"scaled={scaled}" in repr(m)


def test_dsa_inputs_are_eligible_for_the_fused_cpu_kernel():
    """With contiguous per-head q/k/v the flash kernel accepts the call (strided ones fell back to
    the unfused math kernel, ~2× slower in training); restricted to flash, DSA still runs and matches."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    m = DilatedSelfAttention(16, 3, heads=2, max_tokens=None)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        got = m(x)
        got.sum().backward()
    torch.testing.assert_close(got, _dsa_by_hand(m, x, (16 // 2) ** -0.5), rtol=0, atol=1e-5)
    assert torch.isfinite(x.grad).all()


@pytest.mark.slow
def test_blocked_pcm_traces_as_the_reference_ops():
    """``torch.jit.trace`` (TorchScript and the ONNX exporter) cannot record the blocked kernel's
    autograd.Function; under a tracer PCM runs the reference ops (same function), so LG-Net exports."""
    from lungseg.models import create_model

    torch.manual_seed(0)
    net = create_model("lgnet", base_channels=4, pcm_impl="blocked", max_tokens=64).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(net, x, check_trace=False)
        ref = net(x)
        assert torch.allclose(traced(x), ref, atol=1e-6)
        y = torch.rand(3, 1, 32, 32)
        assert torch.allclose(traced(y), net(y), atol=1e-6)  # another batch size: no constant baked in
