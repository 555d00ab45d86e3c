"""Res2Net backbone: the original's structure and names, and loading a local state dict."""

from __future__ import annotations

import pytest
import torch

from lungseg.errors import DataError
from lungseg.models.res2net import Res2NetBackbone, load_backbone_state


def _random_state(backbone: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        for k, v in backbone.state_dict().items()
    }


def test_structure_and_names_of_the_original():
    b = Res2NetBackbone(3, width=8)
    keys = set(b.state_dict())
    for k in (
        "conv1.0.weight",
        "conv1.6.weight",
        "bn1.running_var",
        "layer1.0.convs.2.weight",
        "layer2.0.downsample.1.weight",
        "layer4.2.bn3.bias",
    ):
        assert k in keys
    assert [len(getattr(b, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    feats = b(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]


@pytest.mark.slow
def test_loads_a_saved_state_dict(tmp_path):
    src = Res2NetBackbone(1, width=8)
    state = _random_state(src, 0)
    path = tmp_path / "r2n.pth"
    torch.save(state, path)
    dst = Res2NetBackbone(1, width=8)
    load_backbone_state(dst, path)
    for k, v in dst.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_original_layout_three_channels_and_classifier(tmp_path):
    """The original file has ``fc.*`` and a 3-channel first conv: fc is ignored, conv1 summed over RGB."""
    rgb = _random_state(Res2NetBackbone(3, width=8), 1)
    rgb["fc.weight"], rgb["fc.bias"] = torch.randn(1000, 256), torch.randn(1000)
    path = tmp_path / "res2net50_v1b.pth"
    torch.save(rgb, path)
    gray = Res2NetBackbone(1, width=8)
    load_backbone_state(gray, path)
    torch.testing.assert_close(gray.conv1[0].weight, rgb["conv1.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(gray.layer4[2].conv3.weight, rgb["layer4.2.conv3.weight"])


def test_bad_files_raise_data_error_naming_the_file(tmp_path):
    b = Res2NetBackbone(1, width=8)
    with pytest.raises(DataError, match="not found") as e:
        load_backbone_state(b, tmp_path / "missing.pth")
    assert e.value.path == tmp_path / "missing.pth"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_backbone_state(b, junk)
    wider = tmp_path / "wider.pth"
    torch.save(Res2NetBackbone(1, width=16).state_dict(), wider)
    with pytest.raises(DataError, match="other shapes .*another base_channels"):
        load_backbone_state(b, wider)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in b.state_dict().items() if not k.startswith("layer4.")}, partial)
    with pytest.raises(DataError, match="missing keys"):
        load_backbone_state(b, partial)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(DataError, match="not a state dict"):
        load_backbone_state(b, notdict)
