"""Anam-Net against the authors' code (NaveenPaluru/Segmentation-COVID-19, anamnet.py)."""

from __future__ import annotations

import torch

from lungseg.models import create_model
from lungseg.models.anamnet import AnamorphicDepthBlock

#: parameters of the authors' ``AnamNet()`` (1 input channel, 3 classes, widths 64/128/256/256),
#: counted by building their module; their 3×3 CBR convs carry a bias that lungseg drops before BN
AUTHORS_PARAMS = 4_631_555


def test_parameter_count_is_the_authors_with_their_biases_back():
    with torch.device("meta"):
        m = create_model("anamnet", in_channels=1, num_classes=3, base_channels=64)
    ours = sum(p.numel() for p in m.parameters())
    dropped = sum(stage[0].out_channels for stage in (*m.enc, *m.dec))  # one bias per output channel
    assert ours + dropped == AUTHORS_PARAMS


def test_structure_three_encoder_and_three_decoder_ad_blocks():
    m = create_model("anamnet", base_channels=8)
    assert sum(isinstance(mod, AnamorphicDepthBlock) for mod in m.modules()) == 6
    assert [s[0].out_channels for s in m.enc] == [8, 16, 32, 32]  # base·(1, 2, 4, 4)
    assert [s[0].out_channels for s in m.dec] == [32, 32, 16, 8]


def test_ad_block_is_a_residual_squeeze_expand():
    torch.manual_seed(0)
    blk = AnamorphicDepthBlock(16).eval()
    assert blk.squeeze[0].out_channels == 4 and blk.expand[0].out_channels == 16  # C → C/4 → C
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        ext = blk.expand(blk.conv(blk.squeeze(x)))
        torch.testing.assert_close(blk(x), torch.relu(x + ext))
