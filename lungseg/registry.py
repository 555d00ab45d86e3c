"""Register an evaluated model in the MLflow model registry and decide champion / challenger.

``register(params, model_dir, evaluation_dir, output)``:

1. reads the run (``model_dir/mlflow_run.json``: ``run_id, tracking_uri, model_uri``) and the
   evaluation (``evaluation_dir/metrics.json``: the promotion metric, the split, the evaluation-set
   fingerprint) and checks that the evaluation **belongs to this model** (:func:`check_binding`):
   its ``run_id`` is the run's, its checkpoint is ``best.pt`` (the weights logged as ``model_uri``)
   and its ``model_sha256`` is the sha256 of ``model_dir/best.pt`` (and of the ``best.pt`` training
   recorded, ``best_sha256``). Otherwise: :class:`~lungseg.errors.DataError`, nothing registered;
2. registers ``model_uri`` as a new version of ``params.register.model_name`` (``{model}`` filled
   with the run's architecture, e.g. ``lungseg-lgnet``) and waits until it is
   ``READY`` (a repeated run of the same run + evaluation set reuses its existing version);
3. under a registry-wide lock, reads the current champion, decides, re-checks that the champion
   has not moved, and only then sets the alias (``champion`` or ``challenger``) — aliases, never
   the deprecated stages — then verifies the alias points where it was set;
4. records the decision, both numbers and the fingerprints as tags on the version and writes the
   decision JSON atomically.

Policy (also in docs/pipeline.md, "Registry policy"):

* below the floor ``register.min_metric`` (a worse score than it; ``null`` = no floor) → never
  promoted, whatever the champion (even when there is none): registered as challenger, ``reason``
  says so;
* no champion (or its alias dangles) → the candidate becomes champion;
* champion evaluated on the **same** evaluation set (same fingerprint, same metric) → the candidate
  becomes champion only if it is strictly better (``greater_is_better``); a tie keeps the champion;
* candidate is the champion's own run (same ``run_id``) re-evaluated → the alias follows it (same
  weights, the newest evaluation record) — this is how a champion is moved onto a new set;
* champion evaluated on a **different** set (or with no recorded fingerprint, or another metric) →
  not compared: the candidate becomes challenger, ``reason`` says so and what to do (re-evaluate
  the champion on this set and register it; see above).

The evaluation-set fingerprint is ``metrics.json["data_fingerprint"]`` when the evaluation wrote one
(sha256 of the split's manifest ``id,image_sha256,mask_sha256`` rows, see
:func:`lungseg.provenance.manifest_fingerprint`); otherwise it is derived from ``per_image.csv`` (split + sorted image
ids) and marked as weaker (``fingerprint_source``).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lungseg.artifacts.run_file import RunFile
from lungseg.errors import ConfigError, DataError, LungsegError
from lungseg.provenance import evaluation_fingerprint
from lungseg.tracking import scoped_tracking_uri

TAG = "lungseg."
#: seconds after which a registry lock whose holder vanished is taken over
LOCK_STALE_AFTER_S = 120.0
LOCK_TIMEOUT_S = 300.0


class RegistryError(LungsegError):
    """The registry could not record the version or the decision."""


@dataclass(frozen=True)
class Decision:
    model_name: str
    version: str
    metric: str
    candidate: float
    champion_before: float | None
    champion_before_version: str | None
    decision: str  # "champion" | "challenger"
    alias: str
    reason: str
    fingerprint: str | None
    fingerprint_source: str
    split: str | None
    run_id: str
    model_uri: str
    tracking_uri: str
    reused_version: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        before = "none" if self.champion_before is None else f"{self.champion_before:.4f}"
        return (
            f"{self.model_name} v{self.version}: {self.decision} ({self.metric} {self.candidate:.4f} vs champion "
            f"{before}{'' if self.champion_before_version is None else f' v{self.champion_before_version}'}) — "
            f"{self.reason}"
        )


# ------------------------------------------------------------------------------------------ inputs
def check_binding(run_info: dict[str, Any], metrics: dict[str, Any], model_dir: Path, metrics_path: Path) -> None:
    """:class:`DataError` unless the evaluation ``metrics`` (``metrics_path``) was computed on the
    weights that registering ``model_dir`` registers (see the module docstring)."""
    from lungseg.io import sha256_file

    evaluated_run, evaluated_sha = metrics.get("run_id"), metrics.get("model_sha256")
    if not evaluated_run or not evaluated_sha:
        raise DataError(
            metrics_path,
            "does not say which model it evaluated (no run_id/model_sha256: written by an "
            f"older lungseg evaluate): run `lungseg evaluate --model {model_dir}` again",
        )
    if evaluated_run != run_info["run_id"]:
        raise DataError(
            metrics_path,
            f"is the evaluation of training run {evaluated_run}, but {model_dir} is run "
            f"{run_info['run_id']}: register a model with its own evaluation",
        )
    if metrics.get("checkpoint") != "best.pt":
        raise DataError(
            metrics_path,
            f"evaluated {metrics.get('checkpoint')} ({metrics.get('checkpoint_fallback') or 'not best.pt'}), "
            "but the registered model is best.pt's weights: restore best.pt and evaluate again",
        )
    best = model_dir / "best.pt"
    if not best.is_file():
        raise DataError(best, "not found: cannot check that the evaluation belongs to this model")
    actual = sha256_file(best)
    if actual != evaluated_sha:
        raise DataError(
            metrics_path,
            f"was computed on other weights than {best} ({evaluated_sha[:19]}… vs "
            f"{actual[:19]}…): evaluate this model and register it with that report",
        )
    recorded = run_info.get("best_sha256")
    if recorded and recorded != actual:
        raise DataError(
            best,
            f"is not the best.pt that training logged as {run_info.get('model_uri')} "
            f"({actual[:19]}… vs {recorded[:19]}… in mlflow_run.json): train or restore it again",
        )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    from lungseg.io import read_json_object

    return read_json_object(path, f"missing ({what})")


def _candidate_value(metrics: dict[str, Any], metric: str, path: Path) -> float:
    if metric not in metrics:
        keys = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
        raise ConfigError(f"register.metric: {metric!r} is not in {path} (numeric keys: {keys})")
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError) as exc:
        raise DataError(path, f"{metric} is not a number: {metrics[metric]!r}") from exc
    if math.isnan(value):
        raise DataError(path, f"{metric} is NaN: refusing to register a model with an undefined score")
    return value


# ------------------------------------------------------------------------------------------- MLflow
def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _is_code(exc: Exception, *codes: str) -> bool:
    return getattr(exc, "error_code", None) in codes


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="lungseg lung CT segmentation (see docs/pipeline.md)")
    except MlflowException as exc:
        if not _is_code(exc, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _wait_ready(client, name: str, version: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION":
            raise RegistryError(f"{name} v{version}: registration failed: {mv.status_message}")
        if time.monotonic() > deadline:
            raise RegistryError(f"{name} v{version}: not READY after {timeout:.0f}s (status {mv.status})")
        time.sleep(0.5)


def _alias_version(client, name: str, alias: str):
    """The READY version an alias points to, or None (no alias, or it dangles)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _is_code(exc, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return mv if mv is not None and mv.status == "READY" else None


def _existing_version(client, name: str, run_id: str, model_uri: str, fingerprint: str | None):
    """A READY version of this very run + model + evaluation set, so a repeated run is idempotent."""
    if fingerprint is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = mv.tags or {}
        if (
            mv.status == "READY"
            and tags.get(TAG + "model_uri") == model_uri
            and tags.get(TAG + "eval_fingerprint") == fingerprint
        ):
            return mv
    return None


@contextlib.contextmanager
def registry_lock(client, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Mutual exclusion across processes and machines that share the tracking server.

    Creating a registered model is atomic on the server (its name is unique), so the lock is the
    registered model ``<name>.lock``: created to acquire, deleted to release. A lock older than
    :data:`LOCK_STALE_AFTER_S` (holder crashed) is taken over.
    """
    from mlflow.exceptions import MlflowException

    lock = f"{name}.lock"
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"holder": holder, "since": str(time.time())},
                description="lungseg registration lock (transient; safe to delete if stale)",
            )
            break
        except MlflowException as exc:
            if not _is_code(exc, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        with contextlib.suppress(MlflowException):
            current = client.get_registered_model(lock)
            since = float((current.tags or {}).get("since", "0") or 0)
            if since and time.time() - since > LOCK_STALE_AFTER_S:
                client.delete_registered_model(lock)  # stale: its holder is gone
                continue
        if time.monotonic() > deadline:
            raise RegistryError(f"could not acquire the registry lock {lock!r} within {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            current = client.get_registered_model(lock)
            if (current.tags or {}).get("holder") == holder:
                client.delete_registered_model(lock)


#: the registry's name for :func:`lungseg.tracking.scoped_tracking_uri` (one implementation)
scoped_mlflow_uri = scoped_tracking_uri


def _create_version(tracking_uri: str, name: str, model_uri: str, tags: dict[str, str]):
    """A new version of ``name`` from ``model_uri`` (``models:/m-…`` logged model or ``runs:/…``).

    ``mlflow.register_model`` resolves both kinds, and a sqlite registry resolves a ``models:/``
    source through the *global* tracking URI, so both are scoped to ``tracking_uri`` meanwhile."""
    import mlflow

    with scoped_mlflow_uri(tracking_uri):
        return mlflow.register_model(model_uri, name, tags=tags, await_registration_for=300)


def below_floor(cfg, candidate: float) -> bool:
    """Whether ``candidate`` is worse than ``register.min_metric`` (never promoted then)."""
    floor = cfg.floor
    if floor is None:
        return False
    return candidate < floor if cfg.greater_is_better else candidate > floor


def _decide(cfg, candidate: float, fingerprint: str | None, run_id: str, champion) -> tuple[bool, float | None, str]:
    """(promote?, champion's number or None, reason)."""
    if below_floor(cfg, candidate):
        before = None
        if champion is not None:
            with contextlib.suppress(KeyError, ValueError):
                before = float((champion.tags or {})[TAG + "metric_value"])
        return (
            False,
            before,
            (
                f"{cfg.metric} {candidate:.4f} is {'below' if cfg.greater_is_better else 'above'} register.min_metric "
                f"{cfg.floor}: registered, not promoted"
            ),
        )
    if champion is None:
        return True, None, "no champion yet"
    tags = champion.tags or {}
    try:
        before = float(tags[TAG + "metric_value"])
    except (KeyError, ValueError):
        before = None
    if champion.run_id and champion.run_id == run_id:
        return True, before, f"same run as champion v{champion.version} (re-evaluated): the alias follows it"
    if tags.get(TAG + "metric") != cfg.metric or before is None:
        return (
            False,
            before,
            (
                f"champion v{champion.version} has no recorded {cfg.metric}: not compared; "
                "re-evaluate and register the champion's run on this set to compare"
            ),
        )
    if fingerprint is None or tags.get(TAG + "eval_fingerprint") != fingerprint:
        return (
            False,
            before,
            (
                f"champion v{champion.version} was evaluated on a different evaluation set "
                f"({tags.get(TAG + 'eval_fingerprint', 'unknown')} vs {fingerprint or 'unknown'}): not compared; "
                "re-evaluate and register the champion's run on this set to compare"
            ),
        )
    better = candidate > before if cfg.greater_is_better else candidate < before
    if better:
        return True, before, f"beats champion v{champion.version} on the same evaluation set"
    return False, before, f"does not beat champion v{champion.version} on the same evaluation set"


def _model_name(cfg, client, run_info: dict[str, Any], run_file: Path) -> str:
    """``register.model_name`` with ``{model}`` filled from the training run's architecture
    (``mlflow_run.json["model"]``, else the run's ``model`` tag)."""
    if not cfg.needs_model:
        return cfg.model_name
    arch = run_info.get("model")
    if not arch:
        from mlflow.exceptions import MlflowException

        try:
            arch = client.get_run(run_info["run_id"]).data.tags.get("model")
        except MlflowException as exc:
            raise RegistryError(f"cannot read training run {run_info['run_id']}: {exc}") from exc
    if not arch:
        raise DataError(
            run_file,
            "no 'model' recorded (nor a 'model' tag on its MLflow run): cannot fill "
            f"register.model_name {cfg.model_name!r}; set a fixed name or re-run `lungseg train`",
        )
    return cfg.resolved_name(arch)


def _evaluation_run_id(evaluation_dir: Path) -> str | None:
    """The MLflow run of the evaluation (``mlflow_logging.json``, written by ``lungseg evaluate``), if any."""
    import json

    path = evaluation_dir / "mlflow_logging.json"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("run_id"):
            return str(data["run_id"])
    return None


# ------------------------------------------------------------------------------ the steps of register
@dataclass(frozen=True)
class _Candidate:
    """What :func:`register` registers: the training run's weights and their evaluation."""

    run_id: str
    model_uri: str
    value: float
    """The promotion metric (``register.metric``) of the evaluation."""
    fingerprint: str | None
    fingerprint_source: str
    metrics: dict[str, Any]
    eval_run: str | None
    """The evaluation's own MLflow run, if it logged one."""


class _Outcome(NamedTuple):
    """Where the alias went: ``promote`` (``alias`` is the champion alias) or not, the champion's
    number and version before, and why."""

    promote: bool
    before: float | None
    reason: str
    champion_version: str | None
    alias: str


def _version_tags(cfg, cand: _Candidate) -> dict[str, str]:
    """The tags a new version carries about its evaluation (its lineage tags are added to them)."""
    metrics = cand.metrics
    return {
        TAG + "metric": cfg.metric,
        TAG + "metric_value": repr(cand.value),
        TAG + "eval_fingerprint": cand.fingerprint or "unknown",
        TAG + "eval_fingerprint_source": cand.fingerprint_source,
        TAG + "eval_split": str(metrics.get("split")),
        TAG + "eval_n_images": str(metrics.get("n_images")),
        TAG + "model_uri": cand.model_uri,
        TAG + "model_sha256": str(metrics.get("model_sha256")),
        TAG + "eval_run_id": cand.eval_run or "none",
    }


def _ready_version(client, tracking_uri: str, name: str, cfg, cand: _Candidate) -> tuple[str, bool]:
    """``(version, reused)``: the READY version of ``name`` for this run + evaluation set — the one
    a repeated run registered (``reused``) or a new one, tagged (an alias is set only on a READY version)."""
    _ensure_registered_model(client, name)
    mv = _existing_version(client, name, cand.run_id, cand.model_uri, cand.fingerprint)
    reused = mv is not None
    if mv is None:
        tags = {**_version_tags(cfg, cand), **_lineage_tags(client, cand.run_id)}
        mv = _create_version(tracking_uri, name, cand.model_uri, tags)
    mv = _wait_ready(client, name, mv.version)
    return str(mv.version), reused


def _version_of(mv) -> str | None:
    return None if mv is None else str(mv.version)


def _judge(client, name: str, cfg, version: str, cand: _Candidate) -> tuple[bool, float | None, str, str | None]:
    """``(promote, champion's number, reason, champion's version)`` against the champion read now."""
    champion = _alias_version(client, name, cfg.champion_alias)
    if champion is not None and str(champion.version) == version:
        return True, cand.value, "already champion (repeated run)", version
    promote, before, reason = _decide(cfg, cand.value, cand.fingerprint, cand.run_id, champion)
    return promote, before, reason, _version_of(champion)


def _try_alias(client, name: str, cfg, version: str, cand: _Candidate) -> _Outcome | None:
    """One attempt: decide, re-check that the champion has not moved since it was read, set the alias
    and check it points at ``version``. None when the champion moved or the alias did not stick."""
    promote, before, reason, champion_version = _judge(client, name, cfg, version, cand)
    # re-check: the champion must not have moved between the read and the write
    if _version_of(_alias_version(client, name, cfg.champion_alias)) != champion_version:
        return None
    alias = cfg.champion_alias if promote else cfg.challenger_alias
    client.set_registered_model_alias(name, alias, version)
    if _version_of(_alias_version(client, name, alias)) != version:
        return None
    if promote and _version_of(_alias_version(client, name, cfg.challenger_alias)) == version:
        client.delete_registered_model_alias(name, cfg.challenger_alias)  # a promoted challenger is no longer one
    return _Outcome(promote, before, reason, champion_version, alias)


def _move_alias(client, name: str, cfg, version: str, cand: _Candidate, attempts: int = 5) -> _Outcome:
    """Under the registry lock, :func:`_try_alias` until it succeeds (``attempts`` at most)."""
    with registry_lock(client, name):
        for _attempt in range(attempts):
            outcome = _try_alias(client, name, cfg, version, cand)
            if outcome is not None:
                return outcome
        raise RegistryError(f"{name}: the champion kept moving during registration; run again")


def _decision(
    name: str, version: str, cfg, cand: _Candidate, outcome: _Outcome, tracking_uri: str, reused: bool
) -> Decision:
    return Decision(
        model_name=name,
        version=version,
        metric=cfg.metric,
        candidate=cand.value,
        champion_before=outcome.before,
        champion_before_version=outcome.champion_version,
        decision="champion" if outcome.promote else "challenger",
        alias=outcome.alias,
        reason=outcome.reason,
        fingerprint=cand.fingerprint,
        fingerprint_source=cand.fingerprint_source,
        split=cand.metrics.get("split"),
        run_id=cand.run_id,
        model_uri=cand.model_uri,
        tracking_uri=tracking_uri,
        reused_version=reused,
    )


def _tag_decision(client, name: str, version: str, decision: Decision, below_min_metric: bool) -> None:
    """The decision, both numbers and when, as tags on the version."""
    before = decision.champion_before
    for key, value in {
        TAG + "decision": decision.decision,
        TAG + "decision_reason": decision.reason,
        TAG + "candidate_value": repr(decision.candidate),
        TAG + "champion_before_value": "none" if before is None else repr(before),
        TAG + "champion_before_version": decision.champion_before_version or "none",
        TAG + "below_min_metric": str(below_min_metric).lower(),
        TAG + "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }.items():
        client.set_model_version_tag(name, version, key, value)


# --------------------------------------------------------------------------------------------- API
def _lineage_tags(client, run_id: str) -> dict[str, str]:
    """What the version carries of its training run's lineage (``lungseg lineage`` reads it back): the
    raw data version (``lungseg.data.*``), code commit, processed-data hash and image of the training
    run, plus the image/KFP run this register step runs in (:func:`lungseg.lineage.run_context_tags`).
    A version then answers "which data, code and run made you" even when its run is deleted."""
    from mlflow.exceptions import MlflowException

    from lungseg import lineage

    keep = (lineage.CODE_COMMIT_TAG, lineage.PROCESSED_HASH_TAG, lineage.IMAGE_TAG, lineage.KFP_RUN_TAG)
    try:
        run_tags = client.get_run(run_id).data.tags
    except MlflowException as exc:
        raise LungsegError(f"training run {run_id}: cannot be read from the tracking store ({exc.message})") from exc
    tags = {k: v for k, v in run_tags.items() if k.startswith(lineage.TAG) or k in keep}
    tags.update(lineage.run_context_tags())
    return tags


def register(params, model_dir: str | Path, evaluation_dir: str | Path, output: str | Path) -> Decision:
    """Register the evaluated model, move ``champion`` only if it is better; write the decision."""
    from lungseg.io import atomic_write_json, check_output_file
    from lungseg.tracking import portable_uri, resolve_tracking_uri

    cfg = params.register
    model_dir, evaluation_dir, output = Path(model_dir), Path(evaluation_dir), Path(output)
    check_output_file(output)  # before anything is registered
    run_file = model_dir / "mlflow_run.json"
    run = RunFile.from_file(run_file).require("model_uri")
    run_info = run.to_dict()
    metrics_path = evaluation_dir / "metrics.json"
    metrics = _read_json(metrics_path, "written by `lungseg evaluate`")
    check_binding(run_info, metrics, model_dir, metrics_path)
    candidate = _candidate_value(metrics, cfg.metric, metrics_path)
    fingerprint, fp_source = evaluation_fingerprint(metrics, evaluation_dir)
    tracking_uri = run.resolved_tracking_uri() or resolve_tracking_uri(params)
    run_id, model_uri = run_info["run_id"], run_info["model_uri"]
    eval_run = _evaluation_run_id(evaluation_dir)

    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    name = _model_name(cfg, client, run_info, model_dir / "mlflow_run.json")
    cand = _Candidate(run_id, model_uri, candidate, fingerprint, fp_source, metrics, eval_run)
    try:
        version, reused = _ready_version(client, tracking_uri, name, cfg, cand)
        outcome = _move_alias(client, name, cfg, version, cand)
        decision = _decision(name, version, cfg, cand, outcome, portable_uri(tracking_uri, output), reused)
        _tag_decision(client, name, version, decision, below_floor(cfg, candidate))
    except MlflowException as exc:
        raise RegistryError(f"MLflow registry at {tracking_uri}: {exc.message}") from exc
    atomic_write_json(output, decision.to_dict())
    return decision
