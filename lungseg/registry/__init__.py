"""Register an evaluated model in the MLflow model registry and decide champion / challenger.

``register(params, model_dir, evaluation_dir, output)``:

1. reads the run (``model_dir/mlflow_run.json``: ``run_id, tracking_uri, model_uri``) and the
   evaluation (``evaluation_dir/metrics.json``: the promotion metric, the split, the evaluation-set
   fingerprint) and checks that the evaluation **belongs to this model** (:func:`check_binding`):
   its ``run_id`` is the run's, its checkpoint is ``best.pt`` (the weights logged as ``model_uri``)
   and its ``model_sha256`` is the sha256 of ``model_dir/best.pt`` (and of the ``best.pt`` training
   recorded, ``best_sha256``). Otherwise: :class:`~lungseg.errors.DataError`, nothing registered;
   It also checks that the training run (and the evaluation's own run, when it logged one) **exists in
   the tracking store being used** (:func:`check_runs_in_store`): a record of another store is refused
   in one line naming the fix;
2. **the served model is the evaluated one, by construction**: it logs the portable model
   (:func:`lungseg.artifacts.pyfunc.log_model`) from ``best.pt``'s weights **with the serving settings
   the evaluation recorded** (``metrics.json["serving"]``: threshold, preprocessing, post-processing,
   TTA; :mod:`lungseg.artifacts.serving`) to the training run, registers *that* logged model as a new
   version of ``params.register.model_name`` (``{model}`` filled with the run's architecture, e.g.
   ``lungseg-lgnet``) and waits until it is ``READY``. There is no second copy of the settings that could
   disagree: the version serves at the evaluated threshold. **Every evaluation is its own version**:
   a version is reused only when the very same evaluation (same ``metrics.json`` bytes, same evaluation
   run) is registered again — a repeated ``dvc repro`` — so a version's evaluation tags are always the
   ones of the evaluation it was decided on, never those of an older one;
3. under a registry-wide lock, first finishes a decision an interrupted ``register`` left pending
   (:mod:`lungseg.registry.decision`), reads the current champion, decides, re-checks that the champion
   has not moved, writes the whole decision ahead as a pending record, and only then sets the alias
   (``champion`` or ``challenger``) — aliases, never the deprecated stages — then verifies the alias
   points where it was set;
4. still under the lock, records the decision, both numbers and the fingerprints as tags on the version,
   writes the model card (Markdown: :func:`model_card`) into the version's description and deletes the
   pending record (so a kill anywhere in 3–4 is finished by the next ``register``, never lost); writes
   the decision JSON atomically to ``output`` — a file that must not exist yet (DVC deletes a stage's
   outputs before it runs it).

Policy (also in docs/pipeline.md, "Registry policy"), checked in this order:

* evaluated with ``--allow-preprocessing-mismatch`` (``metrics.json["preprocessing_mismatch"]``
  non-empty) → tagged ``lungseg.preprocessing_mismatch`` and never promoted unless ``register`` is
  given ``allow_preprocessing_mismatch`` too (``lungseg register --allow-preprocessing-mismatch``);
* not better than the best **trivial predictor** (all background / all foreground, scored by the
  evaluation on the same set: ``metrics.json["baselines"]``) by at least ``min_margin_over_trivial``
  (default :data:`MIN_MARGIN_OVER_TRIVIAL`) → never promoted; the decision line prints both numbers;
* below the floor ``register.min_metric`` (a worse score than it; ``null`` = no floor) → never
  promoted, whatever the champion (even when there is none): registered as challenger, ``reason``
  says so;
* no champion (or its alias dangles) → the candidate becomes champion;
* champion evaluated on the **same** evaluation set (same fingerprint, same metric) → the candidate
  becomes champion only if it is strictly better (``greater_is_better``); a tie keeps the champion;
* candidate is the champion's own run (same ``run_id``) re-evaluated on a **different** set with the
  **same serving settings** (fingerprint) → the alias follows it (same served model, the newest
  evaluation record) — this is how a champion is moved onto a new set. On the same set, or with other
  serving settings (another threshold, post-processing or TTA: another served model), it is compared
  like any candidate (a detour through another split cannot move the alias to worse settings);
* champion evaluated on a **different** set (or with no recorded fingerprint, or another metric) →
  not compared: the candidate becomes challenger, ``reason`` says so and what to do (re-evaluate
  the champion on this set and register it; see above).
* more generally, only like is compared with like (:mod:`lungseg.registry.comparable`): metric key,
  label names, dataset, split and evaluation set are tags of every version, and a champion that differs
  in any (or does not record one) is not compared and its number not reported; a candidate that
  segments **other labels** than the champion is refused before anything is registered (another task
  under this name: choose another ``register.model_name``).

The evaluation-set fingerprint is ``metrics.json["data_fingerprint"]`` when the evaluation wrote one
(sha256 of the split's manifest ``id,image_sha256,mask_sha256`` rows, see
:func:`lungseg.provenance.manifest_fingerprint`); otherwise it is derived from ``per_image.csv`` (split + sorted image
ids) and marked as weaker (``fingerprint_source``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lungseg.artifacts.run_file import RunFile
from lungseg.errors import ConfigError, DataError, LungsegError
from lungseg.provenance import evaluation_fingerprint
from lungseg.registry.comparable import differences, identity_tags, label_names, task_refusal
from lungseg.registry.decision import Journal, RegistryError, finish_pending, move_aliases, registry_lock, settle
from lungseg.registry.decision import is_code as _is_code
from lungseg.tracking import scoped_tracking_uri

TAG = "lungseg."
#: how much a promoted model must beat the best trivial predictor by, in units of ``register.metric``.
#: On the bundled sample the all-foreground predictor scores Dice ~0.24 and the demo LG-Net ~0.65; a
#: model that predicts all-foreground except a handful of pixels (an untrained net at lr 1e-9) lands
#: within ~0.01 of the constant predictor. 0.05 Dice is five times that and far below any model that
#: learned something.
MIN_MARGIN_OVER_TRIVIAL = 0.05
REGISTERED_MODEL_DESCRIPTION = (
    "lungseg lung CT segmentation model: each version is a portable MLflow pyfunc (network, weights, "
    "preprocessing and the serving settings it was evaluated with). The alias `champion` is the model the "
    "register step promoted; each version's description is its model card (evaluation, trivial baselines, "
    "serving settings, how to predict). See docs/pipeline.md."
)


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
    best_trivial: float | None = None
    best_trivial_name: str | None = None
    min_margin_over_trivial: float | None = None
    serving_fingerprint: str | None = None
    eval_run_id: str | None = None
    training_model_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        before, version = self.champion_before, self.champion_before_version
        if version is None:
            champion = "none"
        elif before is None:  # an unlike champion: its number is no comparison and is not printed
            champion = f"v{version} not compared"
        else:
            champion = f"{before:.4f} v{version}"
        return (
            f"{self.model_name} v{self.version}: {self.decision} ({self.metric} {self.candidate:.4f} vs champion "
            f"{champion}{self._trivial()}) — {self.reason}"
        )

    def _trivial(self) -> str:
        if self.best_trivial is None:
            return ""
        return f", best trivial {self.best_trivial_name} {self.best_trivial:.4f}"


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


def _ensure_registered_model(client, name: str) -> None:
    """The registered model ``name`` with :data:`REGISTERED_MODEL_DESCRIPTION` (created quietly: the
    versions are created with the client, not ``mlflow.register_model``, which prints "Registered model
    … already exists." even on a new store)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION)
        return
    except MlflowException as exc:
        if not _is_code(exc, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    if not (client.get_registered_model(name).description or "").strip():
        client.update_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION)


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


def _existing_version(client, name: str, run_id: str, evaluation_id: str):
    """A READY version registered from this very evaluation (``lungseg.evaluation_id``: the sha256 of
    ``metrics.json`` and the evaluation run), so a repeated run is idempotent. Another evaluation of the
    same weights — another threshold, set or run — is never matched: it gets its own version."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = mv.tags or {}
        if mv.status == "READY" and tags.get(TAG + "evaluation_id") == evaluation_id:
            return mv
    return None


#: the registry's name for :func:`lungseg.tracking.scoped_tracking_uri` (one implementation)
scoped_mlflow_uri = scoped_tracking_uri


def _create_version(client, tracking_uri: str, name: str, model_uri: str, run_id: str, tags: dict[str, str]):
    """A new version of ``name`` from the logged model ``model_uri`` (``models:/m-…``) of run ``run_id``.

    Created with the client (``mlflow.register_model`` prints its own lines on stderr); a sqlite registry
    resolves a ``models:/`` source through the *global* tracking URI, so it is scoped meanwhile."""
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    with scoped_mlflow_uri(tracking_uri):
        # await_creation_for=0: _wait_ready polls (MLflow's own wait logs a line on stderr)
        return client.create_model_version(
            name, model_uri, run_id=run_id, tags=tags, model_id=model_id, await_creation_for=0
        )


def below_floor(cfg, candidate: float) -> bool:
    """Whether ``candidate`` is worse than ``register.min_metric`` (never promoted then)."""
    floor = cfg.floor
    if floor is None:
        return False
    return candidate < floor if cfg.greater_is_better else candidate > floor


def _champion_value(champion) -> float | None:
    if champion is None:
        return None
    with contextlib.suppress(KeyError, ValueError):
        return float((champion.tags or {})[TAG + "metric_value"])
    return None


def _identity(cfg, cand: _Candidate) -> dict[str, str]:
    """What the candidate's number means (:mod:`lungseg.registry.comparable`): metric, labels, dataset,
    split and evaluation set."""
    dataset = (cand.serving or {}).get("dataset")
    return identity_tags(cfg.metric, cand.label_names, dataset, cand.metrics.get("split"), cand.fingerprint)


def _comparable_value(cfg, cand: _Candidate, champion) -> float | None:
    """The champion's number when it is like the candidate's (same metric, labels, dataset, split and
    evaluation set, all recorded), else None: an unlike number is never reported beside the candidate's."""
    if champion is None or differences(champion.tags or {}, _identity(cfg, cand)):
        return None
    return _champion_value(champion)


def _barrier(cfg, cand: _Candidate) -> str | None:
    """Why ``cand`` can never be promoted whatever the champion (None: it may be): evaluated on
    mismatched preprocessing without the register-time permission, below ``register.min_metric``, or no
    better than the best trivial predictor by the margin."""
    if cand.preprocessing_mismatch and not cand.allow_preprocessing_mismatch:
        return (
            f"evaluated with --allow-preprocessing-mismatch ({'; '.join(cand.preprocessing_mismatch)}): registered, "
            "not promoted; pass `lungseg register --allow-preprocessing-mismatch` to promote it anyway"
        )
    if below_floor(cfg, cand.value):
        return (
            f"{cfg.metric} {cand.value:.4f} is {'below' if cfg.greater_is_better else 'above'} register.min_metric "
            f"{cfg.floor}: registered, not promoted"
        )
    if cand.best_trivial is not None and cand.margin is not None:
        sign = 1.0 if cfg.greater_is_better else -1.0
        needed = cand.best_trivial + sign * cand.margin
        if sign * (cand.value - needed) < 0:
            return (
                f"{cfg.metric} {cand.value:.4f} does not beat the best trivial predictor ({cand.best_trivial_name} "
                f"{cand.best_trivial:.4f}) by register.min_margin_over_trivial {cand.margin:g} (needs "
                f"{'≥' if sign > 0 else '≤'} {needed:.4f}): registered, not promoted"
            )
    return None


def _decide(cfg, cand: _Candidate, champion) -> tuple[bool, float | None, str]:
    """(promote?, champion's number or None, reason). The champion's number is compared — and reported —
    only when it is like the candidate's (:func:`lungseg.registry.comparable.differences`)."""
    barrier = _barrier(cfg, cand)
    if barrier is not None:
        return False, _comparable_value(cfg, cand, champion), barrier
    if champion is None:
        return True, None, "no champion yet"
    tags = champion.tags or {}
    before = _champion_value(champion)
    unlike = differences(tags, _identity(cfg, cand))
    same_set = cand.fingerprint is not None and tags.get(TAG + "eval_fingerprint") == cand.fingerprint
    same_serving = tags.get(TAG + "serving_fingerprint", "none") == (cand.serving_fingerprint or "none")
    if champion.run_id and champion.run_id == cand.run_id and not same_set and same_serving:
        return (
            True,
            None,  # the champion's number is of another set: not a comparison
            f"same run as champion v{champion.version} re-evaluated on another set: the alias follows it",
        )
    if unlike or before is None:
        what = "; ".join(unlike) or f"no recorded {cfg.metric} value"
        where = "on a different evaluation set" if not same_set else "differently"
        return (
            False,
            None,
            (
                f"champion v{champion.version} was evaluated {where} (champion vs candidate: {what}): not "
                "compared; re-evaluate and register the champion's run on this set to compare"
            ),
        )
    better = cand.value > before if cfg.greater_is_better else cand.value < before
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
    best_trivial: float | None = None
    """The best trivial predictor's ``register.metric`` on the same set (``metrics.json["baselines"]``)."""
    best_trivial_name: str | None = None
    margin: float | None = None
    """``min_margin_over_trivial``: how much ``value`` must beat ``best_trivial`` by."""
    preprocessing_mismatch: tuple[str, ...] = ()
    allow_preprocessing_mismatch: bool = False
    serving: dict[str, Any] | None = None
    serving_fingerprint: str | None = None
    evaluation_id: str = ""
    """sha256 of ``metrics.json`` and the evaluation run: a version is reused only for the same one."""
    training_model_uri: str | None = None
    label_names: str = "not recorded"
    """What the model segments (:func:`lungseg.registry.comparable.label_names`): part of what its number means."""


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
        TAG + "model_sha256": str(metrics.get("model_sha256")),
        TAG + "eval_run_id": cand.eval_run or "none",
        TAG + "evaluation_id": cand.evaluation_id,
        TAG + "serving_fingerprint": cand.serving_fingerprint or "none",
        TAG + "serving_threshold": str((cand.serving or {}).get("threshold")),
        TAG + "best_trivial_value": "none" if cand.best_trivial is None else repr(cand.best_trivial),
        TAG + "best_trivial": cand.best_trivial_name or "none",
        TAG + "min_margin_over_trivial": "none" if cand.margin is None else repr(cand.margin),
        TAG + "preprocessing_mismatch": "; ".join(cand.preprocessing_mismatch) or "none",
        TAG + "training_model_uri": cand.training_model_uri or "none",
        **_identity(cfg, cand),  # metric, labels, dataset, split, evaluation set: what the number means
    }


def _ready_version(client, tracking_uri: str, name: str, cfg, cand: _Candidate, log_served) -> tuple[str, bool, str]:
    """``(version, reused, model_uri)``: the READY version of ``name`` for this evaluation — the one a
    repeated run registered (``reused``) or a new one of the model ``log_served()`` logs with the
    evaluated serving settings, tagged (an alias is set only on a READY version)."""
    _ensure_registered_model(client, name)
    mv = _existing_version(client, name, cand.run_id, cand.evaluation_id)
    reused = mv is not None
    if mv is None:
        model_uri = log_served()
        tags = {**_version_tags(cfg, cand), TAG + "model_uri": model_uri, **_lineage_tags(client, cand.run_id)}
        mv = _create_version(client, tracking_uri, name, model_uri, cand.run_id, tags)
    else:  # the same evaluation decided again, maybe under another register policy (metric, margin): its tags
        # describe this decision, never the first one's metric and value
        for key, value in _version_tags(cfg, cand).items():
            if (mv.tags or {}).get(key) != value:
                client.set_model_version_tag(name, mv.version, key, value)
    mv = _wait_ready(client, name, mv.version)
    return str(mv.version), reused, (mv.tags or {}).get(TAG + "model_uri") or str(mv.source)


def _version_of(mv) -> str | None:
    return None if mv is None else str(mv.version)


def _judge(client, name: str, cfg, version: str, cand: _Candidate) -> tuple[bool, float | None, str, str | None]:
    """``(promote, champion's number, reason, champion's version)`` against the champion read now."""
    champion = _alias_version(client, name, cfg.champion_alias)
    if champion is not None and str(champion.version) == version:
        barrier = _barrier(cfg, cand)  # the policy as it is now, not as it was when the alias moved
        if barrier is not None:
            return False, cand.value, f"champion v{version} no longer passes the policy, demoted: {barrier}", version
        return True, cand.value, "already champion (repeated run)", version
    promote, before, reason = _decide(cfg, cand, champion)
    return promote, before, reason, _version_of(champion)


def _try_alias(client, name: str, cfg, version: str, cand: _Candidate, journal: Journal | None = None):
    """One attempt: decide, re-check that the champion has not moved since it was read, write the
    decision ahead (``journal``: :mod:`lungseg.registry.decision`), move the aliases and check the alias
    points at ``version``. None when the champion moved or the alias did not stick."""
    promote, before, reason, champion_version = _judge(client, name, cfg, version, cand)
    # re-check: the champion must not have moved between the read and the write
    if _version_of(_alias_version(client, name, cfg.champion_alias)) != champion_version:
        return None
    alias = cfg.champion_alias if promote else cfg.challenger_alias
    outcome = _Outcome(promote, before, reason, champion_version, alias)
    if journal is not None:
        journal.before_move(client, outcome)  # a kill from here on is finished by the next register
    move = {"version": version, "promote": promote, "champion_version": champion_version, "alias": alias}
    # demoted: the alias never names a model the policy refuses; a promoted challenger is no longer one
    if not move_aliases(client, name, (cfg.champion_alias, cfg.challenger_alias), move):
        return None
    return outcome


def _move_alias(
    client, name: str, cfg, version: str, cand: _Candidate, attempts: int = 5, journal: Journal | None = None
) -> _Outcome:
    """Under the registry lock: a decision an interrupted register left pending finished first, then
    :func:`_try_alias` until it succeeds (``attempts`` at most), then the decision recorded (``journal``)."""
    with registry_lock(client, name):
        if journal is not None:
            finish_pending(client, name)
        for _attempt in range(attempts):
            outcome = _try_alias(client, name, cfg, version, cand, journal)
            if outcome is not None:
                if journal is not None:
                    journal.complete(client)
                return outcome
        if journal is not None:
            journal.abandon(client)
        raise RegistryError(f"{name}: the champion kept moving during registration; run again")


def _decision(
    name: str, version: str, cfg, cand: _Candidate, outcome: _Outcome, tracking_uri: str, reused: bool, model_uri: str
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
        model_uri=model_uri,
        tracking_uri=tracking_uri,
        reused_version=reused,
        best_trivial=cand.best_trivial,
        best_trivial_name=cand.best_trivial_name,
        min_margin_over_trivial=cand.margin,
        serving_fingerprint=cand.serving_fingerprint,
        eval_run_id=cand.eval_run,
        training_model_uri=cand.training_model_uri,
    )


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


def check_runs_in_store(client, tracking_uri: str, run_id: str, run_file: Path, eval_run: str | None, eval_dir: Path):
    """:class:`DataError` (one line naming the fix) unless the training run ``run_id`` — and the
    evaluation's run ``eval_run``, when it logged one — exists in the tracking store ``tracking_uri``:
    a model trained or evaluated into another store (another ``MLFLOW_TRACKING_URI``, a server that was
    reset) is never registered into this one."""
    from mlflow.exceptions import MlflowException

    for what, rid, where, fix in (
        ("training run", run_id, run_file, "train it into this store (`lungseg train` / `dvc repro --force`)"),
        ("evaluation run", eval_run, eval_dir / "mlflow_logging.json", "evaluate it again into this store"),
    ):
        if not rid:
            continue
        try:
            run = client.get_run(rid)
        except MlflowException as exc:
            if not _is_code(exc, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                raise RegistryError(f"MLflow store at {tracking_uri}: {exc.message}") from exc
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            raise DataError(
                where,
                f"names {what} {rid}, which is not in the tracking store being used ({tracking_uri}): {fix}, "
                "or point MLFLOW_TRACKING_URI at the store it was logged to",
            )


def _serving_of(metrics: dict[str, Any], metrics_path: Path):
    """The :class:`~lungseg.artifacts.serving.ServingSettings` the evaluation recorded, checked against
    its recorded fingerprint; an evaluation without them is refused (evaluate again)."""
    from lungseg.artifacts.serving import ServingSettings

    recorded = metrics.get("serving")
    if not isinstance(recorded, dict) or not metrics.get("serving_fingerprint"):
        raise DataError(
            metrics_path,
            "does not record the serving settings it evaluated with (written by an older lungseg evaluate): "
            "run `lungseg evaluate` again",
        )
    try:
        settings = ServingSettings.from_dict(recorded)
    except (TypeError, ValueError) as exc:
        raise DataError(metrics_path, f"serving: {exc}") from exc
    if settings.fingerprint() != metrics["serving_fingerprint"]:
        raise DataError(
            metrics_path,
            f"serving settings do not match their fingerprint ({settings.fingerprint()[:19]}… vs "
            f"{str(metrics['serving_fingerprint'])[:19]}…): the file was edited; run `lungseg evaluate` again",
        )
    return settings


def _best_trivial(
    cfg, metrics: dict[str, Any], metrics_path: Path, required: bool = True
) -> tuple[float | None, str | None]:
    """The best trivial predictor's ``register.metric`` (``metrics.json["baselines"]``) and its name; when
    the baselines score no such metric, a ``DataError`` if the margin check is ``required``, else None."""
    baselines = metrics.get("baselines")
    if not isinstance(baselines, dict) or not baselines:
        raise DataError(
            metrics_path,
            "does not record the trivial baselines (all background / all foreground; written by an older "
            "lungseg evaluate): run `lungseg evaluate` again",
        )
    scored = [
        (float(b[cfg.metric]), name)
        for name, b in baselines.items()
        if isinstance(b, dict) and isinstance(b.get(cfg.metric), (int, float)) and math.isfinite(b[cfg.metric])
    ]
    if not scored and not required:
        return None, None
    if not scored:
        scoring = sorted({k for b in baselines.values() if isinstance(b, dict) for k in b if k != "n_images"})
        raise DataError(
            metrics_path,
            f"the trivial baselines score no register.metric {cfg.metric!r}, so a model could not be checked "
            f"against them (a constant predictor would pass): choose a metric they score ({', '.join(scoring)}), "
            "or set register.min_margin_over_trivial: null to register without the check",
        )
    best = max(scored) if cfg.greater_is_better else min(scored)
    return best[0], best[1]


def _evaluation_id(metrics_path: Path, eval_run: str | None) -> str:
    import hashlib

    digest = hashlib.sha256(metrics_path.read_bytes())
    digest.update(f"\0{eval_run or ''}".encode())
    return "sha256:" + digest.hexdigest()


def _served_model_logger(model_dir: Path, settings, tracking_uri: str, run_id: str):
    """A function that logs the portable model of ``model_dir/best.pt`` with ``settings`` to the training
    run ``run_id`` and returns its ``models:/m-…`` URI (called only when a new version is needed), and
    the network's parameter count."""
    from lungseg.artifacts.checkpoint import BEST, build_model, load_checkpoint
    from lungseg.artifacts.pyfunc import log_model

    ckpt = load_checkpoint(model_dir / BEST)
    preprocess = dict(ckpt.get("preprocess") or {})
    if "image_size" not in preprocess:
        if ckpt.get("image_size") is None:
            raise DataError(model_dir / BEST, "records no image_size: cannot serve it (train it again)")
        preprocess["image_size"] = ckpt["image_size"]
    if settings.image_size is not None and int(settings.image_size) != int(preprocess["image_size"]):
        raise DataError(
            model_dir / BEST,
            f"was trained at {preprocess['image_size']}² but evaluated with serving image_size "
            f"{settings.image_size}: evaluate this model again",
        )
    net = build_model(ckpt["model_identity"])
    net.load_state_dict(ckpt["model_state"])
    net.eval()

    def log_served() -> str:
        with scoped_mlflow_uri(tracking_uri), _quiet_mlflow():
            return log_model(
                net, identity=ckpt["model_identity"], preprocess=preprocess, serving=settings, run_id=run_id
            )

    card = {
        "identity": ckpt["model_identity"],
        "parameters": sum(int(p.numel()) for p in net.parameters()),
        "preprocess": preprocess,
        "epoch": ckpt.get("epoch"),
    }
    return log_served, card


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No progress bars and no INFO lines ("Validating input example …") from MLflow while register
    logs the served model: the command prints its decision line, warnings and errors only."""
    import logging

    from lungseg.envvars import scoped_environ

    loggers = [logging.getLogger(n) for n in ("mlflow.pyfunc", "mlflow.models", "mlflow.store")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        with scoped_environ({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def _card_evaluation(decision: Decision, cand: _Candidate) -> list[str]:
    """The card's evaluation section: the decision, and the model beside the trivial predictors."""
    m = cand.metrics
    baselines = {k: v for k, v in (m.get("baselines") or {}).items() if isinstance(v, dict)}
    rows = [k for k in ("dice_mean", "iou_mean", "sen_mean", "spe_mean", "hd95_mean") if k in m]
    if decision.metric not in rows:
        rows.insert(0, decision.metric)
    before = decision.champion_before
    champ = "none" if before is None else f"{before:.4f} (v{decision.champion_before_version})"
    if before is None and decision.champion_before_version is not None:
        champ = f"v{decision.champion_before_version}, not compared (see the decision)"
    lines = [
        "## Evaluation it was decided on",
        f"Decision: **{decision.decision}** — {decision.reason}.",
        "",
        f"{decision.metric} {decision.candidate:.4f}; champion before: {champ}; best trivial predictor: "
        f"{decision.best_trivial_name} {_fmt(decision.best_trivial)} (required margin "
        f"{_fmt(decision.min_margin_over_trivial)}).",
        "",
        f"Split **{m.get('split')}**, {m.get('n_images')} images "
        f"({m.get('split_level') or 'split level not recorded'}), evaluation set "
        f"`{cand.fingerprint or 'unknown'}`; training run `{cand.run_id}`, evaluation run "
        f"`{cand.eval_run or 'not logged'}`.",
        "",
        "| metric | this model | " + " | ".join(baselines) + " |",
        "|" + " --- |" * (2 + len(baselines)),
    ]
    for k in rows:
        lines.append(f"| {k} | {_fmt(m.get(k))} | " + " | ".join(_fmt(b.get(k)) for b in baselines.values()) + " |")
    return lines


def _card_data(tags: dict[str, str]) -> list[str]:
    from lungseg import lineage

    data = {k[len(lineage.TAG) :]: v for k, v in tags.items() if k.startswith(lineage.TAG)}
    raw = "not recorded"
    if data:
        raw = f"`{data.get('path', '?')}` @ {data.get('rev', '?')} (commit {data.get('commit', '?')}, "
        raw += f"DVC hash {data.get('md5', '?')})"
    return [
        "## Data",
        f"* raw data: {raw}",
        f"* processed data: `{tags.get(lineage.PROCESSED_HASH_TAG, 'not recorded')}`",
        f"* code: commit `{tags.get(lineage.CODE_COMMIT_TAG, 'not recorded')}`",
    ]


def model_card(name: str, version: str, decision: Decision, cand: _Candidate, model: dict[str, Any], tags: dict) -> str:
    """The Markdown model card written into the version's description (see docs/pipeline.md): what it
    segments, architecture and size, data, the evaluation it was decided on beside the trivial
    predictors, the serving settings, intended use and limits, how to predict with it."""
    from lungseg.artifacts.checkpoint import fmt_identity

    pre, serving = model["preprocess"], cand.serving or {}
    labels = ", ".join(pre.get("label_names") or []) or "foreground"
    mismatch = cand.preprocessing_mismatch
    lines = [
        f"# {name} v{version} — lung CT segmentation",
        "",
        f"**Segments** {labels} on axial CT slices (dataset {pre.get('dataset') or 'not recorded'}, "
        f"{pre.get('image_size')}² model input, HU window {pre.get('hu_window')}).",
        "",
        f"**Architecture** `{fmt_identity(model['identity'])}`: {model['parameters']:,} parameters "
        f"(best epoch {model.get('epoch')}).",
        "",
        *_card_data(tags),
        "",
        *_card_evaluation(decision, cand),
        "",
        "## Serving settings",
        f"This version serves exactly as it was evaluated (fingerprint `{cand.serving_fingerprint}`):",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {k} | `{v}` |" for k, v in serving.items()),
        "",
        "## Intended use and limits",
        "Research and demonstration of the lungseg pipeline: **not a medical device**, not for diagnosis. "
        "Trained and evaluated on the data above only; expect a rough mask on other scanners, protocols or "
        "resolutions. Input slices are preprocessed as recorded (HU window to [0, 1], resized to the model "
        "input; `lungseg predict` does both).",
        *([f"Evaluated on differently preprocessed data: {'; '.join(mismatch)}."] if mismatch else []),
        "",
        "## How to predict",
        "```bash",
        f"lungseg predict --model models:/{name}/{version} --input SCAN --output DIR",
        "```",
        f'In Python: `mlflow.pyfunc.load_model("models:/{name}/{version}")` '
        '`.predict(slices, params={"output": "labels"})` (slices float32 (N, H, W) in [0, 1]).',
    ]
    return "\n".join(lines) + "\n"


def register(
    params,
    model_dir: str | Path,
    evaluation_dir: str | Path,
    output: str | Path,
    *,
    allow_preprocessing_mismatch: bool = False,
    min_margin_over_trivial: float | None | str = "config",
) -> Decision:
    """Register the evaluated model as it was evaluated, move ``champion`` only if it is better; write
    the decision. ``allow_preprocessing_mismatch``: an evaluation made with
    ``--allow-preprocessing-mismatch`` may be promoted; ``min_margin_over_trivial``: how much the model
    must beat the best trivial predictor by (None: no margin check; default ``register.min_margin_over_trivial``)."""
    from lungseg.io import atomic_write_json
    from lungseg.tracking import check_store_in_use, portable_uri, resolve_tracking_uri

    cfg = params.register
    if min_margin_over_trivial == "config":
        min_margin_over_trivial = getattr(cfg, "min_margin_over_trivial", MIN_MARGIN_OVER_TRIVIAL)
    model_dir, evaluation_dir, output = Path(model_dir), Path(evaluation_dir), Path(output)
    _check_new_output(output)  # before anything is registered
    run_file = model_dir / "mlflow_run.json"
    run = RunFile.from_file(run_file).require("model_uri")
    run_info = run.to_dict()
    metrics_path = evaluation_dir / "metrics.json"
    metrics = _read_json(metrics_path, "written by `lungseg evaluate`")
    check_binding(run_info, metrics, model_dir, metrics_path)
    candidate = _candidate_value(metrics, cfg.metric, metrics_path)
    serving = _serving_of(metrics, metrics_path)
    trivial, trivial_name = _best_trivial(cfg, metrics, metrics_path, required=min_margin_over_trivial is not None)
    fingerprint, fp_source = evaluation_fingerprint(metrics, evaluation_dir)
    # the store named (MLFLOW_TRACKING_URI, else params) must be the runs' store: never decide in another one
    # (the CLI, the KFP component and any caller of this function alike)
    tracking_uri = check_store_in_use(params, run.resolved_tracking_uri(), run_file, "register") or (
        resolve_tracking_uri(params)
    )
    run_id = run_info["run_id"]
    eval_run = _evaluation_run_id(evaluation_dir)

    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    check_runs_in_store(client, tracking_uri, run_id, run_file, eval_run, evaluation_dir)
    log_served, model = _served_model_logger(model_dir, serving, tracking_uri, run_id)
    name = _model_name(cfg, client, run_info, run_file)
    cand = _Candidate(
        run_id,
        run_info["model_uri"],
        candidate,
        fingerprint,
        fp_source,
        metrics,
        eval_run,
        best_trivial=trivial,
        best_trivial_name=trivial_name,
        margin=None if min_margin_over_trivial is None else float(min_margin_over_trivial),
        preprocessing_mismatch=tuple(metrics.get("preprocessing_mismatch") or ()),
        allow_preprocessing_mismatch=allow_preprocessing_mismatch,
        serving=serving.to_dict(),
        serving_fingerprint=serving.fingerprint(),
        evaluation_id=_evaluation_id(metrics_path, eval_run),
        training_model_uri=run_info["model_uri"],
        label_names=label_names(model["preprocess"], model["identity"]),
    )
    try:
        refusal = task_refusal(name, _alias_version(client, name, cfg.champion_alias), _identity(cfg, cand), run_id)
        if refusal is not None:  # another task under this name: refused before anything is registered
            raise DataError(metrics_path, refusal)
        version, reused, model_uri = _ready_version(client, tracking_uri, name, cfg, cand, log_served)
        uri = portable_uri(tracking_uri, output)

        def build(outcome: _Outcome, decided_at: str, tags: dict[str, str]):  # the whole decision, before the move
            decision = _decision(name, version, cfg, cand, outcome, uri, reused, model_uri)
            card = lambda d, t: model_card(name, version, d, cand, model, t)  # noqa: E731
            return settle(decision, tags, below_floor(cfg, candidate), decided_at, card)

        journal = Journal(name, version, (cfg.champion_alias, cfg.challenger_alias), build)
        _move_alias(client, name, cfg, version, cand, journal=journal)
        decision = journal.decision
    except MlflowException as exc:
        raise RegistryError(f"MLflow registry at {tracking_uri}: {exc.message}") from exc
    atomic_write_json(output, decision.to_dict())
    return decision


def _check_new_output(output: Path) -> None:
    """``output`` must be a new file: a decision record is never overwritten (``dvc repro`` deletes the
    stage's output before running it)."""
    from lungseg.io import check_output_file

    check_output_file(output)
    if output.exists():
        raise DataError(
            output,
            "exists: a decision record is never overwritten; remove it or name another --output file",
        )
