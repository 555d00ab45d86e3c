"""The reader contract: what every reader returns (:class:`RawDataset` of :class:`RawSlice`) and the
registry that makes a reader a ``--dataset`` name (:data:`READERS`, :func:`register_reader`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.errors import DataError

BINARY_LABELS = ["background", "foreground"]


@dataclass
class RawSlice:
    """One 2-D slice at its original size, intensity already in [0, 1]."""

    id: str
    source: str
    """File(s) it came from, relative to the input folder (``volume.nii.gz#z=12`` for volumes)."""
    image: np.ndarray
    mask: np.ndarray
    patient_id: str | None = None
    split: str | None = None
    """``"test"`` (published test set), ``"pool"`` (published training pool) or None (no protocol)."""
    spacing: tuple[float, float] | None = None
    """(row, col) pixel spacing in mm at the original size, when the source records it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Dataset-specific manifest columns (e.g. ``jcs_list``)."""


@dataclass
class RawDataset:
    slices: Iterable[RawSlice]
    num_labels: int = 2
    label_names: list[str] = field(default_factory=lambda: list(BINARY_LABELS))
    split_protocol: str = ""
    warnings: list[str] = field(default_factory=list)


Reader = Callable[[Path, Any], RawDataset]


@dataclass(frozen=True)
class ReaderInfo:
    name: str
    func: Reader
    description: str


READERS: dict[str, ReaderInfo] = {}


def register_reader(name: str, description: str) -> Callable[[Reader], Reader]:
    """Decorator: make ``func`` available as ``lungseg preprocess --dataset NAME``."""

    def deco(func: Reader) -> Reader:
        READERS[name] = ReaderInfo(name, func, description)
        return func

    return deco


def get_reader(name: str) -> ReaderInfo:
    try:
        return READERS[name]
    except KeyError:
        raise DataError(None, f"unknown dataset {name!r} (valid: {', '.join(sorted(READERS))})") from None
