"""Multi-class per-image Dice and IoU: prediction = argmax over the class channel.

For each foreground class k = 1..C-1 (background 0 is not reported): ``dice_c<k>``, ``iou_c<k>`` with the
binary empty-mask rule (class absent from both prediction and mask → 1; from exactly one → 0), the
counts ``tp_c<k>, fp_c<k>, fn_c<k>`` (for pooled values in :func:`lungseg.metrics.aggregate`), and
``dice_mean_fg`` / ``iou_mean_fg`` = the mean over the foreground classes of that image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._arrays import check_ids, check_labels, check_probs, to_numpy


def per_image_metrics_multiclass(probs, masks, *, ids: Sequence | None = None) -> pd.DataFrame:
    """``probs``: ``(N, C, H, W)`` class probabilities (C ≥ 2, e.g. softmax); ``masks``: ``(N, H, W)`` labels 0..C-1."""
    probs = to_numpy(probs, "probs")
    masks = to_numpy(masks, "masks")
    if probs.ndim != 4 or masks.ndim != 3 or probs.shape[0] != masks.shape[0] or probs.shape[2:] != masks.shape[1:]:
        raise ValueError(
            f"probs must be (N, C, H, W) and masks (N, H, W) with matching N, H, W; got probs {probs.shape} "
            f"and masks {masks.shape}"
        )
    n, c = probs.shape[:2]
    if c < 2:
        raise ValueError(f"multi-class metrics need C >= 2 channels, got probs {probs.shape}; use per_image_metrics")
    probs = check_probs(probs)
    masks = check_labels(masks, c)
    ids = check_ids(ids, n)
    pred = probs.argmax(axis=1)
    rows = []
    for i in range(n):
        row: dict = {"id": ids[i]}
        dices, ious = [], []
        for k in range(1, c):
            p, g = pred[i] == k, masks[i] == k
            tp = int(np.count_nonzero(p & g))
            fp = int(np.count_nonzero(p & ~g))
            fn = int(np.count_nonzero(~p & g))
            d = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
            j = tp / (tp + fp + fn) if tp + fp + fn else 1.0
            row.update({f"dice_c{k}": d, f"iou_c{k}": j, f"tp_c{k}": tp, f"fp_c{k}": fp, f"fn_c{k}": fn})
            dices.append(d)
            ious.append(j)
        row["dice_mean_fg"] = float(np.mean(dices))
        row["iou_mean_fg"] = float(np.mean(ious))
        rows.append(row)
    cols = ["id"] + [f"{m}_c{k}" for k in range(1, c) for m in ("dice", "iou")]
    cols += ["dice_mean_fg", "iou_mean_fg"] + [f"{m}_c{k}" for k in range(1, c) for m in ("tp", "fp", "fn")]
    return pd.DataFrame(rows, columns=cols)
