"""LightUNet against the authors' code and README (Yingping-LI/Light-U-net)."""

from __future__ import annotations

import pytest
import torch

from lungseg.models import create_model


def _grouped(m) -> list[torch.nn.Conv2d]:
    return [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3)]


@pytest.mark.parametrize("variant, readme", [("lighter", 7_944_661), ("light", 11_000_257)])
def test_parameter_counts_are_the_readmes_with_the_biases_back(variant, readme):
    """README: "Lighter U-net @128" 7 944 661 and "Light U-net" 11 000 257 parameters (3 input
    channels, 1 class, base 64); the authors' convs all have a bias, lungseg's (all before BN) none."""
    with torch.device("meta"):
        m = create_model("lightunet", in_channels=3, num_classes=1, base_channels=64, variant=variant)
    ours = sum(p.numel() for p in m.parameters())
    dropped = sum(c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.bias is None)
    assert ours + dropped == readme


def test_group_pattern_scales_with_base_channels():
    """group_channels defaults to 2·base (= the README's C = 128 at base 64): same grouping at any width."""
    with torch.device("meta"):
        groups = {b: [c.groups for c in _grouped(create_model("lightunet", base_channels=b))] for b in (8, 64)}
    assert groups[8] == groups[64]
    assert sorted(set(groups[64])) == [1, 2, 4, 8]


def test_group_channels_one_is_depthwise_and_light_variant_mixes():
    m = create_model("lightunet", base_channels=8, group_channels=1)
    assert all(c.groups == c.in_channels for c in _grouped(m))  # depthwise-separable everywhere
    light = create_model("lightunet", base_channels=8, variant="light")
    kinds = {("depthwise" if c.groups == c.in_channels > 1 else "regular") for c in _grouped(light)}
    assert kinds == {"depthwise", "regular"}


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="unknown LightUNet variant"):
        create_model("lightunet", base_channels=8, variant="lightest")
    with pytest.raises(ValueError, match="does not divide"):
        create_model("lightunet", base_channels=8, group_channels=3)
    with pytest.raises(ValueError, match="group_channels must be >= 1"):
        create_model("lightunet", base_channels=8, group_channels=0)
