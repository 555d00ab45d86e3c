"""AWSnet: the coarse-to-fine wiring and the supervision weights."""

from __future__ import annotations

import math

import pytest
import torch

from lungseg.models import create_model


def test_supervision_weights_are_the_authors_initial_softmax():
    """pure_training.py starts from coeff = (0.5, 0.5, 0.5, 1) (deepest → finest), weights = softmax."""
    m = create_model("awsnet", base_channels=4)
    z = 3 * math.exp(0.5) + math.exp(1.0)
    fine, other = math.exp(1.0) / z, math.exp(0.5) / z  # ≈ 0.3547, 0.2151
    assert m.deep_supervision_weights == pytest.approx((fine, other, other, other, 1.0), abs=1e-6)
    custom = create_model("awsnet", base_channels=4, supervision_logits=(0, 0, 0, 0), coarse_weight=0.5)
    assert custom.deep_supervision_weights == pytest.approx((0.25, 0.25, 0.25, 0.25, 0.5))
    with pytest.raises(ValueError, match="needs 4 values"):
        create_model("awsnet", base_channels=4, supervision_logits=(1, 2))


def test_fine_stage_reads_image_and_prior_and_the_prior_is_detached():
    torch.manual_seed(0)
    m = create_model("awsnet", num_classes=3, base_channels=4)
    assert m.fine.encoder[0][0][0].in_channels == 1 + 3  # image + K prior channels
    x = torch.randn(2, 1, 32, 32)
    fine, *aux, coarse = m.forward_heads(x)
    fine.square().mean().backward()  # the fine output's loss alone
    assert all(p.grad is None for p in m.coarse.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.fine.parameters())
    m.zero_grad(set_to_none=True)
    coarse.square().mean().backward()  # the coarse stage learns from its own head
    assert all(p.grad is not None for p in m.coarse.parameters())
    assert all(p.grad is None for p in m.fine.parameters())


def test_the_prior_changes_the_fine_output():
    torch.manual_seed(0)
    m = create_model("awsnet", base_channels=4).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        before = m(x)
        m.coarse.head.bias.add_(5.0)  # a different shape prior, same image
        after = m(x)
    assert not torch.allclose(before, after)
