"""PR-Net options: the DSA logit scale (``dsa_scaled``) and the DSA kernel (``dsa_impl``)."""

from __future__ import annotations

import pytest
import torch

from lungseg.models import create_model
from lungseg.models.attention import DilatedSelfAttention


def test_dsa_scaled_reaches_every_dsa_and_changes_the_function():
    scaled = create_model("prnet", base_channels=4)
    paper = create_model("prnet", base_channels=4, dsa_scaled=False)
    dsas = [m for m in paper.modules() if isinstance(m, DilatedSelfAttention)]
    assert len(dsas) == 8 and not any(m.scaled for m in dsas)  # 4 skips × (dilation 2, 3)
    assert all(m.scaled for m in scaled.modules() if isinstance(m, DilatedSelfAttention))
    paper.load_state_dict(scaled.state_dict())  # same parameters: the option is not a weight
    # same weights, one skip's first DSA: the logits differ by the factor √d (the formula itself is
    # tested in test_attention.py)
    a, b = scaled.skip_enhance[1][1].dsa2, paper.skip_enhance[1][1].dsa2
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max().item() > 1e-3


@pytest.mark.parametrize("max_tokens", [None, 16])  # exact, and pooled at the first three skips (32², 16², 8² → 4²)
def test_dsa_impls_give_the_same_network(max_tokens):
    """Same weights: PR-Net with the blocked DSA gives the reference network's output and parameter
    gradients in training mode (float64, 1e-10); heads 1, 1, 2 and 4 at base 4."""
    torch.manual_seed(0)
    ref = create_model("prnet", base_channels=4, max_tokens=max_tokens, dsa_impl="reference").double()
    blk = create_model("prnet", base_channels=4, max_tokens=max_tokens, dsa_impl="blocked").double()
    blk.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    outs = []
    for m in (ref, blk):
        y = m.train()(x)
        y.square().mean().backward()
        outs.append((y, [p.grad for p in m.parameters()]))
    (y_ref, g_ref), (y_blk, g_blk) = outs
    torch.testing.assert_close(y_blk, y_ref, rtol=0, atol=1e-10)
    assert len(g_blk) == len(g_ref) and all(g is not None for g in g_blk)
    for a, b in zip(g_blk, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    dsas = [m for m in blk.modules() if isinstance(m, DilatedSelfAttention)]
    assert len(dsas) == 8 and all(m.dsa_impl == "blocked" for m in dsas)
    assert [m.heads for m in dsas[::2]] == [1, 1, 2, 4]


def test_a_reference_checkpoint_loads_into_the_blocked_network(tmp_path):
    """The kernel is not a weight: a state_dict saved by the reference network loads strictly into
    the blocked (and the default) one, with the same keys, and gives the same output."""
    torch.manual_seed(0)
    ref = create_model("prnet", base_channels=4, max_tokens=64, dsa_impl="reference").eval()
    path = tmp_path / "prnet.pt"
    torch.save(ref.state_dict(), path)
    blk = create_model("prnet", base_channels=4, max_tokens=64, dsa_impl="blocked").eval()
    blk.load_state_dict(torch.load(path, weights_only=True))
    assert (
        blk.state_dict().keys() == ref.state_dict().keys() == create_model("prnet", base_channels=4).state_dict().keys()
    )
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), ref(x), rtol=0, atol=1e-5)


def test_bad_dsa_impl_names_the_valid_values():
    with pytest.raises(ValueError, match="unknown dsa_impl 'flash'.*auto, reference, blocked"):
        create_model("prnet", base_channels=4, dsa_impl="flash")
