"""Train / val / test assignment.

Rules, in order:

1. A published test set is kept as it is (MedSeg JCS ``test.txt``, Inf-Net ``TestingSet``, Kaggle
   ``x_test``); the published training pool is split into train / val only — unless
   ``ignore_published`` (``preprocess.split: seeded``): then every unit is split as in rule 2, the
   published assignment ignored (a paper's own proportions on a set published with another split,
   e.g. PR-Net's 211 / 26 / 27 of 264 on the Kaggle lung fields).
2. Without a published split, ``test_fraction`` of the units go to test, then ``val_fraction`` of the
   remaining units to val.
3. A *unit* is a patient when every slice has a patient id (so no patient is in two splits), else a
   slice; slice-level splitting is reported as a warning in ``meta.json``.

Counts are ``max(1, floor(fraction · units + 0.5))`` so every split is non-empty; too few units for
that is a ``DataError``. Shuffling uses ``numpy.random.default_rng(seed)`` over the sorted unit
names, so the same input and seed give the same split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lungseg.errors import ConfigError, DataError


@dataclass
class SplitPlan:
    splits: list[str]
    level: str
    """``patient`` or ``slice``."""
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def _n_take(fraction: float, n_units: int) -> int:
    return max(1, math.floor(fraction * n_units + 0.5))


def _carve(units: list[str], fraction: float, rng: np.random.Generator, what: str, where) -> tuple[set, set]:
    """Split ``units`` into (rest, taken) with ``fraction`` of them taken; both non-empty."""
    if len(units) < 2:
        raise DataError(where, f"too few {what} ({len(units)}) to hold out a non-empty split and keep one for training")
    order = rng.permutation(len(units))
    k = min(_n_take(fraction, len(units)), len(units) - 1)
    taken = {units[i] for i in order[:k]}
    return set(units) - taken, taken


def assign_splits(
    hints: Sequence[str | None],
    patient_ids: Sequence[str | None],
    slice_ids: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where=None,
    ignore_published: bool = False,
) -> SplitPlan:
    """Split names (``train``/``val``/``test``) for every slice; see the module docstring."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ConfigError(f"preprocess.{name}: must be between 0 and 1 (exclusive), got {frac}")
    n = len(hints)
    if n == 0:
        raise DataError(where, "the dataset has no slices")
    bad = sorted({h for h in hints if h not in ("test", "pool", None)})
    if bad:
        raise ValueError(f"reader produced unknown split hints {bad}")  # programming error
    published = any(h is not None for h in hints)
    if published and any(h is None for h in hints):
        raise ValueError("reader mixed published and unassigned slices")  # programming error
    published = published and not ignore_published
    patient_level = all(p not in (None, "") for p in patient_ids)
    units = list(patient_ids) if patient_level else list(slice_ids)
    what = "patients" if patient_level else "slices"
    warnings = (
        []
        if patient_level
        else ["slice-level split: no patient ids, so slices of one patient may fall in more than one split"]
    )
    rng = np.random.default_rng(seed)
    split_of_unit: dict[str, str] = {}
    if published:
        test_units = sorted({u for u, h in zip(units, hints) if h == "test"})
        pool_units = sorted({u for u, h in zip(units, hints) if h == "pool"})
        both = set(test_units) & set(pool_units)
        if both:
            raise DataError(
                where, f"patient(s) {', '.join(sorted(both)[:5])} are in both the published train and test sets"
            )
        if not test_units:
            raise DataError(where, "the published test set is empty")
        rest = pool_units
        for u in test_units:
            split_of_unit[u] = "test"
    else:
        rest_set, test_set = _carve(sorted(set(units)), test_fraction, rng, what, where)
        for u in test_set:
            split_of_unit[u] = "test"
        rest = sorted(rest_set)
    train_set, val_set = _carve(rest, val_fraction, rng, what, where)
    for u in train_set:
        split_of_unit[u] = "train"
    for u in val_set:
        split_of_unit[u] = "val"
    splits = [split_of_unit[u] for u in units]
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    return SplitPlan(splits=splits, level="patient" if patient_level else "slice", counts=counts, warnings=warnings)
