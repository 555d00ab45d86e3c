"""Model zoo tests: tiny inputs (base 4, 32×32 or 64×64, batch 2) so the file runs in well under a minute."""

from __future__ import annotations

import re

import pytest
import torch

from lungseg.models import create_model, list_models

BASE = 4


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _size(m) -> int:
    """32, or twice the size divisor: the deepest map is at least 2×2, not a single pixel."""
    return max(32, 2 * m.size_divisor)


#: Parameters whose gradient is zero up to rounding by construction, per model (checked by name).
#: Inf-Net (as the authors' code): its receptive-field blocks are linear conv→BN chains, and on the
#: small stride-16/32 maps of these inputs (4×4, 2×2) the dilated 3×3 convs (dilation 3, 5, 7) see
#: only their centre tap, so the BN bias before them shifts the next BN's input by a constant that
#: the BN removes; its edge head ends in a BN whose output has mean = bias, which the zero-mean
#: gradient of ``square().mean()`` cancels. Everything else must get a non-zero gradient.
REDUNDANT = {"infnet": re.compile(r"^(rfb[34]\.branches\.\d\.\d\.1|edge_head\.1)\.bias$")}


def _training_outputs(m, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """What training differentiates: ``forward_heads`` of a deep-supervised model (one output per
    ``deep_supervision_weights`` entry, main first = ``forward``'s output), else ``forward``'s."""
    weights = getattr(m, "deep_supervision_weights", None)
    if not weights:
        return [y]
    heads = m.forward_heads(x)
    assert len(heads) == len(weights)
    targets = getattr(m, "deep_supervision_targets", None) or ("mask",) * len(heads)
    assert len(targets) == len(heads) and set(targets) <= {"mask", "edge"}
    for h, t in zip(heads, targets):
        assert h.shape == ((2, 1) if t == "edge" else y.shape[:2]) + y.shape[2:] and torch.isfinite(h).all()
    torch.testing.assert_close(heads[0], y)  # same batch statistics, no dropout in these models
    return heads


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes", [1, 3])
def test_shape_finite_and_every_parameter_gets_a_gradient(name, num_classes):
    torch.manual_seed(0)
    m = create_model(name, in_channels=1, num_classes=num_classes, base_channels=BASE)
    s = _size(m)
    x = torch.randn(2, 1, s, s)
    y = m(x)
    assert y.shape == (2, num_classes, s, s)
    assert torch.isfinite(y).all()
    sum(o.square().mean() for o in _training_outputs(m, x, y)).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no (finite) gradient for {missing}"
    # Documented exception: an SE bottleneck has max(1, C // 6) hidden ReLU units, 1 at this tiny
    # width, which can be dead for the whole batch at init; then its fc weights get exactly zero.
    redundant = REDUNDANT.get(name)
    zero = [
        n
        for n, p in m.named_parameters()
        if p.grad.abs().sum() == 0 and ".se.fc" not in n and not (redundant and redundant.match(n))
    ]
    assert not zero, f"{name}: all-zero gradient for {zero}"


@pytest.mark.parametrize("name", list_models())
def test_size_not_multiple_of_divisor_is_rejected(name):
    m = create_model(name, base_channels=BASE)
    d = m.size_divisor
    with pytest.raises(ValueError, match=rf"input {d + 4}×{2 * d} is not a multiple of {d}"):
        m(torch.randn(1, 1, d + 4, 2 * d))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        create_model("no-such-net")
    for name in list_models():
        assert name in str(e.value)


def test_lgnet_with_all_switches_off_is_the_bilinear_unet():
    plain = create_model("lgnet", base_channels=8, use_mrc=False, use_lg_attention=False, use_ff=False)
    unet = create_model("unet", base_channels=8, up="bilinear")
    assert _n_params(plain) == _n_params(unet)
    assert [p.shape for p in plain.parameters()] == [p.shape for p in unet.parameters()]
    # same function once the weights are shared
    plain.load_state_dict(unet.state_dict())
    x = torch.randn(2, 1, 32, 32)
    plain.eval(), unet.eval()
    torch.testing.assert_close(plain(x), unet(x))


@pytest.mark.parametrize("switch", ["use_mrc", "use_lg_attention", "use_ff"])
def test_lgnet_each_switch_changes_the_structure(switch):
    full = create_model("lgnet", base_channels=8)
    off = create_model("lgnet", base_channels=8, **{switch: False})
    assert _n_params(off) < _n_params(full)
    x = torch.randn(2, 1, 32, 32)
    assert off(x).shape == full(x).shape == (2, 1, 32, 32)


def test_prnet_pam_switch_changes_the_structure():
    full, off = create_model("prnet", base_channels=8), create_model("prnet", base_channels=8, use_pam=False)
    assert _n_params(off) < _n_params(full)
    assert sum(type(m).__name__ == "ProgressiveAttention" for m in full.modules()) == 4
    assert not any(type(m).__name__ == "ProgressiveAttention" for m in off.modules())


def test_unetpp_deep_supervision_heads():
    m = create_model("unetpp", base_channels=4, deep_supervision=True)
    x = torch.randn(2, 1, 32, 32)
    heads = m.forward_heads(x)
    assert len(heads) == 4 and all(h.shape == (2, 1, 32, 32) for h in heads)
    torch.testing.assert_close(m(x), torch.stack(heads).mean(0))
    assert len(create_model("unetpp", base_channels=4).forward_heads(x)) == 1


@pytest.mark.parametrize("name", ["lgnet", "prnet"])
def test_max_tokens_exact_when_within_budget_and_pooled_otherwise(name):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    exact = create_model(name, base_channels=4, max_tokens=None)
    # 32×32 = 1024 tokens at the first skip: a budget of 1024 takes the exact path everywhere
    within = create_model(name, base_channels=4, max_tokens=32 * 32)
    small = create_model(name, base_channels=4, max_tokens=16)
    within.load_state_dict(exact.state_dict())
    small.load_state_dict(exact.state_dict())
    outs = []
    with torch.no_grad():
        for m in (exact, within, small):
            torch.manual_seed(1)  # same dropout masks; BN in training mode (batch statistics)
            outs.append(m.train()(x))
    ye, yw, ys = outs
    assert torch.equal(ye, yw)
    assert ys.shape == ye.shape and torch.isfinite(ys).all()
    assert not torch.allclose(ys, ye)


def test_token_grid_and_pcm_chunking():
    from lungseg.models.attention import pcm, pixel_correlation, token_grid

    assert token_grid(512, 512, 4096) == (64, 64)
    assert token_grid(64, 64, 4096) == (64, 64)
    assert token_grid(512, 256, 4096) == (91, 45)  # 91·45 = 4095 ≤ 4096
    assert token_grid(100, 100, None) == (100, 100)
    gh, gw = token_grid(37, 53, 500)
    assert gh * gw <= 500
    torch.manual_seed(0)
    t, v = torch.randn(2, 4, 16, 16, requires_grad=True), torch.rand(2, 6, 16, 16)
    one = pixel_correlation(t, v, chunk_rows=None)
    chunked = pixel_correlation(t, v, chunk_rows=50)  # checkpointed blocks of 50 rows
    torch.testing.assert_close(one, chunked)
    g1 = torch.autograd.grad(one.sum(), t)[0]
    g2 = torch.autograd.grad(chunked.sum(), t)[0]
    torch.testing.assert_close(g1, g2)
    # PCM output is a convex combination of the (non-negative) values
    assert (one >= 0).all() and (one <= v.amax() + 1e-6).all()
    assert pcm(t, v, max_tokens=64).shape == v.shape
