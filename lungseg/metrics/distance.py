"""Hausdorff distance (HD) and HD95 between the boundaries of two binary 2D masks (scipy-based).

Definitions (identical to MONAI's ``compute_hausdorff_distance`` on CPU, checked in ``tests/metrics``):

* **Boundary** of a mask ``M``: ``M & ~binary_erosion(M)`` with scipy's default structuring element
  (4-connectivity cross) and pixels outside the image treated as background, so foreground pixels on the
  image border are boundary pixels and a structure 1–2 pixels thick is all boundary.
* **Directed distances** ``d(A→B)``: for every boundary pixel of A, the Euclidean distance to the nearest
  boundary pixel of B, in millimetres when ``spacing = (row_mm, col_mm)`` is given, else in pixels.
* **HD** = ``max(max d(P→G), max d(G→P))`` (PR-Net Eq. 3–4, symmetric).
* **HD95** = ``max(q95 d(P→G), q95 d(G→P))`` with ``q95`` the 95th percentile by linear interpolation
  (``numpy.percentile`` default, = ``torch.quantile``). Note: the maximum of the two directed percentiles,
  not the percentile of the pooled distances.
* Empty masks: both empty → HD = HD95 = 0; exactly one empty → NaN (undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean 2D mask (see the module docstring)."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def hausdorff_2d(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[float, float]:
    """``(hd, hd95)`` between boolean 2D masks ``pred`` and ``gt`` of equal shape."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be 2D masks of the same shape, got {pred.shape} and {gt.shape}")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 2 or not all(s > 0 and math.isfinite(s) for s in spacing):
            raise ValueError(f"spacing must be (row_mm, col_mm) with positive values, got {spacing}")
    p_any, g_any = bool(pred.any()), bool(gt.any())
    if not p_any and not g_any:
        return 0.0, 0.0
    if p_any != g_any:
        return math.nan, math.nan
    # Crop to the union's bounding box plus a 1-pixel margin (clipped at the image border): the distances
    # between boundary pixels do not change, the distance transforms get cheaper.
    rows, cols = np.nonzero(pred | gt)
    r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, pred.shape[0])
    c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, pred.shape[1])
    ep, eg = boundary(pred[r0:r1, c0:c1]), boundary(gt[r0:r1, c0:c1])
    d_pg = ndimage.distance_transform_edt(~eg, sampling=spacing)[ep]
    d_gp = ndimage.distance_transform_edt(~ep, sampling=spacing)[eg]
    hd = max(float(d_pg.max()), float(d_gp.max()))
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    return hd, hd95
