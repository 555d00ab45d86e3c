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
``postprocess``: ``"none"`` | ``"largest_components+fill_holes"``; ``tta``: ``"none"`` | ``"flips"``.
Only ``"none"`` is implemented today: :func:`apply` refuses the others instead of silently skipping
them (another change implements them for predict, then evaluation and serving get them at once).

This module imports numpy only: the portable MLflow model carries a copy of it (see
:data:`lungseg.artifacts.pyfunc.CODE_FILES`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

POSTPROCESS = ("none", "largest_components+fill_holes")
TTA = ("none", "flips")
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

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"serving threshold must be a probability in [0, 1], got {t!r}")
        object.__setattr__(self, "threshold", float(t))
        if self.postprocess not in POSTPROCESS:
            raise ValueError(f"serving postprocess must be one of {', '.join(POSTPROCESS)}, got {self.postprocess!r}")
        if self.tta not in TTA:
            raise ValueError(f"serving tta must be one of {', '.join(TTA)}, got {self.tta!r}")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", int(self.image_size))
        if self.hu_window is not None:
            lo, hi = (float(v) for v in self.hu_window)
            object.__setattr__(self, "hu_window", (lo, hi))

    @classmethod
    def for_model(
        cls, preprocess: dict[str, Any] | None, threshold: float, *, postprocess: str = "none", tta: str = "none"
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
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hu_window"] = None if self.hu_window is None else list(self.hu_window)
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
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]

    def describe(self) -> str:
        return (
            f"threshold {self.threshold:g}, image_size {self.image_size}, hu_window {self.hu_window}, "
            f"dataset {self.dataset}, postprocess {self.postprocess}, tta {self.tta}"
        )


def apply(probabilities: np.ndarray, settings: ServingSettings) -> np.ndarray:
    """Labels uint8 ``(N, H, W)`` from probabilities — ``(N, H, W)`` foreground (binary: ``p ≥ threshold``)
    or ``(N, C, H, W)`` classes (arg-max) — then the post-processing of ``settings``.

    TTA acts on the probabilities before this step (it needs the network), so a ``tta`` other than
    ``"none"`` and a ``postprocess`` other than ``"none"`` are refused here until implemented."""
    if settings.tta != "none":
        raise NotImplementedError(f"serving tta {settings.tta!r} is not implemented yet (only 'none')")
    if settings.postprocess != "none":
        raise NotImplementedError(f"serving postprocess {settings.postprocess!r} is not implemented yet (only 'none')")
    p = np.asarray(probabilities)
    if p.ndim == 3:
        return (p >= settings.threshold).astype(np.uint8)
    if p.ndim == 4:
        if p.shape[1] == 1:
            return (p[:, 0] >= settings.threshold).astype(np.uint8)
        return p.argmax(axis=1).astype(np.uint8)
    raise ValueError(f"expected probabilities (N, H, W) or (N, C, H, W), got shape {p.shape}")


__all__ = ["POSTPROCESS", "PREPROCESS_KEYS", "TTA", "ServingSettings", "apply"]
