"""Conversion and validation of metric inputs (numpy arrays or torch tensors)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc


def check_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    if probs.dtype == bool or not np.issubdtype(probs.dtype, np.number):
        raise ValueError(f"{name} must be numeric probabilities in [0, 1], got dtype {probs.dtype}")
    probs = probs.astype(np.float64, copy=False)
    if probs.size:
        if not np.isfinite(probs).all():
            raise ValueError(f"{name} contain NaN or infinite values")
        lo, hi = float(probs.min()), float(probs.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} must be probabilities in [0, 1] (not logits); found {lo:.4g}..{hi:.4g}")
    return probs


def check_labels(masks: np.ndarray, n_labels: int, name: str = "masks") -> np.ndarray:
    if masks.dtype == bool:
        masks = masks.astype(np.uint8)
    if not np.issubdtype(masks.dtype, np.integer):
        if np.issubdtype(masks.dtype, np.floating) and masks.size and np.array_equal(masks, np.round(masks)):
            masks = masks.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer labels, got dtype {masks.dtype}")
    if masks.size:
        lo, hi = int(masks.min()), int(masks.max())
        if lo < 0 or hi > n_labels - 1:
            raise ValueError(f"{name} labels must lie in 0..{n_labels - 1}; found {lo}..{hi}")
    return masks


def check_ids(ids: Sequence | None, n: int) -> list:
    if ids is None:
        return list(range(n))
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries but there are {n} images")
    return ids


def spacing_per_image(spacing, n: int) -> list[tuple[float, float] | None]:
    """``None``, one ``(row_mm, col_mm)`` for all images, or an ``(N, 2)`` array."""
    if spacing is None:
        return [None] * n
    arr = np.asarray(spacing, dtype=np.float64)
    if arr.shape == (2,):
        arr = np.broadcast_to(arr, (n, 2))
    if arr.shape != (n, 2):
        raise ValueError(f"spacing must be (row_mm, col_mm) or shape ({n}, 2), got shape {arr.shape}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"spacing values must be positive and finite, got {spacing}")
    return [(float(r), float(c)) for r, c in arr]
