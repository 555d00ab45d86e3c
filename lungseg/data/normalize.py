"""nnU-Net's CT intensity normalisation: clip to the training foreground's 0.5–99.5 percentiles, then
z-score with the training foreground's mean and std.

nnU-Net v2
    *Statistics* (``nnunetv2/experiment_planning/dataset_fingerprint/fingerprint_extractor.py``,
    ``DatasetFingerprintExtractor.collect_foreground_intensities`` and ``run``): the image values
    where the segmentation is foreground (``segmentation > 0``: every label but background) are
    collected over the training cases, and ``np.percentile(v, (0.5, 50, 99.5))``, ``np.mean(v)``,
    ``np.std(v)`` (population std) of the pooled values are stored in the dataset fingerprint as
    ``foreground_intensity_properties_per_channel`` (``percentile_00_5``, ``percentile_99_5``,
    ``mean``, ``std``, …). nnU-Net does not pool every voxel: from each case it draws
    ``int(10e7 // n_cases)`` foreground values *with replacement*
    (``np.random.RandomState(1234).choice``), so every case weighs the same.
    *Application* (``nnunetv2/preprocessing/normalization/default_normalization_schemes.py``,
    ``CTNormalization.run``): ``clip(image, percentile_00_5, percentile_99_5)``, minus ``mean``,
    divided by ``max(std, 1e-8)``, in float32.

Here
    :func:`compute_ct_stats` pools every foreground pixel of the training slices (each pixel weighs the
    same: exact, no sampling — the default), or, with ``samples_per_case``, follows nnU-Net's
    per-case sampling exactly (each slice a case). The result, :class:`CTNormStats`, is a small
    JSON-able record (:meth:`CTNormStats.to_dict` / :meth:`CTNormStats.from_dict`) computed once over
    the training split at preprocessing and stored with the data and the model, so that training,
    evaluation and ``predict`` apply the same numbers (:func:`apply_ct_norm`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lungseg.errors import DataError

SCHEME = "ct"
PERCENTILES = (0.5, 99.5)
#: nnU-Net's ``num_foreground_voxels_for_intensitystats`` (the total sample over all cases)
NNUNET_TOTAL_SAMPLES = int(10e7)
NNUNET_SAMPLING_SEED = 1234
_FIELDS = ("mean", "std", "percentile_00_5", "percentile_99_5")


@dataclass(frozen=True)
class CTNormStats:
    """The four numbers ``CTNormalization`` uses, plus how many foreground values gave them."""

    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float
    n_foreground: int
    scheme: str = SCHEME

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> CTNormStats:
        """The record :meth:`to_dict` wrote; ``DataError`` (naming ``source``) when it is not one."""
        if not isinstance(d, dict) or d.get("scheme") != SCHEME:
            raise DataError(source, f"intensity normalisation: expected scheme {SCHEME!r}, got {d!r:.80}")
        missing = [k for k in (*_FIELDS, "n_foreground") if k not in d]
        if missing:
            raise DataError(source, f"intensity normalisation: missing {', '.join(missing)}")
        vals = {k: d[k] for k in _FIELDS}
        bad = [k for k, v in vals.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad or vals["std"] < 0 or vals["percentile_00_5"] > vals["percentile_99_5"]:
            raise DataError(source, f"intensity normalisation: bad values {vals}")
        return cls(**{k: float(v) for k, v in vals.items()}, n_foreground=int(d["n_foreground"]))


def _foreground_values(images: np.ndarray, masks: np.ndarray, samples_per_case: int | None, seed: int) -> np.ndarray:
    if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
        raise DataError(None, f"intensity statistics: images {images.shape} and masks {masks.shape} differ")
    parts = []
    for img, m in zip(images, masks, strict=True):
        v = np.asarray(img)[np.asarray(m) > 0]  # in the images' dtype, as nnU-Net (float32 for float32)
        if samples_per_case is not None and len(v):
            v = np.random.RandomState(seed).choice(v, samples_per_case, replace=True)
        parts.append(v)
    return np.concatenate(parts) if parts else np.zeros(0)


def compute_ct_stats(
    images: np.ndarray, masks: np.ndarray, *, samples_per_case: int | None = None, seed: int = NNUNET_SAMPLING_SEED
) -> CTNormStats:
    """The training foreground's statistics: ``images`` ``(N, H, W)`` (or ``(N, 1, H, W)``) in the
    units the model will see normalised (HU for CT), ``masks`` ``(N, H, W)`` labels (> 0 is foreground).

    ``samples_per_case=None`` pools every foreground pixel; an integer draws that many from each slice
    with replacement, each slice from its own ``RandomState(seed)``, as nnU-Net's fingerprint does
    (its default is ``int(10e7 // n_cases)``: :data:`NNUNET_TOTAL_SAMPLES`). ``DataError`` when the
    slices hold no foreground at all."""
    images = np.asarray(images)
    images = images[:, 0] if images.ndim == 4 else images
    v = _foreground_values(images, np.asarray(masks), samples_per_case, seed)
    if v.size == 0:
        raise DataError(None, "intensity statistics: the training slices hold no foreground pixel")
    lo, hi = np.percentile(v, PERCENTILES)
    return CTNormStats(float(np.mean(v)), float(np.std(v)), float(lo), float(hi), int(v.size))


def apply_ct_norm(image: np.ndarray, stats: CTNormStats) -> np.ndarray:
    """``CTNormalization.run``: float32 copy of ``image`` clipped to the percentiles, z-scored."""
    out = np.asarray(image, dtype=np.float32).copy()
    np.clip(out, stats.percentile_00_5, stats.percentile_99_5, out=out)
    out -= np.float32(stats.mean)
    out /= np.float32(max(stats.std, 1e-8))
    return out


def apply_ct_norm_torch(image, stats: CTNormStats):
    """:func:`apply_ct_norm` for a float torch tensor on any device (same dtype out)."""
    return (image.clamp(stats.percentile_00_5, stats.percentile_99_5) - stats.mean) / max(stats.std, 1e-8)


#: ``preprocess.normalization`` values (``window``: the images as the readers give them, [0, 1])
NORMALIZATIONS = ("window", "ct_zscore")


def preprocess_record(images: np.ndarray, masks: np.ndarray, train: np.ndarray, normalization: str) -> dict[str, Any]:
    """What ``preprocess.normalization`` adds to ``meta.json``'s ``preprocess`` record: nothing for
    ``window`` (so its meta.json stays as before), for ``ct_zscore`` ``{"normalization": "ct_zscore",
    "ct_norm": CTNormStats}`` from the foreground of the training slices (``train``: one bool per
    slice) — in the [0, 1] units the images are stored in (the HU window is linear, see docs/nnunet.md)."""
    if normalization == "window":
        return {}
    if normalization not in NORMALIZATIONS:
        raise DataError(
            None, f"preprocess.normalization: unknown {normalization!r} (known: {', '.join(NORMALIZATIONS)})"
        )
    stats = compute_ct_stats(images[train], masks[train])
    return {"normalization": normalization, "ct_norm": stats.to_dict()}


def input_norm(preprocess: dict[str, Any] | None, source: str | None = None) -> dict[str, Any] | None:
    """The ``input_norm`` record a model trained on data with this ``preprocess`` record (meta.json's,
    or a checkpoint's) carries in its identity (:mod:`lungseg.models.input_norm`): None for ``window``."""
    preprocess = preprocess or {}
    if preprocess.get("normalization", "window") == "window":
        return None
    return CTNormStats.from_dict(preprocess.get("ct_norm"), source).to_dict()
