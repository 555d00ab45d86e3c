"""Binary segmentation metrics, per image (:func:`per_image_metrics`) and aggregated (:func:`aggregate`).

Definitions follow ``architecture.md`` ("Metrics") and ``docs/metrics.md``. The prediction is
``probs >= threshold``; TP, FP, TN, FN count pixels of that prediction against the mask.

| column | definition | undefined when |
| --- | --- | --- |
| dice | 2TP/(2TP+FP+FN); both empty (TP+FP+FN = 0) → 1 | never |
| iou | TP/(TP+FP+FN); both empty → 1 | never |
| miou | mean of foreground IoU and background IoU TN/(TN+FP+FN) (both-empty rule → 1 each) | never |
| acc | (TP+TN)/(TP+FP+TN+FN) | never |
| sen | TP/(TP+FN) | no positive pixel in the mask → NaN |
| spe | TN/(TN+FP) | no negative pixel in the mask → NaN |
| mae | mean abs(p − g) on the probabilities | never |
| auc | ROC AUC of the probabilities (``sklearn.metrics.roc_auc_score``) | mask has one class only → NaN |
| hd, hd95 | boundary Hausdorff distance / HD95 (:mod:`.distance`), mm with ``spacing`` else pixels | exactly one of prediction/mask empty → NaN (both empty → 0) |
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ._arrays import check_ids, check_labels, check_probs, spacing_per_image, to_numpy
from .distance import hausdorff_2d

COLUMNS = ["id", "dice", "iou", "miou", "acc", "sen", "spe", "mae", "auc", "hd", "hd95", "tp", "fp", "tn", "fn"]
MEAN_METRICS = ["dice", "iou", "miou", "acc", "sen", "spe", "mae", "auc", "hd", "hd95"]
POOLED_METRICS = ["dice", "iou", "miou", "acc", "sen", "spe"]


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num) / float(den) if den > 0 else empty


def confusion_metrics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """dice, iou, miou, acc, sen, spe from confusion counts, with the empty-mask rules of this module."""
    iou_fg = _ratio(tp, tp + fp + fn, 1.0)
    iou_bg = _ratio(tn, tn + fp + fn, 1.0)
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": iou_fg,
        "miou": (iou_fg + iou_bg) / 2.0,
        "acc": _ratio(tp + tn, tp + fp + tn + fn, math.nan),
        "sen": _ratio(tp, tp + fn, math.nan),
        "spe": _ratio(tn, tn + fp, math.nan),
    }


def per_image_metrics(
    probs,
    masks,
    *,
    threshold: float = 0.5,
    spacing=None,
    ids: Sequence | None = None,
    labels=None,
) -> pd.DataFrame:
    """One row of metrics per image (columns :data:`COLUMNS`, see the module docstring).

    ``labels``: the predicted masks ``(N, H, W)`` in {0, 1} when they are not ``probs ≥ threshold`` (a
    post-processed prediction, :func:`lungseg.artifacts.serving.apply`); the overlap and distance metrics
    use them, MAE and AUC the probabilities.

    ``probs``: ``(N, H, W)`` foreground probabilities in [0, 1] (numpy or torch; not logits).
    ``masks``: ``(N, H, W)`` labels in {0, 1}. ``spacing``: ``(row_mm, col_mm)`` for all images or an
    ``(N, 2)`` array; distances in mm then, else in pixels. ``ids``: one label per image (default 0..N-1).
    """
    probs = to_numpy(probs, "probs")
    masks = to_numpy(masks, "masks")
    if probs.ndim != 3 or probs.shape != masks.shape:
        raise ValueError(
            "probs and masks must both be (N, H, W) with the same "
            f"shape; got probs {probs.shape} and masks {masks.shape}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    probs = check_probs(probs)
    gts = check_labels(masks, 2).astype(bool)
    n = probs.shape[0]
    ids = check_ids(ids, n)
    spacings = spacing_per_image(spacing, n)
    if labels is not None:
        labels = check_labels(to_numpy(labels, "labels"), 2).astype(bool)
        if labels.shape != probs.shape:
            raise ValueError(f"labels must have the shape of probs {probs.shape}, got {labels.shape}")
    rows = []
    for i in range(n):
        p, g = probs[i], gts[i]
        pred = p >= threshold if labels is None else labels[i]
        tp = int(np.count_nonzero(pred & g))
        fp = int(np.count_nonzero(pred & ~g))
        fn = int(np.count_nonzero(~pred & g))
        tn = int(g.size - tp - fp - fn)
        row = {"id": ids[i], **confusion_metrics(tp, fp, tn, fn)}
        row["mae"] = float(np.abs(p - g).mean()) if g.size else math.nan
        row["auc"] = float(roc_auc_score(g.ravel(), p.ravel())) if 0 < tp + fn < g.size else math.nan
        row["hd"], row["hd95"] = hausdorff_2d(pred, g, spacings[i])
        row.update(tp=tp, fp=fp, tn=tn, fn=fn)
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("tp", "fp", "tn", "fn"):
        df[c] = df[c].astype("int64")
    for c in MEAN_METRICS:
        df[c] = df[c].astype("float64")
    return df


def _nan_mean(values: np.ndarray) -> tuple[float, int]:
    """(mean of the finite values or NaN when there are none, number of NaN values)."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return (float(values[ok].mean()) if ok.any() else math.nan), int((~ok).sum())


def aggregate(df: pd.DataFrame) -> dict:
    """Aggregate a :func:`per_image_metrics` (or :func:`per_image_metrics_multiclass`) table.

    Keys: ``n_images``; ``<metric>_mean`` = mean over images ignoring NaN (``nanmean``) and
    ``<metric>_n_undefined`` = how many images had NaN, for every metric column;
    ``<metric>_pooled`` (micro) = the metric recomputed from the summed TP/FP/TN/FN over all images, for
    dice, iou, miou, acc, sen, spe (multi-class: ``dice_c<k>_pooled``, ``iou_c<k>_pooled`` from the
    per-class counts); ``hd_undefined`` = images whose HD is NaN (exactly one of prediction/mask empty).
    A mean over zero defined images is NaN.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"aggregate expects a pandas DataFrame, got {type(df).__name__}")
    out: dict = {"n_images": int(len(df))}
    count_cols = {c for c in df.columns if c in ("tp", "fp", "tn", "fn") or c[:3] in ("tp_", "fp_", "tn_", "fn_")}
    metric_cols = [c for c in df.columns if c != "id" and c not in count_cols]
    if not metric_cols:
        raise ValueError(f"no metric columns in the table (columns: {list(df.columns)})")
    for c in metric_cols:
        out[f"{c}_mean"], out[f"{c}_n_undefined"] = _nan_mean(df[c].to_numpy())
    if {"tp", "fp", "tn", "fn"} <= set(df.columns):
        s = {k: int(df[k].sum()) for k in ("tp", "fp", "tn", "fn")}
        for k, v in confusion_metrics(s["tp"], s["fp"], s["tn"], s["fn"]).items():
            out[f"{k}_pooled"] = v
        out.update({f"{k}_sum": v for k, v in s.items()})
    for c in sorted(c for c in df.columns if c.startswith("tp_c")):
        k = c[len("tp_c") :]
        tp, fp, fn = (int(df[f"{x}_c{k}"].sum()) for x in ("tp", "fp", "fn"))
        out[f"dice_c{k}_pooled"] = _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
        out[f"iou_c{k}_pooled"] = _ratio(tp, tp + fp + fn, 1.0)
    if "hd" in df.columns:
        out["hd_undefined"] = int(df["hd"].isna().sum())
    return out
