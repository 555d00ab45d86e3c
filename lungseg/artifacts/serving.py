"""Serving settings: everything that changes what a served model outputs, as ONE frozen value.

A model's labels depend on more than its weights: the decision **threshold** (``evaluate.threshold``),
the **preprocessing** its input went through (``image_size``, ``hu_window``, ``dataset`` — what training
recorded as ``preprocess``), and — placeholders until ``lungseg predict`` implements them — the
**post-processing** of the labels and the **test-time augmentation** of the probabilities.
:class:`ServingSettings` holds them all; :meth:`ServingSettings.fingerprint` is the sha256 of their
canonical JSON.

The contract (issue #20, "the served model behaves exactly as it was evaluated"):

* ``lungseg evaluate`` builds the settings it evaluates with and records them and their fingerprint
  (``metrics.json`` ``serving`` / ``serving_fingerprint``, the evaluation's MLflow run);
* ``lungseg register`` logs the model it registers from the training run's weights **with those very
  settings** in its pyfunc metadata (``metadata.lungseg.serving``), so a registered version cannot
  serve with other settings than the ones it was evaluated — and promoted — with;
* whatever serves (the pyfunc's ``output="labels"``, ``lungseg predict``) turns probabilities into
  labels through :func:`apply`, the one place the threshold, post-processing and TTA plug in.

Vocabulary (kept tiny and explicit; anything else is a ``ValueError`` naming the allowed values):

* ``postprocess``: ``"none"`` | ``"largest_components+fill_holes"`` — per slice, the connected
  components (8-connectivity) of at least :data:`MIN_COMPONENT_SHARE` of the largest one are kept
  (one or two lungs; specks dropped) and their holes filled (lungmask's post-processing, in 2-D:
  evaluation scores slices). Binary models only. ``evaluate.postprocess: auto`` resolves to it for a
  lung-field model (:func:`resolve_postprocess`), to ``none`` otherwise.
* ``tta``: ``"none"`` | ``"flips"`` | ``"mirror"`` — ``flips``: the probabilities averaged over the four
  mirrorings; ``mirror``: the **logits** averaged over them, then sigmoid/softmax (nnU-Net's
  ``_internal_maybe_mirror_and_predict``, issue #25) (:func:`lungseg.artifacts.core.forward_probabilities`;
  it needs the network, so it acts before :func:`apply`). ``evaluate.tta: auto`` resolves to
  ``mirror`` for a model trained with ``train.preset: nnunet``, to ``none`` otherwise (:func:`resolve_tta`).
* ``precision``: ``"auto"`` | ``"fp32"`` | ``"bf16"`` — the arithmetic of the network's forward pass
  (:func:`lungseg.artifacts.core.resolve_precision`). ``auto`` is what settings without the field
  mean and is served in fp32 on every device — the arithmetic evaluation scores it in (on the CPU),
  so the served labels are the scored ones (#20; before, CUDA served ``auto`` in bf16 autocast, which
  no evaluation had scored). It is left out of :meth:`ServingSettings.to_dict` and the fingerprint, so
  every fingerprint recorded before the field existed is unchanged. ``bf16``: bf16 autocast on either
  device (a CPU without bf16 support serves fp32 with a note:
  :func:`lungseg.artifacts.core.cpu_supports_bf16`).

Evaluation scores the labels :func:`apply` makes, the portable model and ``lungseg predict`` serve the
labels :func:`apply` makes: one function, so what is served is what was measured.

This module imports numpy (and scipy for the post-processing, an MLflow dependency): the portable
MLflow model carries a copy of it (see :data:`lungseg.artifacts.pyfunc.CODE_FILES`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

POSTPROCESS = ("none", "largest_components+fill_holes")
TTA = ("none", "flips", "mirror")
#: the presets whose models ``evaluate.tta: auto`` serves with ``mirror`` (nnU-Net's inference, #25)
MIRROR_PRESETS = frozenset({"nnunet"})
#: the forward pass's arithmetic; ``auto`` = fp32 on every device (what evaluation scores it in, #20)
PRECISION = ("auto", "fp32", "bf16")
#: components smaller than this share of the slice's largest one are dropped by the post-processing
MIN_COMPONENT_SHARE = 0.1
#: foreground label names of a lung-field model (``postprocess: auto`` turns the post-processing on)
LUNG_LABELS = frozenset({"lung", "lungs", "lung field", "lung-field"})


def is_lung_field(label_names: list[str] | None) -> bool:
    """A lung-field model: its only foreground label is a lung (:data:`LUNG_LABELS`)."""
    fg = [str(n).lower() for n in (label_names or [])[1:]]
    return len(fg) == 1 and fg[0] in LUNG_LABELS


def resolve_postprocess(setting: str, label_names: list[str] | None) -> str:
    """``auto`` → ``largest_components+fill_holes`` for a lung-field model (:func:`is_lung_field`),
    ``none`` for any other; an explicit value is returned as it is."""
    if setting != "auto":
        return setting
    return "largest_components+fill_holes" if is_lung_field(label_names) else "none"


def trained_preset(ckpt: dict[str, Any] | None) -> str:
    """The ``train.preset`` a checkpoint's model was trained with (its recorded effective ``config``);
    ``default`` when it records none (trained before presets were recorded)."""
    config = (ckpt or {}).get("config")
    preset = config.get("preset") if isinstance(config, dict) else None
    return str(preset) if preset else "default"


def resolve_tta(setting: str, preset: str | None) -> str:
    """``auto`` → ``mirror`` for a model trained with ``train.preset: nnunet`` (:data:`MIRROR_PRESETS`:
    nnU-Net's inference mirrors and averages the logits), ``none`` for any other; an explicit value is
    returned as it is (checked by :class:`ServingSettings`)."""
    if setting != "auto":
        return setting
    return "mirror" if preset in MIRROR_PRESETS else "none"


#: the preprocessing keys that change a served model's input (from the model's recorded ``preprocess``)
PREPROCESS_KEYS = ("image_size", "hu_window", "dataset")


@dataclass(frozen=True)
class ServingSettings:
    """What a served model's output depends on besides its weights (see the module docstring)."""

    threshold: float = 0.5
    image_size: int | None = None
    hu_window: tuple[float, float] | None = None
    dataset: str | None = None
    postprocess: str = "none"
    tta: str = "none"
    precision: str = "auto"
    """Left out of :meth:`to_dict` (and so of the fingerprint) while ``auto``: settings recorded before
    the field existed read back, and fingerprint, exactly as they did."""

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"serving threshold must be a probability in [0, 1], got {t!r}")
        object.__setattr__(self, "threshold", float(t))
        if self.postprocess not in POSTPROCESS:
            raise ValueError(f"serving postprocess must be one of {', '.join(POSTPROCESS)}, got {self.postprocess!r}")
        if self.tta not in TTA:
            raise ValueError(f"serving tta must be one of {', '.join(TTA)}, got {self.tta!r}")
        if self.precision not in PRECISION:
            raise ValueError(f"serving precision must be one of {', '.join(PRECISION)}, got {self.precision!r}")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", int(self.image_size))
        if self.hu_window is not None:
            lo, hi = (float(v) for v in self.hu_window)
            object.__setattr__(self, "hu_window", (lo, hi))

    @classmethod
    def for_model(
        cls,
        preprocess: dict[str, Any] | None,
        threshold: float,
        *,
        postprocess: str = "none",
        tta: str = "none",
        precision: str = "auto",
    ) -> ServingSettings:
        """The settings of a model trained with ``preprocess`` (its checkpoint's record) served at ``threshold``."""
        pre = dict(preprocess or {})
        return cls(
            threshold=threshold,
            image_size=pre.get("image_size"),
            hu_window=pre.get("hu_window"),
            dataset=pre.get("dataset"),
            postprocess=postprocess,
            tta=tta,
            precision=precision,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hu_window"] = None if self.hu_window is None else list(self.hu_window)
        if self.precision == "auto":  # the behaviour before the field: recorded (and fingerprinted) as before
            del d["precision"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingSettings:
        """The inverse of :meth:`to_dict`; ``ValueError`` on an unknown key or a value outside the vocabulary."""
        if not isinstance(data, dict):
            raise ValueError(f"serving settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown serving setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of :meth:`canonical_json`: equal iff every setting is equal."""
        return "sha256:" + hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def differences(self, other: ServingSettings) -> list[str]:
        """``key: a vs b`` for each setting that differs."""
        a = {**self.to_dict(), "precision": self.precision}
        b = {**other.to_dict(), "precision": other.precision}
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]

    def describe(self) -> str:
        return (
            f"threshold {self.threshold:g}, image_size {self.image_size}, hu_window {self.hu_window}, "
            f"dataset {self.dataset}, postprocess {self.postprocess}, tta {self.tta}"
            + ("" if self.precision == "auto" else f", precision {self.precision}")
        )


def apply(probabilities: np.ndarray, settings: ServingSettings) -> np.ndarray:
    """Labels uint8 ``(N, H, W)`` from probabilities — ``(N, H, W)`` foreground (binary: ``p ≥ threshold``)
    or ``(N, C, H, W)`` classes (arg-max) — then the post-processing of ``settings``.

    TTA acts on the probabilities before this step (it needs the network:
    :func:`lungseg.artifacts.core.forward_probabilities`)."""
    p = np.asarray(probabilities)
    if p.ndim == 4 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 3:
        labels = (p >= settings.threshold).astype(np.uint8)
    elif p.ndim == 4:
        labels = p.argmax(axis=1).astype(np.uint8)
    else:
        raise ValueError(f"expected probabilities (N, H, W) or (N, C, H, W), got shape {p.shape}")
    if p.ndim == 4 and settings.postprocess != "none":
        raise ValueError(f"serving postprocess {settings.postprocess!r} is for binary models, not {p.shape[1]} classes")
    return postprocess_labels(labels, settings)


def postprocess_labels(labels: np.ndarray, settings: ServingSettings) -> np.ndarray:
    """The post-processing step of :func:`apply` on labels ``(N, H, W)`` already thresholded by its rule
    (``lungseg predict`` thresholds on the device, then calls this)."""
    if settings.postprocess == "none" or not len(labels):
        return labels
    return np.stack([keep_large_components(s) for s in labels])


def keep_large_components(mask: np.ndarray) -> np.ndarray:
    """One binary slice: its 8-connected components of at least :data:`MIN_COMPONENT_SHARE` of the
    largest one, holes filled (uint8)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask.astype(np.uint8)
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.flatnonzero(sizes >= MIN_COMPONENT_SHARE * sizes.max()) + 1
    return ndimage.binary_fill_holes(np.isin(lab, keep)).astype(np.uint8)


__all__ = [
    "MIN_COMPONENT_SHARE",
    "POSTPROCESS",
    "PRECISION",
    "PREPROCESS_KEYS",
    "MIRROR_PRESETS",
    "TTA",
    "ServingSettings",
    "apply",
    "is_lung_field",
    "keep_large_components",
    "postprocess_labels",
    "resolve_postprocess",
    "resolve_tta",
    "trained_preset",
]
