"""MLflow tracking for training and evaluation, resilient to a tracking server that goes away.

* :func:`resolve_tracking_uri` — ``MLFLOW_TRACKING_URI`` if set, else ``params.mlflow.tracking_uri``
  (default ``sqlite:///mlflow.db``). A relative sqlite path is made absolute, so the URI recorded in
  ``mlflow_run.json`` works from any working directory.
* :func:`git_commit` — ``git rev-parse HEAD`` of the working directory, ``"unknown"`` outside git.
* :func:`data_hash` — ``(hash, source)`` of a processed dataset folder: DVC's md5 of that folder
  from the nearest ``dvc.lock`` (source ``"dvc.lock"``) when one lists it as a stage output, else a
  sha256 over the manifest's ``id, split, image_sha256, mask_sha256`` columns (source ``"manifest"``).
* :class:`ResilientRun` — every logging call goes through :meth:`ResilientRun.call`. A call that
  fails (server down, network error, artifact store error) does **not** stop training: it is
  queued, a warning is printed, and the queue is retried (in order) on later calls once
  ``retry_interval_s`` has passed. :meth:`ResilientRun.close` makes a last flush attempt; what is
  still queued then is *lost* and reported (``lost_logging`` count + ``lost_calls`` descriptions in
  ``mlflow_run.json``). Only the start of a run is strict: when the store cannot be reached before
  training begins, :class:`~lungseg.errors.TrainingError` is raised (nothing has been done yet).

While a run is open, MLflow's HTTP retry policy is shortened (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=30``) unless the user set
those variables: MLflow's defaults (7 retries, factor 2) block one logging call for minutes when
the server is down. The previous environment is restored by :meth:`ResilientRun.close`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungseg.errors import TrainingError

HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingWarning(UserWarning):
    """A logging call to MLflow failed; it was queued (and is lost if it never goes through)."""


def resolve_tracking_uri(params) -> str:
    """``MLFLOW_TRACKING_URI`` (environment) wins over ``params.mlflow.tracking_uri``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    return absolute_sqlite(uri)


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///rel.db`` → ``sqlite:////abs/cwd/rel.db`` (other URIs unchanged)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str((Path.cwd() / uri[len(prefix):]).resolve())
    return uri


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit checked out in ``cwd`` (default: the working directory), ``"unknown"`` outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else "unknown"


def _dvc_lock_md5(data_dir: Path) -> str | None:
    """md5 of ``data_dir`` recorded as a stage output in the nearest ``dvc.lock`` above the cwd."""
    import yaml

    target = data_dir.resolve()
    for folder in (Path.cwd(), *Path.cwd().parents):
        lock = folder / "dvc.lock"
        if not lock.is_file():
            continue
        try:
            data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            return None
        for stage in (data.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if isinstance(out, dict) and out.get("md5") and (folder / str(out.get("path"))).resolve() == target:
                    return str(out["md5"])
        return None
    return None


def data_hash(data_dir: str | Path) -> tuple[str, str]:
    """``(hash, source)`` identifying a processed dataset folder (see the module docstring)."""
    import pandas as pd

    data_dir = Path(data_dir)
    md5 = _dvc_lock_md5(data_dir)
    if md5:
        return md5, "dvc.lock"
    manifest = pd.read_csv(data_dir / "manifest.csv", dtype=str)
    cols = [c for c in ("id", "split", "image_sha256", "mask_sha256") if c in manifest.columns]
    h = hashlib.sha256()
    for row in manifest[cols].itertuples(index=False):
        h.update(("\t".join(map(str, row)) + "\n").encode())
    return h.hexdigest(), "manifest"


def split_fingerprint(manifest) -> str:
    """sha256 over the ``id, image_sha256, mask_sha256`` of the rows of one split (row order kept)."""
    cols = [c for c in ("id", "image_sha256", "mask_sha256") if c in manifest.columns]
    h = hashlib.sha256()
    for row in manifest[cols].astype(str).itertuples(index=False):
        h.update(("\t".join(row) + "\n").encode())
    return "sha256:" + h.hexdigest()


@contextlib.contextmanager
def scoped_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking/registry URI at ``uri`` inside the block only (restored exactly)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri = saved[0]
        registry_utils._registry_uri = saved[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class _Pending:
    what: str
    fn: Callable[[], Any]
    error: str


@dataclass
class ResilientRun:
    """One MLflow run whose logging calls never crash the caller (see the module docstring).

    Create with :meth:`start` (new run or re-open ``run_id``). ``lost`` holds what was dropped.
    """

    tracking_uri: str
    run_id: str
    experiment_id: str
    retry_interval_s: float = 10.0
    pending: list[_Pending] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    failures: int = 0
    flushed: int = 0
    _next_try: float = 0.0
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    _closed: bool = False

    # ------------------------------------------------------------------ creation
    @classmethod
    def start(cls, tracking_uri: str, experiment: str, *, run_id: str | None = None,
              run_name: str | None = None, tags: dict[str, str] | None = None) -> ResilientRun:
        """Start a new run in ``experiment`` or re-open ``run_id`` (resume / evaluation).

        Raises :class:`TrainingError` when the store cannot be reached: nothing has run yet.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        saved = {k: os.environ.get(k) for k in HTTP_DEFAULTS}
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        try:
            client = MlflowClient(tracking_uri)
            if run_id is not None:
                run = client.get_run(run_id)
                if run.info.status != "RUNNING":
                    client.update_run(run_id, status="RUNNING")
                exp_id = run.info.experiment_id
            else:
                exp = client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
                run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
                run_id = run.info.run_id
        except (MlflowException, OSError) as exc:  # unreachable store / bad URI / unknown run
            _restore_env(saved)
            raise TrainingError(f"MLflow tracking at {tracking_uri}: {exc}".splitlines()[0]) from exc
        except BaseException:
            _restore_env(saved)
            raise
        return cls(tracking_uri=tracking_uri, run_id=run_id, experiment_id=str(exp_id), _saved_env=saved)

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    # ------------------------------------------------------------------ the resilient call
    def call(self, what: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` (one logging call described by ``what``) after any queued calls.

        Returns True when it went through now; False when it was queued (the server is down).
        Exceptions from ``fn`` are caught *only* to be queued and counted, never silently dropped.
        """
        if self._closed:
            raise RuntimeError("ResilientRun is closed")
        if self.pending and not self.flush():
            self.pending.append(_Pending(what, fn, "queued behind earlier failures"))
            return False
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - designed resilience: queued, warned, counted
            self._failed(what, fn, exc)
            return False

    def _failed(self, what: str, fn: Callable[[], Any], exc: BaseException) -> None:
        self.failures += 1
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        self.pending.append(_Pending(what, fn, msg))
        self._next_try = time.monotonic() + self.retry_interval_s
        warnings.warn(
            f"MLflow logging failed ({what}): {msg}; queued ({len(self.pending)} pending), training goes on",
            TrackingWarning, stacklevel=3,
        )

    def flush(self, *, force: bool = False) -> bool:
        """Retry the queued calls in order; True when the queue is empty afterwards."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        while self.pending:
            item = self.pending[0]
            try:
                item.fn()
            except Exception as exc:  # noqa: BLE001 - stays queued; counted below
                self.failures += 1
                item.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                self._next_try = time.monotonic() + self.retry_interval_s
                return False
            self.pending.pop(0)
            self.flushed += 1
        print(f"MLflow logging recovered: {self.flushed} queued call(s) delivered", file=sys.stderr)
        return True

    # ------------------------------------------------------------------ logging helpers
    def log_params(self, params: dict[str, Any]) -> bool:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]

        def fn():
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100], synchronous=True)

        return self.call(f"log_params({len(items)} params)", fn)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> bool:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(str(k), float(v), ts, step or 0) for k, v in metrics.items() if _finite(v)]
        if not items:
            return True
        return self.call(f"log_metrics(step={step}: {', '.join(m.key for m in items)})",
                         lambda: self.client.log_batch(self.run_id, metrics=items, synchronous=True))

    def set_tags(self, tags: dict[str, str]) -> bool:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        return self.call(f"set_tags({', '.join(tags)})",
                         lambda: self.client.log_batch(self.run_id, tags=items, synchronous=True))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> bool:
        """Log a file. The file is copied aside first when it may change before a retry."""
        path = Path(path)
        return self.call(f"log_artifact({path.name} → {artifact_path or '.'})",
                         lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> bool:
        folder = Path(folder)
        return self.call(f"log_artifacts({folder.name}/ → {artifact_path or '.'})",
                         lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path))

    def log_torch_model(self, model, input_example, *, name: str = "model") -> str | None:
        """``mlflow.pytorch.log_model`` (pickle, signature from ``input_example``); the model URI or None."""
        import mlflow
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        result: dict[str, str] = {}

        def fn():
            with torch.no_grad():
                out = model(torch.as_tensor(input_example)).numpy()
            signature = infer_signature(np.asarray(input_example), out)
            with scoped_tracking_uri(self.tracking_uri):
                info = mlflow.pytorch.log_model(
                    model, name=name, serialization_format="pickle", signature=signature,
                    input_example=np.asarray(input_example), run_id=self.run_id,
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
                )
            result["uri"] = info.model_uri

        ok = self.call(f"log_model({name})", fn)
        return result.get("uri") if ok else None

    def end(self, status: str = "FINISHED") -> bool:
        return self.call(f"end_run({status})",
                         lambda: self.client.set_terminated(self.run_id, status=status))

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Last flush attempt (ignoring the retry interval); what is still queued is lost."""
        if self._closed:
            return
        self.flush(force=True)
        for item in self.pending:
            self.lost.append(f"{item.what}: {item.error}")
        if self.pending:
            warnings.warn(
                f"MLflow: {len(self.pending)} logging call(s) could not be delivered to {self.tracking_uri} "
                f"(run {self.run_id}); they are listed under lost_calls in mlflow_run.json",
                TrackingWarning, stacklevel=2,
            )
        self.pending = []
        self._closed = True
        _restore_env(self._saved_env)

    def summary(self) -> dict[str, Any]:
        """Fields for ``mlflow_run.json``: ``lost_logging`` (count), ``lost_calls``, ``logging_failures``, ``flushed_calls``."""
        return {
            "lost_logging": len(self.lost) + len(self.pending),
            "lost_calls": [*self.lost, *(f"{p.what}: {p.error}" for p in self.pending)],
            "logging_failures": self.failures,
            "flushed_calls": self.flushed,
        }


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _finite(v: Any) -> bool:
    import math

    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
