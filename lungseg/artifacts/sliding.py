"""Gaussian-weighted sliding-window inference, as nnU-Net predicts with a model trained on patches.

nnU-Net v2 (``nnunetv2/inference/predict_from_raw_data.py``, ``nnUNetPredictor``; the weights from
``nnunetv2/inference/sliding_window_prediction.py``, ``compute_gaussian``): windows of the training
patch size overlap by half (``tile_step_size=0.5``), each window's **logits** are weighted by a
Gaussian centred on the window with σ = 1/8 of its size (``sigma_scale=1/8``) and summed, the sum is
divided by the summed weights, and only then softmax / arg-max; with mirroring on, each window's
logits are the mean over the mirrorings (``_internal_maybe_mirror_and_predict``: all combinations of
the allowed axes, for 2-D the 4 of H and W). An image smaller than the patch is padded (zeros here).

Here MONAI's :class:`monai.inferers.SlidingWindowInferer` does the windows (``overlap=0.5``,
``mode="gaussian"``, ``sigma_scale=0.125``). One difference in where the windows lie: nnU-Net spreads
its ``ceil((size − patch) / (patch / 2)) + 1`` windows evenly over the image
(``compute_steps_for_sliding_window``), MONAI steps by half a patch and moves the last window back to
the border; both cover the image with the same number of windows. And the weights' floor: MONAI
lifts every weight to at least 1e-3 of the peak, nnU-Net only the exact zeros (to the smallest weight).

Input: ``(N, C, H, W)`` already in the model's intensity range; output logits ``(N, K, H, W)``
(:func:`sliding_window_logits`) or probabilities (:func:`sliding_window_probabilities`:
:func:`lungseg.artifacts.core.to_probabilities` of the logits).
"""

from __future__ import annotations

import torch
from torch import nn

OVERLAP = 0.5
SIGMA_SCALE = 0.125


class MainHead(nn.Module):
    """``net``'s full-resolution output: the first of the outputs where it returns several (deep
    supervision heads), the output itself otherwise."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class MirroredLogits(nn.Module):
    """The mean of ``net``'s logits over the 2-D mirrorings, each flipped back: the served ``tta: mirror``
    itself (:func:`lungseg.artifacts.core.mirrored_logits`, nnU-Net's ``_internal_maybe_mirror_and_predict``),
    per window when wrapped by the sliding window."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = MainHead(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lungseg.artifacts.core import mirrored_logits

        return mirrored_logits(self.net, x)


def sliding_window_logits(
    net: nn.Module,
    x: torch.Tensor,
    patch_size: int | tuple[int, int],
    *,
    mirror: bool = False,
    sw_batch_size: int = 4,
    overlap: float = OVERLAP,
) -> torch.Tensor:
    """Logits of ``net`` on ``x`` ``(N, C, H, W)`` from Gaussian-weighted windows of ``patch_size``
    overlapping by ``overlap``; ``mirror``: each window mirrored 4 ways and averaged (logits).
    Call it under ``torch.inference_mode()`` with ``net`` in eval mode, on ``x``'s device."""
    from monai.inferers import SlidingWindowInferer

    roi = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    inferer = SlidingWindowInferer(
        roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian", sigma_scale=SIGMA_SCALE,
        padding_mode="constant", cval=0.0,
    )  # fmt: skip
    model = MirroredLogits(net) if mirror else MainHead(net)
    return inferer(x, model)


def sliding_window_probabilities(
    net: nn.Module, x: torch.Tensor, patch_size: int | tuple[int, int], *, mirror: bool = False, sw_batch_size: int = 4
) -> torch.Tensor:
    """:func:`lungseg.artifacts.core.to_probabilities` of :func:`sliding_window_logits` (sigmoid for one
    channel, softmax otherwise): the windows and mirrorings are averaged as logits, as nnU-Net does."""
    from lungseg.artifacts.core import to_probabilities

    return to_probabilities(sliding_window_logits(net, x, patch_size, mirror=mirror, sw_batch_size=sw_batch_size))
