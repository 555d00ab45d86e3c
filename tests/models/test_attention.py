"""PCM kernels (lungseg.models.attention.pcm_attention): the blocked and FlexAttention paths against
the reference; DSA (PR-Net, lungseg.models.attention.dsa_attention): the blocked softmax attention and
the blocked DSA module against SDPA / the reference.

Tolerances: float64 inputs must agree with the reference to 1e-12 (forward and gradients; measured
≤ 4e-15 for PCM, ≤ 3e-14 for DSA), float32 PCM to 1e-5 absolute (measured ≤ 2.3e-6), float32 DSA
attention within 1e-5 of each tensor's largest entry from the float64 result, as SDPA itself.
FlexAttention is forward-only on CPU, so its formulation is checked there without gradients; its
CUDA kernel is not run by these tests.
"""

from __future__ import annotations

import pytest
import torch

from lungseg.models.attention import (
    DSA_BLOCK_ELEMS,
    DSA_IMPLS,
    PCM_IMPLS,
    DilatedSelfAttention,
    block_rows_for,
    dsa_block_shape,
    flex_available,
    pcm,
    pixel_correlation,
    pixel_correlation_blocked,
    pixel_correlation_flex,
    resolve_dsa_impl,
    resolve_pcm_impl,
    softmax_attention_blocked,
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

    from lungseg.models.attention import pcm_attention as attention

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
    assert PCM_IMPLS == ("auto", "reference", "blocked", "parallel", "flex")
    cpu = torch.device("cpu")
    assert resolve_pcm_impl("auto", cpu, threads=1) == "blocked"
    assert resolve_pcm_impl("auto", cpu, threads=2) == "parallel"  # blocks over the threads (#24)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert resolve_pcm_impl("auto", cpu) == "blocked"  # torch's own thread count by default
        torch.set_num_threads(2)
        assert resolve_pcm_impl("auto", cpu) == "parallel"
    finally:
        torch.set_num_threads(threads)
    assert resolve_pcm_impl("auto", torch.device("meta")) == "reference"  # FLOP counting sees the textbook ops
    assert resolve_pcm_impl("auto", torch.device("cuda"), threads=2) == ("flex" if flex_available() else "blocked")
    for impl in PCM_IMPLS[1:]:
        assert resolve_pcm_impl(impl, cpu) == impl
    with pytest.raises(ValueError, match="unknown pcm_impl 'fast' .*auto, reference, blocked, parallel, flex"):
        resolve_pcm_impl("fast", torch.device("cpu"))


# ---------- DSA (PR-Net) ----------
# (B, heads, N, d): odd N (37), d not a multiple of 8 (5), one head-map, d = 16
DSA_SHAPES = [(2, 3, 37, 5), (1, 1, 64, 8), (3, 1, 50, 16)]


def _qkv(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    return q, k, v, torch.randn(*shape, generator=g, dtype=dtype)


def _attn_and_grads(fn, q, k, v, gy):
    y = fn(q, k, v)
    return (y, *torch.autograd.grad(y, (q, k, v), gy))


def _sdpa(scale):
    return lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


def _blocked(scale, block_rows=None):
    return lambda q, k, v: softmax_attention_blocked(q, k, v, scale=scale, block_rows=block_rows)


@pytest.mark.parametrize("scale", [None, 1.0])  # SDPA's 1/√d, and Eq. 1's unscaled logits
@pytest.mark.parametrize("block_rows", [None, 1, 7, 10_000])
@pytest.mark.parametrize("shape", DSA_SHAPES)
def test_blocked_attention_equals_sdpa_forward_and_gradients(shape, block_rows, scale):
    q, k, v, gy = _qkv(shape, torch.float64)
    want = _attn_and_grads(_sdpa(scale), q, k, v, gy)
    got = _attn_and_grads(_blocked(scale, block_rows), q, k, v, gy)
    for name, a, b in zip(("output", "d/dq", "d/dk", "d/dv"), got, want):
        assert a.shape == b.shape, name
        assert (a - b).abs().max().item() <= 1e-12, name


def test_blocked_attention_with_several_head_maps_per_block(monkeypatch):
    """Small maps are processed several whole head-maps per block (batched GEMMs); 5 maps in blocks
    of 2 leave a last block of 1."""
    from lungseg.models.attention import dsa_attention as attention

    monkeypatch.setattr(attention, "DSA_BLOCK_ELEMS", 2 * 9 * 9)
    assert attention.dsa_block_shape(9, 5) == (9, 2)
    q, k, v, gy = _qkv((5, 1, 9, 4), torch.float64, seed=2)
    want = _attn_and_grads(_sdpa(None), q, k, v, gy)
    got = _attn_and_grads(_blocked(None), q, k, v, gy)
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() <= 1e-12


@pytest.mark.parametrize("scale", [None, 1.0])
def test_blocked_attention_is_as_accurate_as_sdpa_in_float32(scale):
    """float32 against the float64 result: both kernels within 1e-5 of each tensor's largest entry
    (unscaled logits at d = 16 are wide, so the gradients reach ~10 and the absolute errors ~1e-5)."""
    q, k, v, gy = _qkv((2, 2, 300, 16), torch.float64, seed=1)
    truth = _attn_and_grads(_sdpa(scale), q, k, v, gy)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    for fn in (_sdpa(scale), _blocked(scale)):
        got = _attn_and_grads(fn, q32, k32, v32, gy.float())
        for name, a, b in zip(("output", "d/dq", "d/dk", "d/dv"), got, truth):
            assert a.dtype == torch.float32
            err, size = (a.double() - b).abs().max().item(), b.abs().max().item()
            assert err <= 1e-5 * size, f"{name}: {err:.2g} vs largest entry {size:.2g}"


def test_blocked_attention_computes_half_precision_in_float32():
    """bfloat16 inputs (autocast's CPU dtype) come back in bfloat16, computed in float32: within the
    bfloat16 rounding of the result (2⁻⁸ of each tensor's largest entry) of the float64 computation
    on the same bfloat16 inputs."""
    q, k, v, gy = (t.detach().bfloat16() for t in _qkv((1, 2, 64, 8), torch.float64, seed=3))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    truth = _attn_and_grads(_sdpa(None), q64, k64, v64, gy.double())
    got = _attn_and_grads(_blocked(None), q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), gy)
    for a, b in zip(got, truth):
        assert a.dtype == torch.bfloat16
        assert (a.double() - b).abs().max().item() <= 2**-8 * b.abs().max().item()


def test_dsa_block_shape_follows_the_cache_budget():
    assert dsa_block_shape(4096, 8) == (DSA_BLOCK_ELEMS // 4096, 1) == (64, 1)  # 4096 keys × 64 queries
    assert dsa_block_shape(1024, 16) == (256, 1)
    assert dsa_block_shape(256, 16) == (256, 4)  # whole head-maps, four per block
    assert dsa_block_shape(256, 3) == (256, 3)  # never more maps than there are
    assert dsa_block_shape(1 << 20, 4) == (16, 1)  # at least 16 queries
    assert dsa_block_shape(10, 1) == (10, 1)  # never more queries than tokens
    with pytest.raises(ValueError, match="block_rows must be >= 1"):
        softmax_attention_blocked(*_qkv((1, 1, 4, 2), torch.float32)[:3], block_rows=0)


def test_blocked_attention_never_saves_an_n_by_n_tensor():
    """What autograd keeps between forward and backward is O(N·d): no (N, N) or (N, n) block."""
    q, k, v, _ = _qkv((1, 2, 1024, 8), torch.float32)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        softmax_attention_blocked(q, k, v, block_rows=64)
    assert shapes and all(1024 * 64 > torch.Size(s).numel() for s in shapes), shapes


def test_dsa_impl_selector():
    cpu = torch.device("cpu")
    assert resolve_dsa_impl("auto", cpu, threads=1) == "blocked"
    assert resolve_dsa_impl("auto", cpu, threads=2) == "parallel"  # head-maps over the threads (#24, dsa_parallel)
    assert resolve_dsa_impl("auto", torch.device("cuda"), threads=1) == "reference"
    assert resolve_dsa_impl("auto", torch.device("meta"), threads=1) == "reference"  # FLOP counting
    for impl in DSA_IMPLS[1:]:
        assert resolve_dsa_impl(impl, cpu, threads=4) == impl
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert resolve_dsa_impl("auto", cpu) == "blocked"  # torch's own thread count by default
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="unknown dsa_impl 'fast' .*auto, reference, blocked"):
        DilatedSelfAttention(16, 2, dsa_impl="fast")


def _dsa_by_hand(m: DilatedSelfAttention, x: torch.Tensor, scale: float) -> torch.Tensor:
    b, c, h, w = x.shape
    q, k, v = (conv(x).reshape(b, m.heads, c // m.heads, h * w) for conv in m.qkv)  # (B, heads, d, N)
    att = torch.softmax(scale * q.transpose(2, 3) @ k, dim=-1)  # (B, heads, N, N), softmax over keys
    return (att @ v.transpose(2, 3)).transpose(2, 3).reshape(b, c, h, w)


@pytest.mark.parametrize("impl", ["reference", "blocked"])
@pytest.mark.parametrize("scaled", [True, False])
def test_dsa_scale_option_and_fused_kernel_equal_the_formula(scaled, impl):
    torch.manual_seed(0)
    m = DilatedSelfAttention(16, 2, heads=2, max_tokens=None, scaled=scaled, dsa_impl=impl).double()
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
    assert f"scaled={scaled}" in repr(m) and f"dsa_impl='{impl}'" in repr(m)


@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("max_tokens", [None, 20, 16])  # exact (8×10), pooled to 4×5, pooled to 3×5
def test_dsa_impls_give_the_same_module(max_tokens, scaled):
    """Same weights: the blocked DSA (one concatenated q/k/v conv, the blocked kernel) gives the
    reference's output and the gradients of its input and of every parameter (float64, 1e-12)."""
    torch.manual_seed(0)
    ref = DilatedSelfAttention(16, 3, heads=2, max_tokens=max_tokens, scaled=scaled, dsa_impl="reference")
    blk = DilatedSelfAttention(16, 3, heads=2, max_tokens=max_tokens, scaled=scaled, dsa_impl="blocked", block_rows=7)
    ref, blk = ref.double(), blk.double()
    blk.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 8, 10, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 16, 8, 10, dtype=torch.float64)
    outs = []
    for m in (ref, blk):
        y = m(x)
        outs.append((y, *torch.autograd.grad(y, [x, *m.parameters()], gy)))
    want, got = outs
    assert len(got) == len(want) == 1 + 1 + 6  # output, d/dx, three convs' weights and biases
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() <= 1e-12


def test_dsa_inputs_are_eligible_for_the_fused_cpu_kernel():
    """Reference path: with contiguous per-head q/k/v the flash kernel accepts the call (strided ones
    fell back to the unfused math kernel, ~2× slower in training); restricted to flash, DSA still
    runs and matches."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    m = DilatedSelfAttention(16, 3, heads=2, max_tokens=None, dsa_impl="reference")
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        got = m(x)
        got.sum().backward()
    torch.testing.assert_close(got, _dsa_by_hand(m, x, (16 // 2) ** -0.5), rtol=0, atol=1e-5)
    assert torch.isfinite(x.grad).all()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the pooling rule's shape arithmetic
def test_blocked_dsa_traces_as_the_reference_ops():
    """Under ``torch.jit.trace`` (TorchScript, the ONNX exporter) DSA records SDPA, not the blocked
    kernel's Python autograd.Function, and the trace is the same function for other inputs."""
    torch.manual_seed(0)
    m = DilatedSelfAttention(8, 2, max_tokens=16, dsa_impl="blocked").eval()
    with torch.no_grad():
        traced = torch.jit.trace(m, torch.randn(2, 8, 8, 8), check_trace=False)
        assert "PythonOp" not in str(traced.graph)
        x = torch.randn(3, 8, 8, 8)
        torch.testing.assert_close(traced(x), m(x), rtol=0, atol=1e-6)


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


def test_the_package_re_exports_each_kernel_module_s_objects():
    """``lungseg.models.attention`` re-exports the objects of its modules (one object, not a copy):
    LG-Net's PCM from ``pcm_attention``, PR-Net's DSA from ``dsa_attention``, the budget from
    ``tokens``; the model classes the zoo builds come from them."""
    import lungseg.models.attention as package
    from lungseg.models.attention import dsa_attention, gate, pcm_attention, tokens
    from lungseg.models.attention_unet import AttentionGate
    from lungseg.models.lgnet import LGAttention
    from lungseg.models.prnet import ProgressiveAttention

    homes = {}
    for module in (dsa_attention, gate, pcm_attention, tokens):
        for name, obj in vars(module).items():
            if not name.startswith("_") and getattr(obj, "__module__", module.__name__) == module.__name__:
                homes.setdefault(name, module)
    for name in package.__all__:
        assert getattr(package, name) is getattr(homes[name], name), name
    assert {"LGAttention", "pcm", "PCM_IMPLS"} <= {n for n, m in homes.items() if m is pcm_attention}
    assert {"DilatedSelfAttention", "ProgressiveAttention", "DSA_IMPLS"} <= {
        n for n, m in homes.items() if m is dsa_attention
    }
    assert LGAttention is pcm_attention.LGAttention and ProgressiveAttention is dsa_attention.ProgressiveAttention
    assert AttentionGate is gate.AttentionGate


def test_token_budget_pool_and_unpool():
    """``pool``/``unpool`` return their input itself when it is on the grid / at the size already,
    else average-pool and resize bilinearly (the budget both kernels share)."""
    from lungseg.models.attention.tokens import pool, token_grid, unpool

    x = torch.arange(2 * 3 * 8 * 6, dtype=torch.float64).reshape(2, 3, 8, 6)
    assert pool(x, (8, 6)) is x and unpool(x, (8, 6)) is x
    grid = token_grid(8, 6, 12)
    assert grid == (4, 3)
    pooled = pool(x, grid)
    assert torch.equal(pooled, torch.nn.functional.avg_pool2d(x, 2))
    back = unpool(pooled, (8, 6))
    assert back.shape == x.shape
    assert torch.equal(back, torch.nn.functional.interpolate(pooled, size=(8, 6), mode="bilinear"))
