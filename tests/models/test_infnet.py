"""Inf-Net: heads, reverse attention, the pretrained-backbone option."""

from __future__ import annotations

import pytest
import torch

from lungseg.errors import DataError
from lungseg.models import create_model
from lungseg.models.infnet import ReverseAttention
from lungseg.models.res2net import Res2NetBackbone


def test_heads_main_first_and_an_edge_head():
    torch.manual_seed(0)
    m = create_model("infnet", num_classes=2, base_channels=4)
    x = torch.randn(2, 1, 64, 64)
    heads = m.forward_heads(x)
    assert [tuple(h.shape) for h in heads] == [(2, 2, 64, 64)] * 4 + [(2, 1, 64, 64)]
    torch.testing.assert_close(heads[0], m(x))
    assert m.deep_supervision_weights == (1.0,) * 5  # MyTrain_LungInf.py: loss1 + … + loss5
    assert m.deep_supervision_targets == ("mask",) * 4 + ("edge",)


def test_widths_scale_with_base_channels():
    with torch.device("meta"):
        m = create_model("infnet", base_channels=64)
    assert m.resnet.out_channels == (256, 512, 1024, 2048)  # Res2Net-50
    assert m.rfb2.conv_cat[0].out_channels == 32  # the code's channel = 32
    assert m.ra4.reduce[0].out_channels == 256 and m.ra3.reduce[0].out_channels == 64
    assert m.edge[0][0].out_channels == 64


def test_reverse_attention_erases_what_is_already_foreground():
    """With a huge positive prior the features are multiplied by 1 − σ ≈ 0 (binary), or by the
    background probability ≈ 0 (multi-class): the branch output no longer depends on them."""
    torch.manual_seed(0)
    for k in (1, 3):
        ra = ReverseAttention(8, 4, 4, k, kernel=3, n_convs=2, last_kernel=3).eval()
        prior = torch.full((1, k, 4, 4), 50.0)
        if k > 1:
            prior[:, 0] = -50.0  # background very unlikely
        edge = torch.randn(1, 4, 8, 8)
        a, b = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(ra(a, prior, edge), ra(b, prior, edge))


@pytest.mark.slow
def test_pretrained_backbone_is_loaded_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    src = Res2NetBackbone(1, width=8)
    for p in src.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "res2net_base8.pth"
    torch.save(src.state_dict(), path)
    m = create_model("infnet", base_channels=8, pretrained_backbone=str(path))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(m.resnet.state_dict()[k], v)
    with pytest.raises(DataError, match="other shapes"):
        create_model("infnet", base_channels=16, pretrained_backbone=str(path))
    with pytest.raises(DataError, match="not found"):
        create_model("infnet", base_channels=8, pretrained_backbone=str(tmp_path / "nope.pth"))
