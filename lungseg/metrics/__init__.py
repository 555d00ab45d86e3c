"""Segmentation metrics: per image, then aggregated as mean over images and pooled (micro).

* :func:`per_image_metrics` — binary: ``id, dice, iou, miou, acc, sen, spe, mae, auc, hd, hd95, tp, fp, tn, fn``.
* :func:`per_image_metrics_multiclass` — per-class Dice/IoU (argmax prediction).
* :func:`aggregate` — ``<metric>_mean`` / ``<metric>_n_undefined`` / ``<metric>_pooled``, ``n_images``,
  ``hd_undefined``.
* :func:`dice_per_image_torch` — fast hard Dice on logits for validation during training.
* :func:`hausdorff_2d`, :func:`boundary` — the boundary Hausdorff distance used by the tables.

Definitions, empty-mask rules and units: ``docs/metrics.md``.
"""

from __future__ import annotations

from .binary import COLUMNS, aggregate, confusion_metrics, per_image_metrics
from .distance import boundary, hausdorff_2d
from .multiclass import per_image_metrics_multiclass
from .torch_metrics import dice_per_image_torch

__all__ = [
    "COLUMNS",
    "aggregate",
    "boundary",
    "confusion_metrics",
    "dice_per_image_torch",
    "hausdorff_2d",
    "per_image_metrics",
    "per_image_metrics_multiclass",
]
