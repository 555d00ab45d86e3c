"""Gaussian sliding-window inference (lungseg.artifacts.sliding): one window the size of the image is the
plain forward; smaller windows equal it for a pointwise model and come close for a smooth one; the
Gaussian is nnU-Net's compute_gaussian; mirroring averages logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from lungseg.artifacts import sliding
from lungseg.artifacts.core import to_probabilities
from lungseg.models import create_model


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _smooth_image(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def test_patch_equal_to_the_image_is_the_plain_forward_of_a_real_model():
    torch.manual_seed(0)
    net = create_model("unet", base_channels=4).eval()
    x = _smooth_image(2, 64)
    with torch.inference_mode():
        plain = net(x)
        out = sliding.sliding_window_logits(net, x, 64)
        probs = sliding.sliding_window_probabilities(net, x, 64)
    assert out.shape == plain.shape
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, to_probabilities(plain), atol=1e-6, rtol=1e-5)


def test_pointwise_model_is_exact_with_any_window():
    net = nn.Conv2d(1, 2, 1).eval()
    x = _smooth_image(2, 64)
    with torch.inference_mode():
        plain = net(x)
        for patch in (16, 24, 32, (32, 48)):
            torch.testing.assert_close(sliding.sliding_window_logits(net, x, patch), plain, atol=1e-5, rtol=1e-5)


def test_smaller_windows_are_close_on_a_smooth_model():
    """A 5×5 smoothing model (zero padding): windows differ from the whole image only within 2 px of a
    window border, where the Gaussian weighs them least."""
    net = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    with torch.no_grad():
        net.weight.fill_(1 / 25)
    net.eval()
    x = _smooth_image(2, 96)
    with torch.inference_mode():
        plain = net(x)
        out = sliding.sliding_window_logits(net, x, 48)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # the image border is the same in both
    err = (out - plain)[inner].abs()
    assert float(err.mean()) < 0.01 * float(plain.abs().mean())
    assert float(err.max()) < 0.2 * float(plain.abs().max())


def test_gaussian_is_nnunets_compute_gaussian():
    """MONAI's importance map (sigma_scale 0.125) against nnU-Net's compute_gaussian: a unit impulse at
    i // 2 blurred by scipy's gaussian_filter (σ = size/8, constant mode), scaled to max 1."""
    from monai.data.utils import compute_importance_map

    for size in (48, 64, 65):
        tmp = np.zeros((size, size))
        tmp[size // 2, size // 2] = 1
        ref = gaussian_filter(tmp, (size / 8, size / 8), 0, mode="constant", cval=0)
        ref /= ref.max()
        ours = compute_importance_map((size, size), mode="gaussian", sigma_scale=sliding.SIGMA_SCALE).numpy()
        ours = ours / ours.max()
        # MONAI floors the weights at about 1e-3 of the peak (nnU-Net only lifts exact zeros)
        assert 0.0009 < ours.min() < 0.0011
        # an odd size puts both centres on the same pixel; an even one half a pixel apart (MONAI's centre
        # is (size - 1) / 2): a half-pixel shift of a Gaussian of σ = size/8 moves a weight by < 0.1
        assert np.abs(ours - ref).max() < (0.002 if size % 2 else 0.1), size


def test_mirroring_averages_the_logits_of_the_four_mirrorings():
    torch.manual_seed(1)
    net = nn.Conv2d(1, 1, 3, padding=1).eval()  # not mirror-symmetric: the mirrorings differ
    x = _smooth_image(1, 32)
    with torch.inference_mode():
        ref = sum(torch.flip(net(torch.flip(x, d)), d) if d else net(x) for d in ((), (-1,), (-2,), (-2, -1))) / 4
        out = sliding.sliding_window_logits(net, x, 32, mirror=True)
        assert not torch.allclose(ref, net(x), atol=1e-4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_deep_supervision_outputs_use_the_main_head():
    class TwoHeads(nn.Module):
        def forward(self, x):
            return [x * 2, x[:, :, ::2, ::2]]

    x = _smooth_image(1, 32)
    with torch.inference_mode():
        torch.testing.assert_close(sliding.sliding_window_logits(TwoHeads(), x, 16), x * 2, atol=1e-5, rtol=1e-5)
