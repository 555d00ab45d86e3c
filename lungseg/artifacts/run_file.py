"""``mlflow_run.json``: the record of the MLflow run a training logged to — read and written here only.

Training writes it into ``<output>.partial/`` as soon as the run starts (``status: running``) and
again at the end (``best_sha256``, the sha256 of ``best.pt``: the weights behind ``model_uri``).
Evaluation nests its run under it, the registry registers its ``model_uri``, the experiment runner
keeps it in its records and the KFP components publish its ``run_id``/``model_uri``.

:meth:`RunFile.from_file` is the one parse: a JSON object with a non-empty ``run_id`` and every known
field of its type; anything else is a one-line :class:`~lungseg.errors.DataError` naming the file.
What one reader needs on top (evaluation: ``tracking_uri``; the registry: ``model_uri``) is
:meth:`RunFile.require`. Fields this version does not know are kept (``extra``) and written back as
they were, so an older or newer file goes through :meth:`to_dict` unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungseg.errors import DataError
from lungseg.io import atomic_write_json, read_json_object

RUN_FILE = "mlflow_run.json"

#: the fields training always writes (``model_uri`` is null until the model is logged)
ALWAYS = ("run_id", "experiment_id", "experiment", "tracking_uri", "model_uri", "model")
#: field → the JSON types it may have (``None``: absent or null)
_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "experiment_id": (str,),
    "experiment": (str,),
    "tracking_uri": (str,),
    "model_uri": (str,),
    "model": (str,),
    "lost_logging": (int,),
    "lost_calls": (list,),
    "logging_failures": (int,),
    "flushed_calls": (int,),
    "best_sha256": (str,),
    "status": (str,),
}


@dataclass(frozen=True)
class RunFile:
    """One ``mlflow_run.json``. ``path`` is where it was read from (``None`` for one built in code);
    the fields are in the order training writes them."""

    run_id: str
    experiment_id: str | None = None
    experiment: str | None = None
    tracking_uri: str | None = None
    model_uri: str | None = None
    model: str | None = None
    lost_logging: int | None = None
    lost_calls: list[str] | None = None
    logging_failures: int | None = None
    flushed_calls: int | None = None
    best_sha256: str | None = None
    status: str | None = None
    """``running`` while the training goes on (absent once it ended)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields this version does not know, kept as they were."""
    path: Path | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path | None = None) -> RunFile:
        """Check ``data`` (the file's object) and type it; ``DataError`` naming ``path`` (or
        ``mlflow_run.json``) for a missing ``run_id`` or a field of the wrong type."""
        where = Path(path) if path is not None else Path(RUN_FILE)
        if not data.get("run_id"):
            raise DataError(where, "no 'run_id': the training run was not logged to MLflow")
        for key, types in _TYPES.items():
            value = data.get(key)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise DataError(where, f"{key} must be {types[0].__name__}, found {type(value).__name__}: {value!r}")
        known = {k: data[k] for k in _TYPES if k in data}
        extra = {k: v for k, v in data.items() if k not in _TYPES}
        return cls(**known, extra=extra, path=Path(path) if path is not None else None)

    @classmethod
    def from_file(cls, path: str | Path) -> RunFile:
        """The run file ``path``; ``DataError`` naming it when it is missing, not a JSON object, or
        fails :meth:`from_dict`'s checks."""
        path = Path(path)
        return cls.from_dict(read_json_object(path, "missing (written by `lungseg train`)"), path)

    @classmethod
    def find(cls, path: str | Path) -> RunFile | None:
        """:meth:`from_file`, or ``None`` when there is no file (a training not logged to MLflow)."""
        return cls.from_file(path) if Path(path).is_file() else None

    def require(self, *keys: str) -> RunFile:
        """``self`` when every field in ``keys`` is set; else a ``DataError`` naming the file and the
        first missing one."""
        for key in keys:
            if not getattr(self, key):
                raise DataError(self.path or Path(RUN_FILE), f"no {key!r}: the training run was not logged to MLflow")
        return self

    def resolved_tracking_uri(self) -> str | None:
        """``tracking_uri`` usable from here: a repository-relative sqlite URI (as training records
        the repository's own store) resolved against the repository the file lies in."""
        if not self.tracking_uri:
            return None
        if self.path is None:
            return self.tracking_uri
        from lungseg.tracking import resolve_recorded_uri

        return resolve_recorded_uri(self.tracking_uri, self.path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the known fields in order (those of :data:`ALWAYS` even when null, the
        others when set), then :attr:`extra`."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name in _TYPES and (f.name in ALWAYS or getattr(self, f.name) is not None)
        }
        return {**out, **self.extra}

    def to_file(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (temporary file + ``os.replace``)."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path


__all__ = ["ALWAYS", "RUN_FILE", "RunFile"]
