"""The training's MLflow run: opened (or re-opened on resume) and tagged, its params, its results and
the portable model logged, and ``mlflow_run.json`` written (see ``docs/training.md``, "MLflow")."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from lungseg.artifacts.checkpoint import BEST, CHECKPOINT, TrainState, build_model, load_checkpoint
from lungseg.artifacts.pyfunc import log_model
from lungseg.artifacts.run_file import RUN_FILE, RunFile
from lungseg.config import Params, TrainConfig, flatten
from lungseg.errors import TrainingError
from lungseg.io import atomic_write_json, sha256_file
from lungseg.lineage import run_context_tags, source_tags
from lungseg.tracking import ResilientRun, git_commit, portable_path, portable_uri, scoped_tracking_uri
from lungseg.training import precise_bn, rundir
from lungseg.training.setup import Setup, cpu_bf16_mode

log = logging.getLogger(__name__)


def log_params(run, params: Params, cfg: TrainConfig, extra: dict[str, Any]) -> None:
    """The ``train`` and ``mlflow`` sections as given, the effective values the preset changed
    (``effective.<key>``) and ``extra``; ``mlflow.tracking_uri`` is the store actually used (the
    environment's ``MLFLOW_TRACKING_URI`` wins over params.yaml), ``mlflow.tracking_uri_in_params``
    what params.yaml says."""
    given = flatten({"train": params.train.model_dump(), "mlflow": params.mlflow.model_dump()})
    given["mlflow.tracking_uri_in_params"] = given.get("mlflow.tracking_uri")
    given["mlflow.tracking_uri"] = portable_uri(run.tracking_uri, Path.cwd())
    eff = {f"effective.{k}": v for k, v in cfg.model_dump().items() if getattr(params.train, k) != v}
    run.log_params({**given, **eff, **extra})


def start_run(params: Params, tracking_uri: str, run_id: str | None, cfg: TrainConfig, tags: dict[str, str]):
    """``(run, is_new)``: the run ``run_id`` re-opened (a resume), else — or when it cannot be — a new one."""
    if run_id is not None:
        try:
            return ResilientRun.start(tracking_uri, params.mlflow.experiment, run_id=run_id), False
        except TrainingError as exc:
            log.warning(f"lungseg: warning: cannot re-open MLflow run {run_id} ({exc}); starting a new run")
            tags = {**tags, "resumed_from_run": run_id}
    run = ResilientRun.start(tracking_uri, params.mlflow.experiment, run_name=f"{cfg.model}-seed{cfg.seed}", tags=tags)
    return run, True


def run_tags(s: Setup, data_dir: Path) -> dict[str, str]:
    """The tags of the training run: code and data versions, the model, the preset, the pipeline run."""
    cfg = s.cfg
    tags = {
        "git_commit": git_commit(),
        "data_hash": s.info.data_hash,
        "data_hash_source": s.data_hash_source,
        "data_dir": portable_path(data_dir),
        "dataset": str(s.meta.get("dataset")),
        "model": cfg.model,
        "preset": cfg.preset,
        "lungseg.stage": "train",
    }
    if cfg.preset != "default":  # paper, nnunet (#25)
        tags["preset_deviations"] = s.preset.describe_deviations()
    tags.update(source_tags(s.meta))  # the raw data version the processed set came from (#16)
    tags.update(run_context_tags())  # the image and KFP run this stage ran in, when a pipeline set them
    return tags


def open_run(
    params: Params,
    s: Setup,
    data_dir: Path,
    tracking_uri: str,
    state: TrainState,
    *,
    work: Path,
    output_dir: Path,
    model: torch.nn.Module,
    continued: bool,
):
    """Start (or re-open) the MLflow run, tag it, log the params of a new one (``model``'s size
    among them); ``mlflow_run.json`` is written at once so that even a run killed in its first epoch
    can be found. ``continued``: a finished run goes on (tagged)."""
    cfg = s.cfg
    tags = run_tags(s, data_dir)
    run, is_new = start_run(params, tracking_uri, state.run_id, cfg, tags)
    state.run_id = run.run_id
    if continued:
        run.set_tags({"lungseg.continued_to_epochs": str(cfg.epochs)})
    if state.epoch > 0:  # resumed or continued: the params (immutable) hold the first session's settings
        run.set_tags(resume_tags(work / CHECKPOINT, cfg, state.epoch, s.device))
    if not is_new and cfg.preset != "default":
        run.set_tags({"preset_deviations": tags["preset_deviations"]})  # this session's (a resume may change them)
    write_run_file(work, run, params, cfg, None, output_dir, final=False)  # findable even if killed in epoch 1
    if is_new:
        run.set_tags(tags)
        log_params(run, params, cfg, _run_params(s, model, tags))
        for row in state.history:  # a new run for a resumed training: carry the earlier epochs over
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    return run


def resume_tags(
    ckpt_path: Path, cfg: TrainConfig, after_epoch: int, device: torch.device | None = None
) -> dict[str, str]:
    """The tags of a session that resumes or continues a run after epoch ``after_epoch`` from ``ckpt_path``
    (MLflow params cannot change, so they keep the first session's values): ``lungseg.resume.<E>.precision``,
    the resolved precision of the epochs from ``E + 1`` on, and ``lungseg.resume.<E>.changed.<key>`` =
    ``old → new`` for each train setting (resolved, as the checkpoints record them) this session changed;
    with bf16 on a CPU ``device`` (default), ``lungseg.resume.<E>.bf16``: ``native`` or ``emulated`` (#24)."""
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get("config") or {}
    now = cfg.model_dump()
    prefix = f"lungseg.resume.{after_epoch}"
    tags = {f"{prefix}.precision": str(cfg.precision)}
    if cfg.precision == "bf16" and (device is None or device.type == "cpu"):  # how this CPU ran it (#24)
        tags[f"{prefix}.bf16"] = cpu_bf16_mode()
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            tags[f"{prefix}.changed.{key}"] = f"{saved.get(key)} → {now.get(key)}"
    return tags


def _run_params(s: Setup, model: torch.nn.Module, tags: dict[str, str]) -> dict[str, Any]:
    """The params of a new run besides the settings: the data, the model's size, the device."""
    return {
        "train.loss_resolved": s.loss_name,
        "train.precise_bn_resolved": precise_bn.describe(s.cfg, model, len(s.train_set)),  # (#22)
        "data.dataset": s.meta.get("dataset"),
        "data.image_size": s.size,
        "data.n_train": len(s.train_set),
        "data.n_val": len(s.val_set),
        "data.hash_source": s.data_hash_source,
        "model.n_parameters": sum(p.numel() for p in model.parameters()),
        "device": str(s.device),
        **({"train.loss_options": json.dumps(s.loss_options, sort_keys=True)} if s.loss_options else {}),
        **({"preset_deviations": tags["preset_deviations"]} if s.cfg.preset != "default" else {}),
    }


def log_results(params: Params, s: Setup, state: TrainState, run, work: Path, t0: float) -> str | None:
    """Summary, curves, artifacts and the portable model (inside the run's block); the model's URI."""
    history = state.history
    epochs_run = history[-1]["epoch"] if history else 0
    if not (work / BEST).is_file():
        raise TrainingError(f"{work}: no epoch was trained (train.epochs = {s.cfg.epochs}), nothing to save")
    summary = {
        "best_val_dice": state.best,
        "best_epoch": state.best_epoch,
        "epochs_run": epochs_run,
        "final_train_loss": history[-1]["train_loss"],
        "final_val_dice": history[-1]["val_dice"],
        "stopped_early": state.stopped_early,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(work / "train_metrics.json", summary)
    curves = rundir.plot_history(work / "learning_curves.png", history)
    run.log_metrics({"best_val_dice": state.best, "best_epoch": state.best_epoch}, step=epochs_run)
    run.log_artifact(work / "history.csv")
    run.log_artifact(work / "train_metrics.json")
    run.log_artifact(curves, "plots")
    run.log_artifact(work / BEST, "checkpoints")
    run.log_artifact(work / CHECKPOINT, "checkpoints")
    best_model = build_model(s.identity)
    best_model.load_state_dict(load_checkpoint(work / BEST, s.identity)["model_state"])
    best_model.eval()
    serving = training_serving(params, s.cfg, s.identity, s.info.preprocess)
    return log_portable_model(run, best_model, s.identity, s.info.preprocess, serving)


#: what the model a training run logs records as the origin of its serving settings (review of #25)
TRAINING_ORIGIN = "training"


def training_serving(params: Params, cfg: TrainConfig, identity: dict[str, Any], preprocess: dict[str, Any]):
    """The serving settings a training run can know, resolved as ``lungseg evaluate`` resolves them for
    this model (:func:`lungseg.evaluation.report._serving_settings`): ``evaluate.threshold`` and
    ``precision``, ``evaluate.postprocess`` (``auto``: by the labels), ``evaluate.tta`` (``auto``:
    ``mirror`` under ``train.preset: nnunet``). Before the review of #25 the training run's model recorded
    the defaults (``tta: none``), which ``mlflow.pyfunc.load_model`` and ``lungseg predict`` served,
    while a folder predict mirrored and the evaluation scored the mirrored labels."""
    from lungseg.artifacts.serving import ServingSettings, resolve_postprocess, resolve_tta

    ev = params.evaluate
    binary = int(identity["kwargs"].get("num_classes", 1)) == 1
    post = resolve_postprocess(ev.postprocess, preprocess.get("label_names")) if binary else "none"
    tta = resolve_tta(ev.tta, cfg.preset)
    return ServingSettings.for_model(preprocess, ev.threshold, postprocess=post, tta=tta, precision=ev.precision)


def log_portable_model(
    run, model: torch.nn.Module, identity: dict[str, Any], preprocessing: dict[str, Any], serving
) -> str | None:
    """Log ``model`` (the ``best.pt`` weights) to ``run`` as the portable MLflow pyfunc model of
    :mod:`lungseg.artifacts.pyfunc` (its code, weights, preprocessing and a synthetic input example:
    no patient data) with ``serving`` (:func:`training_serving`), recorded as of ``serving_origin:
    training`` (not evaluated); its model URI, or None when the call was queued (the store is unreachable)."""
    result: dict[str, str] = {}

    def fn():
        with scoped_tracking_uri(run.tracking_uri):
            result["uri"] = log_model(
                model,
                identity=identity,
                preprocess=preprocessing,
                serving=serving,
                run_id=run.run_id,
                serving_origin=TRAINING_ORIGIN,
            )

    return result.get("uri") if run.call("log_model(model)", fn) else None


def write_run_file(
    work: Path, run, params: Params, cfg: TrainConfig, model_uri: str | None, output_dir: Path, *, final: bool
) -> None:
    """``mlflow_run.json`` (:class:`lungseg.artifacts.run_file.RunFile`): the run (its store as a
    repository-relative URI where it is local to the repository the output lives in,
    :func:`lungseg.tracking.portable_uri`), the logged model and, at the end (``final``), the sha256
    of ``best.pt`` — the weights behind ``model_uri``, which registration checks the evaluation
    against. Before the end it says ``status: running``."""
    RunFile(
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        experiment=params.mlflow.experiment,
        tracking_uri=portable_uri(run.tracking_uri, output_dir),
        model_uri=model_uri,
        model=cfg.model,
        **run.summary(),
        best_sha256=sha256_file(work / BEST) if final else None,
        status=None if final else "running",
    ).to_file(work / RUN_FILE)


__all__ = [
    "log_params",
    "TRAINING_ORIGIN",
    "log_portable_model",
    "log_results",
    "open_run",
    "resume_tags",
    "run_tags",
    "start_run",
    "training_serving",
    "write_run_file",
]
