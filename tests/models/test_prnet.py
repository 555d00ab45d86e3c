"""PR-Net options: the DSA logit scale (``dsa_scaled``)."""

from __future__ import annotations

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
