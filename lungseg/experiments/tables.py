"""What a comparison table is: the spec types and their checks (the machinery, no data).

A :class:`TableSpec` says *what* to run: the dataset (a reader name from
:data:`lungseg.data.readers.READERS` and the input folder **relative to a data root** that the
caller passes, ``--data-root``), the rows (a label, a model name from
:func:`lungseg.models.list_models` and its constructor kwargs, e.g. LG-Net's ablation switches),
the metrics to report, the seeds, the settings of each profile, and the paper's own numbers
(:class:`Published`). The four tables themselves are data and live in
:mod:`lungseg.experiments.specs` (and the papers' numbers in :mod:`lungseg.experiments.published`).

Profiles (:data:`PROFILES`, in report order):

``cpu``
    Shrunk so a whole table fits in minutes on 2 CPU cores (small images, base width 8, a handful
    of epochs). Every shrunk setting is written next to the table in ``docs/results.md``.
``cpu-long``
    A larger budget that still fits about an hour on 2 cores (infection tables only).
``cpu-paper``
    The paper recipe (``train.preset: paper``) end to end at a size the CPU allows: proves the
    recipe runs, not what it scores.
``cpu-nnunet``
    ``cpu``'s size, width, epochs and batch under ``train.preset: nnunet`` (nnU-Net's 2-D recipe,
    issue #25), with as many batches per epoch as ``cpu`` passes over the training split.
``gpu``
    The papers' recipe and sizes where the papers state them. A run may override single settings
    (e.g. fewer epochs to fit a device budget); the override is stored in every run record and
    shown in the report.

Nothing here knows where the repository is: paths (data root, results folder, report) are
arguments of the runner and the report, with defaults chosen by the command line
(:mod:`lungseg.cli.results`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: every profile a table may define, in report order
PROFILES = ("cpu", "cpu-long", "cpu-paper", "cpu-nnunet", "gpu")  # cpu-nnunet: issue #25
#: the profiles every table must define
REQUIRED_PROFILES = ("cpu", "gpu")
#: ``train.preset`` values a profile may ask for (:mod:`lungseg.training`)
PRESETS = ("default", "paper", "nnunet")
#: metrics that have a pooled (summed-confusion) value in ``lungseg.metrics.aggregate``
POOLABLE = ("dice", "iou", "miou", "acc", "sen", "spe")


@dataclass(frozen=True)
class Metric:
    """One reported metric: ``name`` is the key stem of ``lungseg.metrics.aggregate``
    (``<name>_mean`` = mean over test images, ``<name>_pooled`` = from summed confusion counts)."""

    name: str
    label: str
    scale: float = 1.0
    """Multiply before printing (100 → percent)."""
    digits: int = 3
    higher_is_better: bool = True
    unit: str = ""

    def header(self) -> str:
        arrow = "↑" if self.higher_is_better else "↓"
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.label}{unit} {arrow}"


@dataclass(frozen=True)
class Row:
    key: str
    """File-name-safe id of the row (``<results>/<table>/<profile>/<key>-seed<k>.json``)."""
    label: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    published_as: str | None = None
    """Label of the matching row in :attr:`TableSpec.published`, if the paper reports this model."""


@dataclass(frozen=True)
class Profile:
    image_size: int
    base_channels: int
    epochs: int
    batch_size: int = 4
    lr: float = 1e-3
    preset: str = "default"
    """``train.preset`` of every run: ``paper`` = the paper's recipe (the training code applies it
    and decides what it overrides); the profile's own values then describe that recipe."""
    extra_train: dict[str, Any] = field(default_factory=dict)
    """Further ``train`` overrides (e.g. ``loss``, ``scheduler``, the paper preset's size override)."""
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model name, constructor kwargs this profile adds to every row of that model
    (e.g. ``{"lgnet": {"max_tokens": 256}}``); a row's own kwargs win."""
    note: str = ""

    def model_kwargs(self, row: Row) -> dict[str, Any]:
        """The constructor kwargs a run of ``row`` under this profile uses."""
        return {**self.model_overrides.get(row.model, {}), **row.model_kwargs}

    def train_overrides(self) -> dict[str, Any]:
        """The ``train`` section values this profile sets (``preset`` only when not the default, so
        a default-preset run's params are what they were before profiles had presets)."""
        preset = {} if self.preset == "default" else {"preset": self.preset}
        return {
            "base_channels": self.base_channels,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            **preset,
            **self.extra_train,
        }

    def describe(self) -> str:
        """One line: size, width, epochs, batch, lr (and the preset when it is not the default)."""
        preset = "" if self.preset == "default" else f", preset {self.preset}"
        return (
            f"image {self.image_size}², base {self.base_channels}, {self.epochs} epochs, "
            f"batch {self.batch_size}, lr {self.lr:g}{preset}"
        )


@dataclass(frozen=True)
class Published:
    """A paper's table, quoted as printed. ``values[row_label][metric_name]`` in ``units[metric_name]``."""

    source: str
    where: str
    data: str
    """What the paper trained/tested on (it differs from ours: say how)."""
    values: dict[str, dict[str, float]]
    units: dict[str, str]
    """Per metric: how the paper prints it, e.g. ``"%"``, ``"fraction"``, ``"mm"``."""
    caveats: tuple[str, ...] = ()


#: the split of a table without a :class:`DataSplit` of its own: the source's published one
#: (``preprocess.seed`` 0); records made before splits were recorded ran it
PUBLISHED_SPLIT: dict[str, Any] = {"name": "published", "seed": 0}


@dataclass(frozen=True)
class DataSplit:
    """A table's own seeded split of its whole dataset (``preprocess.split: seeded``), instead of the
    source's published one: ``test_fraction`` of all slices, then ``val_fraction`` of the rest."""

    name: str
    test_fraction: float
    val_fraction: float
    seed: int = 0
    source: str = ""
    """Where the proportions come from."""

    def preprocess(self) -> dict[str, Any]:
        """The ``preprocess`` settings that make this split."""
        return {
            "split": "seeded",
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }

    def record(self) -> dict[str, Any]:
        """What a run record stores of it (``data.split``)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "val_fraction": self.val_fraction,
        }


def split_record(spec: TableSpec) -> dict[str, Any]:
    """The ``data.split`` a run of ``spec`` records: its :class:`DataSplit`, or :data:`PUBLISHED_SPLIT`."""
    return spec.split.record() if spec.split is not None else dict(PUBLISHED_SPLIT)


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    dataset: str
    """Reader name (``lungseg preprocess --dataset``)."""
    input_subdir: str
    """Raw input folder relative to the data root."""
    rows: tuple[Row, ...]
    metrics: tuple[Metric, ...]
    profiles: dict[str, Profile]
    seeds: tuple[int, ...] = (0, 1, 2)
    published: Published | None = None
    pooled_beside: tuple[str, ...] = ()
    """Metrics whose *pooled* value (dataset-level, from summed confusion counts) the main table shows
    beside the per-image mean; the paper's columns of these metrics are compared with the pooled
    value (the paper computes them from one confusion matrix over its test set)."""
    notes: tuple[str, ...] = ()
    split: DataSplit | None = None
    """The table's own seeded split of the data (None: the source's published split)."""

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"table {self.name!r} has no row {key!r} (rows: {', '.join(r.key for r in self.rows)})")

    def input_dir(self, data_root: str | Path) -> Path:
        return Path(data_root) / self.input_subdir


def table_profiles(spec: TableSpec) -> list[str]:
    """The profiles ``spec`` defines, in :data:`PROFILES` (report) order."""
    return [p for p in PROFILES if p in spec.profiles]


def slug(text: str) -> str:
    """File-name-safe form of ``text`` (lower case, ``[a-z0-9_-]``)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9_-]+", "-", text.lower())).strip("-")


def validate_spec(spec: TableSpec) -> list[str]:
    """Problems with ``spec`` against the installed model zoo and readers (empty = valid)."""
    from lungseg.models import list_models

    models = list_models()
    return [
        *_table_problems(spec),
        *(p for r in spec.rows for p in _row_problems(spec, r, models)),
        *_profile_problems(spec, models),
        *_metric_problems(spec),
    ]


def _table_problems(spec: TableSpec) -> list[str]:
    """The reader, the seeds (at least 3, distinct) and the row keys (distinct)."""
    from lungseg.data.readers import READERS

    problems = []
    if spec.dataset not in READERS:
        problems.append(f"{spec.name}: unknown reader {spec.dataset!r}")
    if len(spec.seeds) < 3 or len(set(spec.seeds)) != len(spec.seeds):
        problems.append(f"{spec.name}: needs at least 3 distinct seeds, has {spec.seeds}")
    keys = [r.key for r in spec.rows]
    if len(set(keys)) != len(keys):
        problems.append(f"{spec.name}: duplicate row keys {keys}")
    return problems


def _row_problems(spec: TableSpec, r: Row, models: list[str]) -> list[str]:
    """Row ``r``: a file-name-safe key, a known model, constructor kwargs it has (the row's and every
    profile's), a ``published_as`` the published table has."""
    import inspect

    from lungseg.models import model_class

    problems = []
    if slug(r.key) != r.key:
        problems.append(f"{spec.name}: row key {r.key!r} is not file-name safe")
    if r.model not in models:
        return [*problems, f"{spec.name}/{r.key}: model {r.model!r} not in list_models() {models}"]
    params = inspect.signature(model_class(r.model).__init__).parameters
    kws = set(r.model_kwargs)
    for prof in spec.profiles.values():
        kws |= set(prof.model_kwargs(r))
    for kw in sorted(kws):
        if kw not in params:
            problems.append(f"{spec.name}/{r.key}: {r.model} has no constructor argument {kw!r}")
    if r.published_as is not None and (spec.published is None or r.published_as not in spec.published.values):
        problems.append(f"{spec.name}/{r.key}: published_as {r.published_as!r} not in the published table")
    return problems


def _profile_problems(spec: TableSpec, models: list[str]) -> list[str]:
    """The required profiles, then each profile: a known name, a known preset, an image size every
    row's model divides."""
    from lungseg.models import model_class

    problems = [f"{spec.name}: no {pname!r} profile" for pname in REQUIRED_PROFILES if pname not in spec.profiles]
    for pname, prof in spec.profiles.items():
        if pname not in PROFILES:
            problems.append(f"{spec.name}: unknown profile {pname!r} (known: {', '.join(PROFILES)})")
            continue
        if prof.preset not in PRESETS:
            problems.append(f"{spec.name}/{pname}: unknown preset {prof.preset!r} (known: {', '.join(PRESETS)})")
        for r in spec.rows:
            div = getattr(model_class(r.model), "size_divisor", 16) if r.model in models else None
            if div is not None and prof.image_size % div:
                problems.append(
                    f"{spec.name}/{pname}: image_size {prof.image_size} not a multiple of "
                    f"{r.model}'s size_divisor {div}"
                )
    return problems


def _metric_problems(spec: TableSpec) -> list[str]:
    """``pooled_beside`` names poolable metrics of the table; the published table's metrics are the
    table's and each has a unit."""
    problems = []
    names = {m.name for m in spec.metrics}
    for name in spec.pooled_beside:
        if name not in names or name not in POOLABLE:
            problems.append(f"{spec.name}: pooled_beside {name!r} is not one of the table's poolable metrics")
    if spec.published is not None:
        for label, vals in spec.published.values.items():
            extra = set(vals) - names
            if extra:
                problems.append(f"{spec.name}: published row {label!r} has metrics {sorted(extra)} we do not report")
            missing_units = set(vals) - set(spec.published.units)
            if missing_units:
                problems.append(f"{spec.name}: published metrics {sorted(missing_units)} have no unit")
    return problems
