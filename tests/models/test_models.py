"""Model zoo tests: tiny inputs (base 4, 32×32, batch 2) so the file runs in well under a minute."""

from __future__ import annotations

import pytest
import torch

from lungseg.models import create_model, list_models

BASE = 4


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _size(m) -> int:
    return max(32, m.size_divisor)


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
    y.square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no (finite) gradient for {missing}"
    zero = [n for n, p in m.named_parameters() if p.grad.abs().sum() == 0]
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


def test_registry_has_the_first_models():
    assert {"unet"} <= set(list_models())
