"""PR-Net's ``dsa_softmax``: ``"key"`` (the default, the standard softmax over keys, unchanged) and
``"query"`` (Eq. 1 as written: ``B_ij = exp(M_i·N_j) / Σ_k exp(M_k·N_j)``, ``DSA = B·T``), in both
DSA kernels, against a hand-written reference: an explicit loop over keys and queries."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lungseg.models import create_model
from lungseg.models.attention import DilatedSelfAttention
from lungseg.models.attention.dsa_attention import query_softmax_attention, softmax_attention_blocked
from lungseg.models.attention.tokens import pool, token_grid, unpool


def _eq1_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 1 for one head-map ``q, k, v`` (N, d), written with Python loops: for each key j the
    weights over the queries i are ``exp(s_ij) / Σ_i' exp(s_i'j)``; then ``y_i = Σ_j B_ij v_j``."""
    n = q.shape[0]
    s = [[scale * float(q[i] @ k[j]) for j in range(n)] for i in range(n)]
    b = [[0.0] * n for _ in range(n)]
    for j in range(n):
        m = max(s[i][j] for i in range(n))
        z = sum(math.exp(s[i][j] - m) for i in range(n))
        for i in range(n):
            b[i][j] = math.exp(s[i][j] - m) / z
    return torch.tensor(b, dtype=torch.float64) @ v


def _by_hand(q, k, v, scale):
    """:func:`_eq1_by_hand` over the leading (batch, head) dims."""
    lead = q.shape[:-2]
    flat = [t.reshape(-1, *t.shape[-2:]) for t in (q, k, v)]
    return torch.stack([_eq1_by_hand(a, b, c, scale) for a, b, c in zip(*flat)]).reshape(*lead, *q.shape[-2:])


@pytest.mark.parametrize("block_rows", [None, 3, 64])
def test_query_softmax_is_eq_1_written_out(block_rows):
    """The columns of B sum to 1 (each key's weights over the queries), not its rows; both
    implementations give the hand-written Eq. 1 to 1e-12 in float64, the blocked one for blocks
    smaller than N (3), whole head-maps (None: all maps in one block) and more rows than tokens."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, dtype=torch.float64) for _ in range(3))
    want = _by_hand(q, k, v, 0.5)
    torch.testing.assert_close(query_softmax_attention(q, k, v, scale=0.5), want, rtol=0, atol=1e-12)
    got = softmax_attention_blocked(q, k, v, scale=0.5, block_rows=block_rows, softmax="query")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # v = one-hot tokens: y = B itself; B's columns sum to 1, its rows do not
    eye = torch.eye(7, dtype=torch.float64).expand(2, 3, 7, 7)
    qq, kk = q[..., :1].expand(2, 3, 7, 7).contiguous(), k[..., :1].expand(2, 3, 7, 7).contiguous()
    b = softmax_attention_blocked(qq, kk, eye, scale=0.5, block_rows=block_rows, softmax="query")
    torch.testing.assert_close(b.sum(-2), torch.ones(2, 3, 7, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (b.sum(-1) - 1).abs().max() > 0.1
    # the default is the key softmax, unchanged: SDPA's function
    key = softmax_attention_blocked(q, k, v, scale=0.5, block_rows=block_rows)
    torch.testing.assert_close(key, F.scaled_dot_product_attention(q, k, v, scale=0.5), rtol=0, atol=1e-12)


def test_query_softmax_gradients_match_autograd_of_the_written_out_form():
    """The blocked kernel's own backward (dV, then E_j = v_j·dV_j, then dS = P ⊙ (dO·v − E)) equals
    autograd through the explicit N×N softmax over the queries, and passes gradcheck."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 11, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 2, 11, 4, dtype=torch.float64)
    want = torch.autograd.grad(query_softmax_attention(q, k, v, scale=0.8), (q, k, v), g)
    for rows in (None, 4):
        got = torch.autograd.grad(
            softmax_attention_blocked(q, k, v, scale=0.8, block_rows=rows, softmax="query"), (q, k, v), g
        )
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    small = [t.detach()[:1, :1, :6].requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: softmax_attention_blocked(a, b, c, block_rows=4, softmax="query"), small
    )


@pytest.mark.parametrize("max_tokens", [None, 16])  # exact, and the 8×8 map pooled to 4×4 tokens
@pytest.mark.parametrize("impl", ["reference", "blocked"])
def test_a_dsa_with_query_softmax_is_eq_1_on_its_pooled_tokens(impl, max_tokens):
    """A whole DSA module (q/k/v dilated convs, two heads, the max_tokens pooling and unpooling) with
    ``softmax="query"`` is Eq. 1 applied by hand to its own q/k/v maps, in both kernels."""
    torch.manual_seed(2)
    dsa = DilatedSelfAttention(16, 2, heads=2, max_tokens=max_tokens, dsa_impl=impl, softmax="query").double()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    grid = token_grid(8, 8, max_tokens)
    n = grid[0] * grid[1]
    assert n == (64 if max_tokens is None else 16)
    with torch.no_grad():
        maps = [pool(conv(x), grid).reshape(2, 2, 8, n).transpose(2, 3) for conv in dsa.qkv]  # (B, heads, N, d)
        y = _by_hand(*maps, 8**-0.5).transpose(2, 3).reshape(2, 16, *grid)
        torch.testing.assert_close(dsa(x), unpool(y, (8, 8)), rtol=0, atol=1e-12)
        key = DilatedSelfAttention(16, 2, heads=2, max_tokens=max_tokens, dsa_impl=impl).double()
        key.load_state_dict(dsa.state_dict())
        assert (key(x) - dsa(x)).abs().max() > 1e-3  # the option changes the function


@pytest.mark.parametrize("max_tokens", [None, 16])
def test_prnet_query_softmax_kernels_agree_and_the_default_is_unchanged(max_tokens):
    """PR-Net with ``dsa_softmax="query"``: the blocked network gives the reference network's output
    and parameter gradients (float64, 1e-10); the option is not a weight; the default network is
    bitwise the one built with ``dsa_softmax="key"`` written."""
    torch.manual_seed(0)
    kw = dict(base_channels=4, max_tokens=max_tokens, dsa_softmax="query")
    ref = create_model("prnet", dsa_impl="reference", **kw).double()
    blk = create_model("prnet", dsa_impl="blocked", **kw).double()
    blk.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    outs = []
    for m in (ref, blk):
        y = m.train()(x)
        y.square().mean().backward()
        outs.append((y, [p.grad for p in m.parameters()]))
    (y_ref, g_ref), (y_blk, g_blk) = outs
    torch.testing.assert_close(y_blk, y_ref, rtol=0, atol=1e-10)
    for a, b in zip(g_blk, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    dsas = [m for m in blk.modules() if isinstance(m, DilatedSelfAttention)]
    assert len(dsas) == 8 and all(m.softmax == "query" for m in dsas)
    torch.manual_seed(3)
    default = create_model("prnet", base_channels=4, max_tokens=max_tokens).eval()
    torch.manual_seed(3)
    written = create_model("prnet", base_channels=4, max_tokens=max_tokens, dsa_softmax="key").eval()
    xf = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(default(xf), written(xf))
    assert all(m.softmax == "key" for m in default.modules() if isinstance(m, DilatedSelfAttention))


def test_bad_dsa_softmax_names_the_valid_values():
    with pytest.raises(ValueError, match="unknown dsa_softmax 'rows'.*key, query"):
        create_model("prnet", base_channels=4, dsa_softmax="rows")
