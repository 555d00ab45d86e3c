"""Typed run records: one JSON file per (table, profile, row, seed), read and written through
:class:`RunRecord`.

The runner (:mod:`lungseg.experiments.runner`) builds a :class:`RunRecord` and writes
``RunRecord.to_dict()``; the report (:mod:`lungseg.experiments.report`) reads them back with
:func:`load_records`. ``RunRecord.from_dict(d).to_dict() == d`` for every committed record (tested),
so the schema below *is* the file format:

``record_version, table, profile, row, label, model, model_kwargs, seed``
    which cell this is;
``identity`` (record_version 2)
    the fully resolved model (every constructor argument), training settings, loss and preset with
    its deviations — or, for a record made before they were stored, ``{"status": "unrecorded",
    "note": …}`` (:mod:`lungseg.experiments.identity`; absent only in files no command has marked);
``settings`` (:class:`Settings`)
    what must agree between the records of one cell (the effective profile + model);
``overrides``
    the command-line overrides of the profile;
``params``
    the full :class:`lungseg.config.Params` of the run, as a dict;
``metrics``
    the evaluation's ``metrics.json`` (``<m>_mean`` over test images, ``<m>_pooled`` from summed
    confusion counts, …) — read with :meth:`RunRecord.metric`;
``per_image``
    the rows of ``per_image.csv`` (incl. the confusion counts ``tp, fp, tn, fn``);
``train_metrics``, ``mlflow``
    the training's ``train_metrics.json`` and ``mlflow_run.json``, verbatim;
``source_resolution`` (optional)
    with ``--score-at-source``, the same model scored against the masks at their source size;
``wall_time_s`` (:class:`WallTime`), ``started_at``, ``finished_at``, ``device`` (:class:`Device`),
``git`` (:class:`GitInfo`), ``data`` (:class:`DataProvenance`), ``command``, ``host``.

Each part keeps keys it does not know in ``extra`` (written back unchanged), so a record of a newer
or older runner still round-trips. Import-light: no numpy, no torch.

No path of the machine that ran it: records are committed, so :func:`portable_record` writes the
tracking store (``mlflow.tracking_uri``) and the paths of ``command`` relative to the repository the
record lies in — ``sqlite:///.results-work/mlflow.db``, ``--data-root ../shared/data`` (a folder beside
the repository) — and a path anywhere else as :data:`ELSEWHERE` + its last component.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

RECORD_VERSION = 2

P = TypeVar("P", bound="_Part")


@dataclass(frozen=True, kw_only=True)
class _Part:
    """A JSON object with typed known keys; unknown keys are kept verbatim in :attr:`extra`."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    """Keys left out of :meth:`to_dict` when their value is None (they are absent in some records)."""
    NESTED: ClassVar[dict[str, type[_Part]]] = {}
    """Keys whose value is itself a part."""
    LOCAL: ClassVar[frozenset[str]] = frozenset()
    """Fields that are not part of the file (e.g. where it was read from)."""

    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra" and f.name not in cls.LOCAL]

    @classmethod
    def from_dict(cls: type[P], data: Mapping[str, Any] | None) -> P:
        data = dict(data or {})
        keys = cls._keys()
        kwargs: dict[str, Any] = {}
        for key in keys:
            if key in data:
                value = data[key]
                part = cls.NESTED.get(key)
                kwargs[key] = part.from_dict(value) if part is not None and isinstance(value, Mapping) else value
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in keys})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._keys():
            value = getattr(self, key)
            if value is None and key in self.OPTIONAL:
                continue
            out[key] = value.to_dict() if isinstance(value, _Part) else value
        out.update(self.extra)
        return out


@dataclass(frozen=True, kw_only=True)
class Settings(_Part):
    """The effective profile of one cell and its model: two records are averaged together only when
    their settings are equal."""

    OPTIONAL = frozenset({"preset"})

    image_size: int | None = None
    base_channels: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    extra_train: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    """``train.preset`` when it is not the default (absent in records of default-preset runs)."""

    def without_model(self) -> Settings:
        """The settings shared by every row of a profile (model and its kwargs dropped)."""
        return dataclasses.replace(self, model=None, model_kwargs={})

    def describe(self) -> str:
        """``image 64², base width 8, 20 epochs, batch 4, lr 0.001[, preset paper][, {extra}]``."""
        lr = f"{self.lr:g}" if isinstance(self.lr, (int, float)) else str(self.lr)
        text = (
            f"image {self.image_size}², base width {self.base_channels}, {self.epochs} epochs, "
            f"batch {self.batch_size}, lr {lr}"
        )
        if self.preset:
            text += f", preset {self.preset}"
        if self.extra_train:
            text += f", {self.extra_train}"
        return text


@dataclass(frozen=True, kw_only=True)
class Device(_Part):
    OPTIONAL = frozenset({"cuda", "cpu_threads", "cpu_count"})

    type: str | None = None
    """``cpu`` or ``cuda``."""
    name: str | None = None
    torch: str | None = None
    python: str | None = None
    platform: str | None = None
    cuda: str | None = None
    cpu_threads: int | None = None
    cpu_count: int | None = None

    def describe(self) -> str:
        """``AMD EPYC (cpu, 1 torch thread(s) of 2 cores, torch 2.13.0+cpu)``."""
        threads = f", {self.cpu_threads} torch thread(s) of {self.cpu_count} cores" if self.type == "cpu" else ""
        return f"{self.name} ({self.type}{threads}, torch {self.torch})"


@dataclass(frozen=True, kw_only=True)
class GitInfo(_Part):
    OPTIONAL = frozenset({"taken"})

    commit: str | None = None
    dirty: bool | None = None
    """Whether ``lungseg/`` had uncommitted changes (None: unknown)."""
    source: str | None = None
    """``git``, ``LUNGSEG_GIT_COMMIT`` or ``unavailable``."""
    taken: str | None = None

    def short(self) -> str:
        """The first 10 hex digits (``unknown`` without a commit), `` (lungseg/ dirty)`` when dirty."""
        return (self.commit[:10] if self.commit else "unknown") + (" (lungseg/ dirty)" if self.dirty else "")


@dataclass(frozen=True, kw_only=True)
class DataProvenance(_Part):
    OPTIONAL = frozenset({"split"})

    dataset: str | None = None
    input_subdir: str | None = None
    raw_sha256: str | None = None
    raw_n_files: int | None = None
    processed_sha256: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] | None = None
    image_size: int | None = None
    split_protocol: str | None = None
    split_level: str | None = None
    warnings: list[str] = field(default_factory=list)
    preprocess: dict[str, Any] | None = None
    preprocess_seconds: float | None = None
    split: dict[str, Any] | None = None
    """The table's split (:func:`lungseg.experiments.tables.split_record`: ``name``, ``seed`` and for a
    table's own split its fractions); absent in records made before it was stored, which ran the
    source's published split (:meth:`split_used`)."""

    def split_used(self) -> dict[str, Any]:
        """:attr:`split`, or for a record without one the published split at its preprocess seed."""
        if self.split is not None:
            return dict(self.split)
        return {"name": "published", "seed": (self.preprocess or {}).get("seed", 0)}

    def identity(self) -> tuple:
        """What says two records ran on the same data (reader, folder, checksums, the split — its name,
        seed and sizes — and the size)."""
        return (
            self.dataset,
            self.input_subdir,
            self.raw_sha256,
            self.raw_n_files,
            json.dumps(self.processed_sha256, sort_keys=True),
            json.dumps(self.split_used(), sort_keys=True),
            json.dumps(self.counts, sort_keys=True),
            self.image_size,
            self.split_level,
        )

    def describe(self) -> str:
        processed = ", ".join(f"`{k}` `{str(v)[:12]}…`" for k, v in sorted(self.processed_sha256.items()))
        counts = dict(sorted(self.counts.items())) if isinstance(self.counts, dict) else self.counts
        split = self.split_used()
        return (
            f"reader `{self.dataset}` on `<data-root>/{self.input_subdir}` (raw sha256 "
            f"`{str(self.raw_sha256)[:16]}…` over {self.raw_n_files} files); split `{split['name']}` "
            f"(seed {split.get('seed')}) {counts} ({self.split_level}-level) at {self.image_size}²; "
            f"processed {processed}"
        )


@dataclass(frozen=True, kw_only=True)
class WallTime(_Part):
    train: float | None = None
    evaluate: float | None = None
    total: float | None = None


@dataclass(frozen=True, kw_only=True)
class RunRecord(_Part):
    """One finished cell: table/profile/row/seed, its settings, metrics and provenance."""

    NESTED = {"settings": Settings, "device": Device, "git": GitInfo, "data": DataProvenance, "wall_time_s": WallTime}
    LOCAL = frozenset({"path"})
    OPTIONAL = frozenset({"identity", "source_resolution"})

    record_version: int = RECORD_VERSION
    table: str | None = None
    profile: str | None = None
    row: str | None = None
    label: str | None = None
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    settings: Settings = field(default_factory=Settings)
    identity: dict[str, Any] | None = None
    """What the run trained, fully resolved (:mod:`lungseg.experiments.identity`); ``status``
    ``unrecorded`` with a ``note`` for a record of older code."""
    overrides: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    train_metrics: dict[str, Any] | None = None
    mlflow: dict[str, Any] | None = None
    wall_time_s: WallTime = field(default_factory=WallTime)
    started_at: str | None = None
    finished_at: str | None = None
    device: Device = field(default_factory=Device)
    git: GitInfo = field(default_factory=GitInfo)
    data: DataProvenance = field(default_factory=DataProvenance)
    command: str | None = None
    host: str | None = None
    source_resolution: dict[str, Any] | None = None
    """With ``--score-at-source``: the test masks scored at their source size (``threshold``,
    ``sizes``, ``metrics``, ``per_image``; :mod:`lungseg.experiments.source_scoring`)."""
    path: Path | None = field(default=None, compare=False)
    """The file it was read from (not stored in the file)."""

    def metric(self, key: str) -> float | None:
        """``metrics[key]`` as a float; None when missing, not a number, NaN or infinite."""
        value = self.metrics.get(key)
        if value is None or isinstance(value, bool):
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    @property
    def made_by_older_code(self) -> str | None:
        """How a record marked as made by older code is marked (``unrecorded``, or a recorded identity
        marked ``stale``), else None."""
        ident = self.identity or {}
        if ident.get("status") == "unrecorded":
            return "identity unrecorded (" + str(ident.get("note") or "made by older code") + ")"
        if ident.get("stale"):
            return f"stale: {ident['stale']}"
        return None

    @property
    def cell(self) -> str:
        """``<row>-seed<k>``: the record's file stem."""
        return f"{self.row}-seed{self.seed}"

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """The record in ``path`` (``DataError`` naming the file if it is not a JSON object)."""
        from lungseg.errors import DataError

        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(path, f"cannot read run record: {exc}") from exc
        if not isinstance(data, dict):
            raise DataError(path, f"a run record is a JSON object, got {type(data).__name__}")
        return dataclasses.replace(cls.from_dict(data), path=path)


#: how a record names a path outside the repository and the folder beside it (its last component follows)
ELSEWHERE = "<elsewhere>"
_LOCAL_URI_SCHEMES = ("sqlite:///", "file://")


def portable_path_text(path: str, repo: Path | None) -> str:
    """An absolute ``path`` relative to ``repo`` when it lies in the repository or beside it (in the
    repository's parent folder: ``../shared/data``), else ``<elsewhere>/<name>``; a relative path as it is."""
    if not os.path.isabs(path):
        return path
    target = os.path.normpath(path)
    if repo is not None:
        for base in (repo, repo.parent):
            if os.path.commonpath([target, str(base)]) == str(base) and base != Path(base.anchor):
                return Path(os.path.relpath(target, repo)).as_posix()
    return f"{ELSEWHERE}/{Path(target).name}"


def portable_uri_text(uri: str, repo: Path | None) -> str:
    """A local store's URI (``sqlite:///…``, ``file://…``) with its path made :func:`portable_path_text`;
    a server's URI unchanged."""
    for scheme in _LOCAL_URI_SCHEMES:
        if uri.startswith(scheme) and os.path.isabs(uri[len(scheme) :]):
            return scheme + portable_path_text(uri[len(scheme) :], repo)
    return uri


def portable_command(command: str, repo: Path | None) -> str:
    """``command`` with each absolute path argument (``/a/b`` or ``--flag=/a/b``) made :func:`portable_path_text`."""

    def one(token: str) -> str:
        flag, eq, value = token.partition("=") if token.startswith("--") else ("", "", token)
        return f"{flag}{eq}{portable_path_text(value, repo)}"

    return shlex.join(one(t) for t in shlex.split(command))


def portable_record(record: RunRecord, anchor: str | Path) -> RunRecord:
    """``record`` without the machine's paths (module docstring), relative to the repository holding
    ``anchor`` (the record's file; ``lungseg.tracking.repo_root``)."""
    from lungseg.tracking import repo_root

    repo = repo_root(Path(anchor).parent)
    mlflow = record.mlflow
    if mlflow and isinstance(mlflow.get("tracking_uri"), str):
        mlflow = {**mlflow, "tracking_uri": portable_uri_text(mlflow["tracking_uri"], repo)}
    command = portable_command(record.command, repo) if record.command else record.command
    return dataclasses.replace(record, mlflow=mlflow, command=command)


def as_records(records: Iterable[RunRecord | Mapping[str, Any]]) -> list[RunRecord]:
    """``records`` as :class:`RunRecord` objects (plain dicts, e.g. hand-made in a test, are converted)."""
    return [r if isinstance(r, RunRecord) else RunRecord.from_dict(r) for r in records]


def records_digest(records: Iterable[RunRecord]) -> str:
    """sha256 (hex) of ``records``' content, in cell order: each record's :meth:`RunRecord.to_dict` as
    canonical JSON (sorted keys, no spaces), one a line. The page prints it in each table's block, so a
    record edited after the page was generated — in any field, shown or not — makes the page differ
    from what the records generate (``lungseg results check``)."""
    import hashlib

    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: (str(r.table), str(r.profile), str(r.row), r.seed or 0)):
        digest.update(json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n")
    return digest.hexdigest()


def record_path(results_dir: str | Path, table: str, profile: str, row: str, seed: int) -> Path:
    """``<results_dir>/<table>/<profile>/<row>-seed<seed>.json``."""
    return Path(results_dir) / table / profile / f"{row}-seed{seed}.json"


def load_records(results_dir: str | Path, table: str | None = None, profile: str | None = None) -> list[RunRecord]:
    """Every ``*.json`` record under ``results_dir`` (optionally one table/profile), sorted by path."""
    pattern = f"{table or '*'}/{profile or '*'}/*.json"
    return [RunRecord.read(path) for path in sorted(Path(results_dir).glob(pattern))]
