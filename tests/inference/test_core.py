"""The model side of inference: resizing exactly as preprocessing does, probabilities, labels."""

from __future__ import annotations

import numpy as np
import torch

from lungseg.artifacts import core
from lungseg.data import formats, transforms


def _unit(path) -> np.ndarray:
    return transforms.to_unit_range(formats.read_image_2d(path), source=path, window=(-1000.0, 400.0))


def test_resize_to_model_is_the_preprocessing_resize(sample_pngs):
    """Down (512 → 64) and up (a 40×27 crop → 64): the batched resize equals resize_pair's image."""
    images = [_unit(p) for p in sample_pngs[:3]]
    batch = torch.from_numpy(np.stack(images))[:, None]
    got = core.resize_to_model(batch, 64).numpy()[:, 0]
    for img, out in zip(images, got):
        ref, _ = transforms.resize_pair(img, np.zeros(img.shape, np.uint8), 64)
        np.testing.assert_allclose(out, ref, atol=1e-6)
    crop = images[0][200:240, 300:327]
    ref, _ = transforms.resize_pair(crop, np.zeros(crop.shape, np.uint8), 64)
    np.testing.assert_allclose(
        core.resize_to_model(torch.from_numpy(crop)[None, None], 64)[0, 0].numpy(), ref, atol=1e-6
    )


def test_resize_back_restores_the_input_size_and_keeps_probabilities_in_range():
    probs = torch.rand(2, 3, 32, 32)
    back = core.resize_back(probs, (300, 301))
    assert back.shape == (2, 3, 300, 301)
    assert float(back.min()) >= 0.0 and float(back.max()) <= 1.0
    flat = torch.full((1, 1, 32, 32), 0.7)
    np.testing.assert_allclose(core.resize_back(flat, (512, 512)).numpy(), 0.7, atol=1e-6)


def test_labels_threshold_binary_and_argmax_multiclass():
    p = torch.tensor([[[[0.2, 0.5], [0.51, 0.9]]]])
    assert core.to_labels(p, 0.5).tolist() == [[[0, 1], [1, 1]]]
    assert core.to_labels(p, 0.6).tolist() == [[[0, 0], [0, 1]]]
    multi = torch.tensor([[[[0.7]], [[0.2]], [[0.1]]], [[[0.1]], [[0.3]], [[0.6]]]])
    assert core.to_labels(multi, 0.5).flatten().tolist() == [0, 2]


def test_predict_batch_runs_any_size_through_the_model_size():
    """A 90×70 batch (not a multiple of the U-Net's divisor 16) is resized, predicted, resized back."""
    net = core.build_network({"name": "unet", "kwargs": {"in_channels": 1, "num_classes": 1, "base_channels": 4}})
    x = torch.rand(3, 1, 90, 70)
    with torch.inference_mode():
        probs = core.predict_batch(net, x, 32)
        direct = torch.sigmoid(net(core.resize_to_model(x, 32)))
    assert probs.shape == (3, 1, 90, 70)
    np.testing.assert_allclose(probs.numpy(), core.resize_back(direct, (90, 70)).numpy(), atol=1e-6)
    prob_net = core.ProbabilityNet(net).eval()
    with torch.inference_mode():
        np.testing.assert_allclose(prob_net(core.resize_to_model(x, 32)).numpy(), direct.numpy(), atol=1e-7)
