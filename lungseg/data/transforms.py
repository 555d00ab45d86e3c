"""Intensity normalisation and resizing of single slices.

Intensity: every image leaves the readers as float32 in [0, 1].

* **HU sources** (NIfTI, DICOM, the Kaggle full-resolution TIFF): ``hu_window = (low, high)`` is a
  linear window, ``clip((hu - low) / (high - low), 0, 1)``. The default (-1000, 400) HU keeps air,
  lung parenchyma, ground-glass and soft tissue apart and saturates bone, the usual lung window.
* **8-bit sources** (PNG/JPG already windowed by the dataset's authors): divided by 255.
* **Float sources already in [0, 1]** (Kaggle 64 px npy, MSD patches): kept; anything outside [0, 1]
  is a ``DataError`` rather than a silent rescale.

Resizing to ``image_size``² uses torch: images bilinear with anti-aliasing (an area-like filter when
downscaling, so thin structures are averaged, not aliased), masks nearest-neighbour (labels stay
labels). The aspect ratio is not kept: the contract is square slices; ``spacing_mm`` is scaled per
axis so physical distances stay right.
"""

from __future__ import annotations

import numpy as np

from lungseg.errors import DataError


def hu_window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Linear HU window to [0, 1] (float32)."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"hu_window must be (low, high) with high > low, got {window!r}")
    out = (np.asarray(hu, dtype=np.float32) - low) / (high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def to_unit_range(arr: np.ndarray, *, source, window: tuple[float, float]) -> np.ndarray:
    """Scale a raw 2-D image to float32 [0, 1] following the rules of the module docstring.

    uint8 → /255; uint16 → /65535; signed integers → HU window; floats already in [0, 1] → kept;
    other floats → HU window (CT stored as float HU). ``source`` names the file in errors.
    """
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        raise DataError(source, "image is boolean (a mask given as an image?)")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.signedinteger):
        return hu_window(arr, window)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise DataError(source, "image contains NaN or infinite values")
        if arr.min() >= 0.0 and arr.max() <= 1.0:
            return arr.astype(np.float32)
        return hu_window(arr, window)
    raise DataError(source, f"unsupported image dtype {arr.dtype}")


#: the domains an input's values can be in, and what ``--intensity`` may state
DOMAINS = ("hu", "hu+1024", "unit", "uint8", "uint16")
STATABLE = ("hu", "hu+1024", "unit", "uint8", "uint16")
#: the largest value of 12-bit data: 16-bit slices whose values all fit under it are CT numbers shifted
#: by +1024 (air near 0) as often as full-range 16-bit grey levels, and are not divided by 65535 unstated
TWELVE_BITS = 4095
#: the lowest value a volume in Hounsfield units must reach somewhere (air is about -1000 HU)
HU_AIR_BELOW = -100.0


def nifti_domain(data: np.ndarray, dtype, scaled: bool, source, stated: str | None = None) -> tuple[str, str]:
    """``(domain, how it was decided)`` of a NIfTI's values (``data`` after scl_slope/scl_inter;
    ``dtype`` as stored; ``scaled``: the file has a slope or intercept). The one rule the training
    reader ``nifti`` and ``lungseg predict`` share (docs/inference.md, "Intensity"): uint8 without
    scaling → ``uint8``; values reaching below :data:`HU_AIR_BELOW` → ``hu``; floats within [0, 1] →
    ``unit``; anything else cannot be told apart and is a ``DataError`` asking for ``stated``."""
    lo, hi = float(np.min(data)), float(np.max(data))
    if stated is not None:
        return check_stated(stated, lo, hi, np.asarray(data), source), f"--intensity {stated} (values {lo:g}..{hi:g})"
    dtype = np.dtype(dtype)
    stored = f"stored as {dtype}{' with scl_slope/scl_inter' if scaled else ''}, values {lo:g}..{hi:g}"
    if dtype == np.uint8 and not scaled:
        return "uint8", f"{stored}: 8-bit grey levels"
    if lo < HU_AIR_BELOW:
        return "hu", f"{stored}: air below {HU_AIR_BELOW:g}, Hounsfield units"
    if np.issubdtype(dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return "unit", f"{stored}: already in [0, 1]"
    raise DataError(
        source,
        f"cannot tell the intensity domain ({stored}): 8-bit grey levels, CT numbers shifted by +1024 or "
        "normalised values look alike; pass --intensity hu|hu+1024|unit|uint8",
    )


def check_stated(stated: str, lo: float, hi: float, values: np.ndarray, source) -> str:
    """``stated`` (``--intensity``) when the values agree with it, else a ``DataError`` saying why."""
    if stated not in STATABLE:
        raise DataError(source, f"--intensity {stated!r}: allowed {', '.join(STATABLE)}")
    if stated == "hu" and lo >= HU_AIR_BELOW:
        raise DataError(
            source,
            f"--intensity hu, but the values span [{lo:g}, {hi:g}]: no air (below {HU_AIR_BELOW:g}); "
            "CT numbers shifted by +1024 are --intensity hu+1024",
        )
    if stated == "hu+1024" and (lo < 0.0 or lo >= 1024 + HU_AIR_BELOW):
        raise DataError(source, f"--intensity hu+1024, but the values span [{lo:g}, {hi:g}] (air would be near 0)")
    if stated == "unit" and (lo < 0.0 or hi > 1.0):
        raise DataError(source, f"--intensity unit, but the values span [{lo:g}, {hi:g}], outside [0, 1]")
    if stated == "uint8" and (lo < 0.0 or hi > 255.0 or not np.all(values == np.round(values))):
        raise DataError(
            source, f"--intensity uint8, but the values span [{lo:g}, {hi:g}] (not whole numbers in 0..255)"
        )
    if stated == "uint16" and (lo < 0.0 or hi > 65535.0 or not np.all(values == np.round(values))):
        raise DataError(
            source, f"--intensity uint16, but the values span [{lo:g}, {hi:g}] (not whole numbers in 0..65535)"
        )
    return stated


def to_unit_by_domain(arr: np.ndarray, domain: str, window: tuple[float, float]) -> np.ndarray:
    """A slice of ``domain`` to float32 [0, 1]: HU (or HU + 1024) through ``window``, grey levels divided
    by their range, [0, 1] kept."""
    if domain == "hu":
        return hu_window(arr, window)
    if domain == "hu+1024":
        return hu_window(np.asarray(arr, dtype=np.float32) - np.float32(1024.0), window)
    scale = {"uint8": 255.0, "uint16": 65535.0, "unit": 1.0}[domain]
    return np.clip(np.asarray(arr, dtype=np.float32) / np.float32(scale), 0.0, 1.0)


def unit_float(arr: np.ndarray, *, source) -> np.ndarray:
    """Float image that must already be in [0, 1] (no rescale); else ``DataError``."""
    arr = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise DataError(source, "image contains NaN or infinite values")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise DataError(source, f"image values [{arr.min():.4g}, {arr.max():.4g}] outside [0, 1]")
    return arr


def binarize_mask(mask: np.ndarray, *, source) -> np.ndarray:
    """A binary mask stored as {0, 1} or {0, 255} → uint8 {0, 1}; other labels are a ``DataError``."""
    mask = np.asarray(mask)
    values = np.unique(mask)
    if np.all(np.isin(values, (0, 1))):
        return mask.astype(np.uint8)
    if np.all(np.isin(values, (0, 255))):
        return (mask == 255).astype(np.uint8)
    bad = [v.item() for v in values if v not in (0, 1, 255)][:5]
    raise DataError(source, f"mask has label {', '.join(map(str, bad))} (allowed: 0, 1 or 0, 255)")


def check_labels(mask: np.ndarray, num_labels: int, *, source) -> np.ndarray:
    """A label map with values in 0..num_labels-1 → uint8; anything else is a ``DataError``."""
    mask = np.asarray(mask)
    values = np.unique(mask)
    bad = [v.item() for v in values if not (float(v).is_integer() and 0 <= v < num_labels)]
    if bad:
        allowed = ", ".join(str(i) for i in range(num_labels))
        raise DataError(source, f"mask has label {', '.join(map(str, bad[:5]))} (allowed: {allowed})")
    return mask.astype(np.uint8)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a 2-D image (bilinear, anti-aliased) and mask (nearest) to ``size``×``size``."""
    import torch
    import torch.nn.functional as F

    if image.shape == (size, size):
        return image.astype(np.float32, copy=False), mask.astype(np.uint8, copy=False)
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    downscale = image.shape[0] > size or image.shape[1] > size
    out = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=downscale)
    msk = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    mout = F.interpolate(msk, size=(size, size), mode="nearest-exact")
    image_out = out[0, 0].clamp_(0.0, 1.0).numpy()
    return image_out, mout[0, 0].round().to(torch.uint8).numpy()
