"""MLflow tracking for training and evaluation, resilient to a tracking server that goes away.

* :func:`resolve_tracking_uri` — ``MLFLOW_TRACKING_URI`` if set, else ``params.mlflow.tracking_uri``
  (default ``sqlite:///mlflow.db``). A relative sqlite path is relative to the **repository root**
  (:func:`repo_root`: the folder holding ``.dvc``/``.git`` above the working directory), not to the
  working directory: a DVC experiment run from the queue works in a temporary copy
  ``<repo>/.dvc/tmp/exps/…`` that DVC deletes afterwards, and its runs must land in ``<repo>/mlflow.db``.
* :func:`portable_uri` / :func:`portable_path` / :func:`resolve_recorded_uri` — what is written into
  ``mlflow_run.json``, tags and decision files names repository-local things *relative to the
  repository* (``sqlite:///mlflow.db``, ``data/processed/medseg``), and is resolved against the
  repository of the file that recorded it: a clone or copy of the repository uses its own store,
  never the original's.
* :func:`store_record` — the store in use as a small file (``lungseg
  store``, the first stage of ``dvc.yaml``) that every MLflow-logging stage depends on: switching the
  store re-runs them into it, the same store twice re-runs nothing.
* :func:`check_store_in_use` — ``lungseg register``/``evaluate`` work in the store the training run
  (``mlflow_run.json``) was logged to only when it is the store in use (:func:`resolve_tracking_uri`);
  another one is refused in one line naming both stores and the fix, never used silently.
* :func:`mark_stale_run` — a run left ``RUNNING`` by a killed process is set to ``KILLED``.
* :class:`ResilientRun` — every logging call goes through :meth:`ResilientRun.call`. A call that
  fails (server down, network error, artifact store error) does **not** stop training: it is
  queued, a warning is issued, and the queue is retried (in order) on later calls once
  ``retry_interval_s`` has passed. Use it as a context manager::

      with ResilientRun.start(uri, experiment, run_name=...) as run:
          run.log_metrics(...)
      run.summary()  # what was lost, for mlflow_run.json

  Leaving the block ends the run — ``FINISHED`` on a normal exit, ``FAILED`` on an exception,
  ``KILLED`` on ``KeyboardInterrupt``/``SystemExit`` (a SIGTERM turned into an exception) — unless
  :meth:`~ResilientRun.end` was called inside it, and then closes it once: :meth:`ResilientRun.close`
  makes a last flush attempt; what is still queued then is *lost* and reported (``lost_logging``
  count + ``lost_calls`` descriptions in ``mlflow_run.json``). The explicit :meth:`~ResilientRun.end`
  and :meth:`~ResilientRun.close` remain for code that cannot wrap its run in one block. Only the
  start of a run is strict: when the store cannot be reached before training begins,
  :class:`~lungseg.errors.TrainingError` is raised (nothing has been done yet).

The code commit and the processed data's hash that runs are tagged with come from
:mod:`lungseg.provenance` (``git_commit`` and ``data_hash`` are still importable from here).

While a run is open, MLflow's HTTP retry policy is shortened (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=30``) unless the user set
those variables: MLflow's defaults (7 retries, factor 2) block one logging call for minutes when
the server is down. The previous environment is restored by :meth:`ResilientRun.close`
(:class:`lungseg.envvars.scoped_environ`).

Messages go to the ``lungseg.tracking`` logger (:mod:`logging`; the command line prints them on
stderr); failed logging calls are :class:`TrackingWarning` warnings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungseg.envvars import scoped_environ
from lungseg.errors import DataError, TrainingError
from lungseg.provenance import data_hash, git_commit  # noqa: F401  (re-exported: callers import them from here)

HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingWarning(UserWarning):
    """A logging call to MLflow failed; it was queued (and is lost if it never goes through)."""


SQLITE = "sqlite:///"

log = logging.getLogger(__name__)


def repo_root(start: str | Path | None = None) -> Path | None:
    """The repository ``start`` (default: the working directory) lies in, or None outside one.

    That is the nearest folder at or above ``start`` holding ``.dvc`` or ``.git`` — except inside a
    DVC experiment's temporary workspace (``<repo>/.dvc/tmp/exps/…``, a full copy of the project
    that ``dvc exp run --queue``/``--run-all`` and ``--temp`` run in, deleted afterwards), where it is
    the repository the experiment was queued from.
    """
    start = Path(start or Path.cwd()).resolve()
    parts = start.parts
    for i in range(len(parts) - 1):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp" and i > 0:
            return repo_root(Path(*parts[:i]))
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir() or (folder / ".git").exists():
            return folder
    return None


def resolve_tracking_uri(params) -> str:
    """``MLFLOW_TRACKING_URI`` (environment) wins over ``params.mlflow.tracking_uri``; a relative
    sqlite path is made absolute against the repository root (the working directory outside one)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    return absolute_sqlite(uri, repo_root() or Path.cwd())


#: what ``lungseg store`` writes (``dvc.yaml``'s ``store`` stage): the tracking store the MLflow-logging stages use
STORE_RECORD_KEY = "tracking_uri"


def redact_uri(uri: str) -> str:
    """``uri`` without a password (``https://user:secret@host`` → ``https://user@host``): what may be
    written into a file DVC tracks. A token in the query string is dropped too."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if not parts.netloc or (parts.password is None and not parts.query):
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", parts.fragment))


def store_record(params, anchor: str | Path) -> dict[str, str]:
    """The tracking store in use, as a DVC-tracked record at ``anchor`` (the record's path) names it:
    :func:`resolve_tracking_uri` (``MLFLOW_TRACKING_URI`` over ``params.mlflow.tracking_uri``), an
    sqlite store inside the repository relative to it (:func:`portable_uri`: a clone or copy of the
    repository records the same text), a server without its password (:func:`redact_uri`).

    Same store, same bytes: the stages that log to MLflow depend on this file, so ``dvc repro`` re-runs
    them when the store changes (by the variable or by ``params.yaml``) and only then."""
    return {STORE_RECORD_KEY: redact_uri(portable_uri(resolve_tracking_uri(params), anchor))}


def _is_relative_sqlite(uri: str) -> bool:
    return uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/") and ":memory:" not in uri


def absolute_sqlite(uri: str, base: str | Path | None = None) -> str:
    """``sqlite:///rel.db`` → ``sqlite:////<base>/rel.db`` (``base`` default: the working directory;
    other URIs unchanged)."""
    if _is_relative_sqlite(uri):
        return SQLITE + str((Path(base or Path.cwd()) / uri[len(SQLITE) :]).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute ``sqlite:////…`` URI, else None."""
    if uri.startswith(SQLITE + "/") and ":memory:" not in uri:
        return Path(uri[len(SQLITE) :].split("?", 1)[0])
    return None


def portable_uri(uri: str, anchor: str | Path) -> str:
    """``uri`` as it should be recorded in a file at ``anchor``: an sqlite store inside the
    repository of ``anchor`` becomes relative to that repository (``sqlite:///mlflow.db``);
    anything else (a server, a store elsewhere) stays as it is."""
    db, root = sqlite_path(uri), repo_root(anchor)
    if db is None or root is None:
        return uri
    try:
        return SQLITE + db.resolve().relative_to(root).as_posix()
    except ValueError:  # outside the repository: keep it absolute
        return uri


def portable_path(path: str | Path) -> str:
    """``path`` relative to the repository root when it lies inside the repository, else absolute. A
    path inside a DVC experiment's temporary workspace (``.dvc/tmp/exps/<name>/…``, deleted afterwards)
    is recorded as the same path in the experiment's own tree (``data/processed/medseg``)."""
    path = Path(path).resolve()
    root = repo_root()
    if root is not None:
        with contextlib.suppress(ValueError):
            rel = path.relative_to(root).parts
            if rel[:3] == (".dvc", "tmp", "exps"):  # <name>/ (--queue) or run/<name>/ (--temp): up to tmp*
                tmp = next((i for i in range(3, len(rel)) if rel[i].startswith("tmp")), None)
                rel = rel[tmp + 1 :] if tmp is not None else rel
            return Path(*rel).as_posix() if rel else "."
    return str(path)


def resolve_recorded_uri(uri: str, recorded_in: str | Path) -> str:
    """A tracking URI read from the file ``recorded_in``: a relative sqlite URI is relative to the
    repository that file lies in (:func:`portable_uri` wrote it so), else to the working directory's."""
    if not _is_relative_sqlite(uri):
        return uri
    return absolute_sqlite(uri, repo_root(Path(recorded_in).parent) or repo_root() or Path.cwd())


def store_in_use_source(params) -> str:
    """What chose the store :func:`resolve_tracking_uri` answers: the variable or ``params.yaml``."""
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "mlflow.tracking_uri (params)"


def same_store(a: str, b: str) -> bool:
    """Whether two resolved tracking URIs name one store (passwords and a trailing ``/`` aside;
    sqlite files compared as resolved paths)."""
    da, db = sqlite_path(a), sqlite_path(b)
    if da is not None or db is not None:
        return da is not None and db is not None and da.resolve() == db.resolve()
    return redact_uri(a).rstrip("/") == redact_uri(b).rstrip("/")


def check_store_in_use(params, recorded_uri: str | None, recorded_in: str | Path, command: str) -> str | None:
    """The store ``command`` (``register``/``evaluate``) works in: the one the training run recorded in
    ``recorded_in`` (``mlflow_run.json``) lives in, ``recorded_uri`` (resolved) — only when it is the store
    in use (:func:`resolve_tracking_uri`: ``MLFLOW_TRACKING_URI`` over ``params.mlflow.tracking_uri``);
    another one is refused in one line naming both stores and the fix, never used silently (a decision
    or an evaluation made in a store other than the one the user named). ``None`` when nothing is recorded."""
    if not recorded_uri:
        return None
    in_use = resolve_tracking_uri(params)
    if same_store(in_use, recorded_uri):
        return recorded_uri
    raise DataError(
        recorded_in,
        f"the training run was logged to {redact_uri(recorded_uri)}, but {store_in_use_source(params)} names "
        f"{redact_uri(in_use)}: `lungseg {command}` never works in another store than the one named — train "
        f"and evaluate into {redact_uri(in_use)} (`dvc repro` re-runs them when the store changes), or name "
        f"{redact_uri(recorded_uri)} as the store",
    )


def mark_stale_run(tracking_uri: str, run_id: str, status: str = "KILLED") -> str:
    """Set a run that a killed process left ``RUNNING`` to ``status``; returns what was done, for the
    message (``"marked KILLED"``, ``"was FINISHED"``, or why it could not be reached) — never raises:
    the stale run is reported, not a reason to refuse the new one."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with short_http_retries():
        try:
            client = MlflowClient(tracking_uri)
            current = client.get_run(run_id).info.status
            if current != "RUNNING":
                return f"was already {current}"
            client.set_terminated(run_id, status=status)
            return f"marked {status}"
        except (MlflowException, OSError) as exc:
            return f"could not be marked {status} ({describe_error(exc)})"


#: the variables MLflow's ``set_tracking_uri``/``set_registry_uri`` write (for subprocesses) and read
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def scoped_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking/registry URI at ``uri`` inside the block only, through MLflow's
    public API (``mlflow.set_tracking_uri``/``set_registry_uri``, which also set the variables of
    :data:`URI_VARIABLES`). Afterwards — also on an exception — the variables are exactly as before and
    ``mlflow.get_tracking_uri()``/``get_registry_uri()`` answer as before: a URI that was set in the
    process (not only by a variable) is set again, else the globals are cleared and the variables decide."""
    import mlflow

    env = {k: os.environ.get(k) for k in URI_VARIABLES}
    tracking = mlflow.get_tracking_uri()
    # set in the process (not by the variable): is_tracking_uri_set() is also true for the variable alone
    explicit_tracking = (
        tracking if mlflow.tracking.is_tracking_uri_set() and tracking != env[URI_VARIABLES[0]] else None
    )
    registry = mlflow.get_registry_uri()
    # the registry URI defaults to the tracking URI: differing from it (and the variable), it was set
    explicit_registry = registry if registry not in (tracking, env[URI_VARIABLES[1]]) else None
    with scoped_environ(env):  # restores the variables exactly, whatever set_*_uri did to them
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(explicit_tracking)
            mlflow.set_registry_uri(explicit_registry)


def _experiment_id(client, tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created if needed. In a local sqlite store its artifacts go to
    ``mlruns/`` beside the database (MLflow's default is ``./mlruns`` of the *working directory*,
    which for a queued DVC experiment is a temporary copy deleted afterwards). A store whose
    experiment keeps its artifacts outside the store's repository (the database was copied from
    another checkout) is warned about: its artifacts go to the original's folder."""
    exp = client.get_experiment_by_name(name)
    db = sqlite_path(tracking_uri)
    if exp is None:
        location = str(db.parent / "mlruns") if db is not None else None
        return client.create_experiment(name, artifact_location=location)
    root = repo_root(db.parent) if db is not None else None
    where = exp.artifact_location or ""
    local = where[len("file://") :] if where.startswith("file://") else where if where.startswith("/") else None
    if root is not None and local is not None:
        try:
            Path(local).resolve().relative_to(root)
        except ValueError:
            log.warning(
                "lungseg: warning: experiment %r of %s keeps its artifacts in %s, outside this repository (%s): "
                "was the database copied from another checkout? Use a new params.mlflow.experiment (or move "
                "mlflow.db away) to keep this copy's artifacts here",
                name,
                db,
                where,
                root,
            )
    return exp.experiment_id


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``"<ExceptionType>: <first line of the message>"`` cut to ``limit`` characters: how a failed
    logging call is warned about and listed in ``lost_calls`` (MLflow's messages run to pages)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:limit]


@dataclass
class _Pending:
    what: str
    fn: Callable[[], Any]
    error: str


@dataclass
class ResilientRun:
    """One MLflow run whose logging calls never crash the caller (see the module docstring).

    Create with :meth:`start` (new run or re-open ``run_id``), preferably as ``with … as run:`` (the
    block ends and closes it). ``lost`` holds what was dropped. All calls share one
    :class:`~mlflow.tracking.MlflowClient` (:attr:`client`).
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
    _env: scoped_environ | None = field(default=None, repr=False)
    _closed: bool = False
    _ended: bool = False
    _client: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ creation
    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        *,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        experiment_id: str | None = None,
    ) -> ResilientRun:
        """Start a new run in ``experiment`` (or in ``experiment_id``) or re-open ``run_id`` (resume).

        Raises :class:`TrainingError` when the store cannot be reached: nothing has run yet.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        env = short_http_retries().apply()
        try:
            client = MlflowClient(tracking_uri)
            if run_id is not None:
                run = client.get_run(run_id)
                if run.info.status != "RUNNING":
                    client.update_run(run_id, status="RUNNING")
                exp_id = run.info.experiment_id
            else:
                exp_id = experiment_id or _experiment_id(client, tracking_uri, experiment)
                run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
                run_id = run.info.run_id
        except (MlflowException, OSError) as exc:  # unreachable store / bad URI / unknown run
            env.restore()
            raise TrainingError(f"MLflow tracking at {tracking_uri}: {describe_error(exc)}") from exc
        except BaseException:
            env.restore()
            raise
        return cls(tracking_uri=tracking_uri, run_id=run_id, experiment_id=str(exp_id), _env=env, _client=client)

    @property
    def client(self):
        """The run's one MLflow client (made on first use when the run was not created by :meth:`start`)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> ResilientRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """End the run (unless :meth:`end` was called in the block) and close it; never swallows ``exc``."""
        if not self._ended and not self._closed:
            if exc_type is None:
                status = "FINISHED"
            elif issubclass(exc_type, Exception):
                status = "FAILED"
            else:  # KeyboardInterrupt, SystemExit (a SIGTERM handler's), GeneratorExit
                status = "KILLED"
            self.end(status)
        self.close()

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
        msg = describe_error(exc)
        self.pending.append(_Pending(what, fn, msg))
        self._next_try = time.monotonic() + self.retry_interval_s
        warnings.warn(
            f"MLflow logging failed ({what}): {msg}; queued ({len(self.pending)} pending), training goes on",
            TrackingWarning,
            stacklevel=3,
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
                item.error = describe_error(exc)
                self._next_try = time.monotonic() + self.retry_interval_s
                return False
            self.pending.pop(0)
            self.flushed += 1
        log.info("MLflow logging recovered: %d queued call(s) delivered", self.flushed)
        return True

    # ------------------------------------------------------------------ logging helpers
    def log_params(self, params: dict[str, Any]) -> bool:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]

        def fn():
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

        return self.call(f"log_params({len(items)} params)", fn)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> bool:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(str(k), float(v), ts, step or 0) for k, v in metrics.items() if _finite(v)]
        if not items:
            return True
        return self.call(
            f"log_metrics(step={step}: {', '.join(m.key for m in items)})",
            lambda: self.client.log_batch(self.run_id, metrics=items, synchronous=True),
        )

    def set_tags(self, tags: dict[str, str]) -> bool:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        return self.call(
            f"set_tags({', '.join(tags)})", lambda: self.client.log_batch(self.run_id, tags=items, synchronous=True)
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> bool:
        """Log the file ``path`` (under ``artifact_path`` in the run's artifacts).

        No copy is made: a call that is queued uploads the file *as it is when the retry goes
        through* — keep it in place and unchanged until :meth:`close` (a file missing by then is
        listed as lost)."""
        path = Path(path)
        return self.call(
            f"log_artifact({path.name} → {artifact_path or '.'})",
            lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
        )

    def end(self, status: str = "FINISHED") -> bool:
        """Set the run's final ``status`` (queued like any call when the store is down)."""
        self._ended = True
        return self.call(f"end_run({status})", lambda: self.client.set_terminated(self.run_id, status=status))

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
                TrackingWarning,
                stacklevel=2,
            )
        self.pending = []
        self._closed = True
        if self._env is not None:
            self._env.restore()

    def summary(self) -> dict[str, Any]:
        """Fields for ``mlflow_run.json``: ``lost_logging`` (count), ``lost_calls``, ``logging_failures``,
        ``flushed_calls``."""
        return {
            "lost_logging": len(self.lost) + len(self.pending),
            "lost_calls": [*self.lost, *(f"{p.what}: {p.error}" for p in self.pending)],
            "logging_failures": self.failures,
            "flushed_calls": self.flushed,
        }


def short_http_retries() -> scoped_environ:
    """:data:`HTTP_DEFAULTS` where the user did not set them, as a :class:`~lungseg.envvars.scoped_environ`
    (``with short_http_retries():``, or ``.apply()`` … ``.restore()``)."""
    return scoped_environ(HTTP_DEFAULTS, only_unset=True)


def _finite(v: Any) -> bool:
    import math

    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
