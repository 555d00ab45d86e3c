"""LG-Net options: where MRC sits (``mrc_levels``) and which PCM kernel runs (``pcm_impl``)."""

from __future__ import annotations

import pytest
import torch

from lungseg.models import create_model
from lungseg.models.lgnet import LGNet, MultiLevelResidualConv


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _has_mrc(stage: torch.nn.Module) -> bool:
    return any(isinstance(m, MultiLevelResidualConv) for m in stage.modules())


def test_mrc_sits_on_the_four_pooled_levels_by_default():
    m = create_model("lgnet", base_channels=8)
    assert m.mrc_levels == 4
    assert [_has_mrc(s) for s in m.encoder] == [True, True, True, True, False]  # bottleneck: plain double CBR
    five = create_model("lgnet", base_channels=8, mrc_levels=5)
    assert [_has_mrc(s) for s in five.encoder] == [True] * 5
    # the difference is exactly one MRC at the bottleneck width (base·16)
    assert _n_params(five) - _n_params(m) == _n_params(MultiLevelResidualConv(8 * 16))
    # use_mrc=False wins over mrc_levels (the ablation's "no MRC" row)
    assert not any(_has_mrc(s) for s in create_model("lgnet", base_channels=8, use_mrc=False, mrc_levels=5).encoder)


def test_mrc_levels_at_paper_width_matches_the_audit():
    """base 64: with MRC on 5 levels LG-Net has 129.2 M parameters, 59.8 M of them in the bottleneck's
    MRC; on the 4 pooled levels 69.4 M."""
    with torch.device("meta"):
        five, four = LGNet(base_channels=64, mrc_levels=5), LGNet(base_channels=64)
    bottleneck_mrc = _n_params(five.encoder[4][1])
    assert isinstance(five.encoder[4][1], MultiLevelResidualConv)
    assert round(_n_params(five) / 1e6, 1) == 129.2 and round(bottleneck_mrc / 1e6, 1) == 59.8
    assert round(_n_params(four) / 1e6, 1) == 69.4


@pytest.mark.parametrize("bad", [0, 6, 4.0, True, "4"])
def test_bad_mrc_levels_name_the_option(bad):
    with pytest.raises(ValueError, match="mrc_levels must be an integer in 1..5"):
        create_model("lgnet", base_channels=4, mrc_levels=bad)


def test_bad_pcm_impl_names_the_valid_values():
    with pytest.raises(ValueError, match="unknown pcm_impl 'triton'.*auto, reference, blocked, parallel, flex"):
        create_model("lgnet", base_channels=4, pcm_impl="triton")


@pytest.mark.slow
@pytest.mark.parametrize("max_tokens", [None, 64])  # exact, and pooled at the first skip (32² → 8²)
def test_pcm_impls_give_the_same_network(max_tokens):
    """Same weights, same dropout draws: the blocked kernel (with the quadrants stacked along the
    batch) gives the reference network's output and parameter gradients (float64, 1e-10)."""
    torch.manual_seed(0)
    ref = create_model("lgnet", base_channels=4, max_tokens=max_tokens, pcm_impl="reference").double()
    blk = create_model("lgnet", base_channels=4, max_tokens=max_tokens, pcm_impl="blocked", pcm_block_rows=24)
    blk = blk.double()
    blk.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    outs = []
    for m in (ref, blk):
        torch.manual_seed(1)
        y = m.train()(x)
        y.square().mean().backward()
        outs.append((y, [p.grad for p in m.parameters()]))
    (y_ref, g_ref), (y_blk, g_blk) = outs
    torch.testing.assert_close(y_blk, y_ref, rtol=0, atol=1e-10)
    for a, b in zip(g_blk, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert "pcm_impl='blocked'" in repr(blk.attention[0])


def test_state_dict_does_not_depend_on_pcm_impl():
    a = create_model("lgnet", base_channels=4, pcm_impl="reference")
    b = create_model("lgnet", base_channels=4, pcm_impl="auto")
    assert a.state_dict().keys() == b.state_dict().keys()


def test_checkpoints_from_before_mrc_levels_keep_loading(tmp_path):
    """An identity recorded before the option (no ``mrc_levels``) was a 5-level MRC network; new
    identities always record the option, so the two readings never collide."""
    from lungseg.artifacts.checkpoint import build_model, load_checkpoint
    from lungseg.models import complete_options

    assert complete_options("lgnet", {}) == {"mrc_levels": 4}
    assert complete_options("lgnet", {}, recorded=True) == {"mrc_levels": 5}
    assert complete_options("lgnet", {"mrc_levels": 3}, recorded=True) == {"mrc_levels": 3}
    assert complete_options("unet", {"up": "bilinear"}, recorded=True) == {"up": "bilinear"}
    old = create_model("lgnet", base_channels=4, mrc_levels=5)
    legacy = {"name": "lgnet", "kwargs": {"in_channels": 1, "num_classes": 1, "base_channels": 4}}
    path = tmp_path / "best.pt"
    torch.save({"model_identity": legacy, "model_state": old.state_dict()}, path)
    ckpt = load_checkpoint(path, expected={**legacy, "kwargs": {**legacy["kwargs"], "mrc_levels": 5}})
    net = build_model(ckpt["model_identity"])
    net.load_state_dict(ckpt["model_state"])  # strict: every key of the 5-level network
    assert net.mrc_levels == 5
