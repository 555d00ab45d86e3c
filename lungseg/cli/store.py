"""``lungseg store``: record the MLflow tracking store in use (the first stage of ``dvc.yaml``).

The store is state outside DVC's cache: ``MLFLOW_TRACKING_URI`` (or ``params.yaml``'s
``mlflow.tracking_uri``) picks it when a stage runs. This command writes it into a small JSON file
(:func:`lungseg.tracking.store_record`) that every stage logging to MLflow depends on, so ``dvc repro``
re-runs train, evaluate and register into a store it switched to, and nothing when the store is the
same (docs/pipeline.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from lungseg.cli._common import add_params_argument


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("store", help="record the MLflow tracking store in use (dvc.yaml's store stage)")
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="JSON file to write, {tracking_uri}: MLFLOW_TRACKING_URI over mlflow.tracking_uri, repository-relative "
        "for a store inside the repository, without a password; an existing file is replaced only when it is "
        "such a record",
    )
    add_params_argument(p)
    return p


def load_mlflow_section(path: Path) -> SimpleNamespace:
    """``params.yaml``'s ``mlflow`` section alone, checked (``.mlflow``, as :func:`lungseg.tracking.store_record`
    reads it): the store stage depends on that section only, so a bad value in another section is left to
    the stage that reads it (its one-line error names it), as with every other stage."""
    from pydantic import ValidationError

    from lungseg.config import MlflowConfig, config_error, read_params_file
    from lungseg.errors import ConfigError

    data = read_params_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return SimpleNamespace(mlflow=MlflowConfig.model_validate(data.get("mlflow") or {}))
    except ValidationError as exc:
        raise config_error(exc, f"{path}.mlflow", MlflowConfig) from exc


def write_store_record(params, path: Path) -> dict[str, str]:
    """Write :func:`lungseg.tracking.store_record` to ``path`` atomically. An existing file is replaced
    only when it is such a record (lungseg wrote it); anything else there is a DataError."""
    import json

    from lungseg.errors import DataError
    from lungseg.io import atomic_write_json, check_output_file
    from lungseg.tracking import STORE_RECORD_KEY, store_record

    path = check_output_file(path)
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not (isinstance(old, dict) and set(old) == {STORE_RECORD_KEY}):
            raise DataError(path, "exists and is not a tracking-store record of `lungseg store`: name a new file")
    record = store_record(params, path)
    atomic_write_json(path, record)
    return record


def run(args: argparse.Namespace) -> int:
    params = load_mlflow_section(args.params)
    record = write_store_record(params, args.output)
    print(f"tracking store: {record['tracking_uri']}")
    return 0
