"""Training: presets, seeded augmentation, checkpoints, exact resume, MLflow tracking.

Where things go
    The run works in ``<output>.partial/`` (a sibling of ``--output``): ``checkpoint.pt`` is written
    there atomically (temporary file + ``os.replace``) at the end of every ``train.checkpoint_every``-th
    epoch (default: every epoch; also at the last epoch, at an early stop and with every ``best.pt``),
    ``best.pt`` whenever the validation Dice improves, and ``history.csv`` every epoch. When the run
    ends, the summary, the learning curves and ``mlflow_run.json`` are added and the folder is
    renamed to ``<output>``: a previous ``<output>`` stays intact until then, and a failed or killed
    run never leaves a half-written ``<output>``. ``resume=True`` (``lungseg train --resume``) continues a killed run
    from ``<output>.partial/checkpoint.pt``; the same MLflow run goes on. With no ``.partial`` but
    a finished ``<output>``, ``resume`` continues that finished run up to the (raised)
    ``train.epochs`` — same MLflow run, its folder copied to ``.partial`` first so ``<output>`` stays
    intact until the end — or refuses with a one-line error when there is nothing left to train.
    Without ``resume``, a ``.partial`` left by a killed run is discarded *with a message* naming what
    is lost (epochs, MLflow run), and that run, still ``RUNNING`` in MLflow, is marked ``KILLED``.
    ``mlflow_run.json`` is written into ``.partial`` as soon as the run starts, so even a run killed
    in its first epoch can be found and marked.

Exact resume
    The checkpoint (:class:`lungseg.artifacts.checkpoint.TrainState`, which also writes ``best.pt``)
    holds model, optimizer and scheduler states, the epoch, best Dice + epoch, the early-stopping
    counter, the RNG states (torch, CUDA, numpy, python), the effective config, the model identity
    (name + constructor kwargs), the history, the MLflow run id and the data's preprocessing
    (``preprocess``: see :func:`training_preprocessing`; ``best.pt`` carries it too). Checkpoint I/O
    and the model identity live in :mod:`lungseg.artifacts.checkpoint` (re-exported here); format-1
    files (with the state of a disabled GradScaler, no longer kept) load and resume as before. Besides, every
    epoch draws shuffling, augmentation and dropout
    randomness from generators seeded with ``(seed, epoch)``, so one epoch is a pure function of
    (weights, optimizer state, seed, epoch). On the CPU a run killed after epoch k and resumed ends
    with bitwise the same weights and history as an uninterrupted run (tested by SIGKILL). With
    ``checkpoint_every`` > 1 the epochs after the last written checkpoint are re-run on resume (the same
    epochs again, so the same end result; their metrics are logged to MLflow a second time, at the
    same steps). ``train.checkpoint_async`` writes the files in a background thread from a CPU
    snapshot while the next epoch trains (:class:`lungseg.artifacts.checkpoint.CheckpointWriter`).
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` is on while training (CUDA also gets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set); the previous setting is restored afterwards.

Presets (``train.preset``)
    ``default``: the values of ``params.yaml`` as given; the library defaults are AdamW-style Adam
    (``weight_decay`` 1e-5), lr 1e-3, batch 4, cosine schedule, early stopping after 10 epochs
    without a better validation Dice, augmentation on. ``min_epochs`` (default 0) is a warm-up: before
    that epoch the validation Dice neither selects ``best.pt`` nor counts towards early stopping — on
    a tiny validation set (the bundled sample has 2 slices) an early, lucky value would otherwise be
    kept as the best model and end the run. ``paper`` (:mod:`lungseg.training.presets`): the paper's
    value (LG-Net §3: Adam, lr 0.01, batch 4, 120 epochs, constant lr, no early stopping, no weight
    decay; base 64; the Eq. 14–15 loss; the papers' model options) for every key left at its library
    default, a changed key honoured and recorded as a deviation (MLflow ``preset_deviations``, stderr).
    The image size is not a training parameter: it comes from preprocessing (``preprocess.image_size``);
    the paper preset refuses data that is not 512² unless ``train.allow_non_paper_size``.

Deep supervision
    A model with ``deep_supervision_weights`` (Inf-Net, AWSnet) trains on ``forward_heads`` through
    :class:`lungseg.losses.DeepSupervisionLoss`; ``train_dice``, validation and ``best.pt`` selection
    use the main output.

The model logged to MLflow
    ``best.pt``'s weights as the portable pyfunc model of :mod:`lungseg.artifacts.pyfunc` (code,
    weights, preprocessing, synthetic input example); its URI is ``model_uri`` in ``mlflow_run.json``.

Progress
    Inside an epoch: a tqdm bar (images/s, ETA, mean loss and Dice) on a terminal; when stderr is not
    a terminal (KFP and DVC logs, ``nohup``) a line at most every ``train.progress_every_s`` seconds
    (default 30): ``epoch 3/30  step 120/500  loss 0.4321  dice 0.812  41.2 img/s  ETA 1:32``. Loss
    and Dice stay on the device and are read back only at such a line and at the epoch end on CUDA
    (no per-step host sync); on the CPU every step (reading is free there).

Device
    ``device: auto`` uses CUDA when available. bf16 autocast (``amp``) and channels_last apply on
    CUDA only; on the CPU they are ignored (the run's params record both). On CUDA the training and
    validation arrays are copied to the GPU once before the first epoch when they fit
    (``train.data_on_device``, :func:`stage_data`): every batch is then indexed and augmented on the
    GPU; otherwise each batch is copied over and augmented there. The augmentation's random numbers
    are drawn on the CPU from the ``(seed, epoch)`` generator either way (:mod:`lungseg.training.augment`),
    so where the data lives does not change what is trained.

Recorded paths
    ``mlflow_run.json`` and the ``data_dir`` tag name repository-local things relative to the
    repository (``sqlite:///mlflow.db``, ``data/processed/medseg``; see
    :func:`lungseg.tracking.portable_uri`), so a clone or a copy of the repository never writes
    into the original's store.

Distributed (DDP)
    Under ``torchrun`` the same loop runs in every process with the hooks of
    :mod:`lungseg.training.distributed` (``ddp``: global batch sharded over the ranks, rank 0 alone
    reads and writes the output folder, checkpoints and MLflow, sharded validation, progress on rank 0
    only); without it they are the identity. Under DDP the progress read-back does not depend on the
    clock (every rank must reach each collective at the same step): every step on the CPU, at the
    epoch end only on CUDA.

Failures
    A non-finite loss raises :class:`~lungseg.errors.TrainingError` naming the epoch and batch; the
    last good checkpoint (previous epoch) is left intact. A checkpoint of another architecture raises
    :class:`~lungseg.errors.CheckpointError` naming the file and both architectures. A missing or
    empty split raises :class:`~lungseg.errors.DataError` (from :func:`lungseg.data.dataset.load_split`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.artifacts.checkpoint import (
    BEST,
    CHECKPOINT,
    CheckpointWriter,
    RunInfo,
    TrainState,
    build_model,
    fmt_identity,
    load_checkpoint,
    model_identity,
    optimizer_to_params,
    remove_stale_temporaries,
    save_checkpoint,
    set_rng_state,
    training_preprocessing,
)
from lungseg.artifacts.run_file import RUN_FILE, RunFile
from lungseg.config import Params, TrainConfig, check_train, flatten, model_options
from lungseg.data.dataset import load_split, read_meta
from lungseg.errors import CheckpointError, ConfigError, DataError, TrainingError
from lungseg.io import atomic_write_json, atomic_write_text, check_output_dir, replace_dir, sha256_file
from lungseg.losses import DeepSupervisionLoss, create_loss, default_loss_for
from lungseg.metrics import dice_per_image_torch
from lungseg.training.augment import augment
from lungseg.training.presets import PresetResult, check_paper_size, paper_loss_options, resolve_preset

HISTORY_FIELDS = ["epoch", "train_loss", "train_dice", "val_loss", "val_dice", "lr", "seconds"]


@dataclass
class TrainResult:
    output_dir: Path
    epochs_run: int
    best_epoch: int
    best_val_dice: float
    stopped_early: bool
    run_id: str | None
    lost_logging: int
    seconds: float
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rank: int = 0  # under torchrun: the process's rank (only rank 0 wrote the output)

    def describe(self) -> str:
        if self.rank:
            return (
                f"rank {self.rank}: trained {self.epochs_run} epoch(s) as a DDP worker; rank 0 wrote {self.output_dir}"
            )
        s = (
            f"trained {self.epochs_run} epoch(s) in {self.seconds:.1f} s; best val Dice {self.best_val_dice:.4f} "
            f"at epoch {self.best_epoch}{' (early stop)' if self.stopped_early else ''} → {self.output_dir}"
        )
        if self.run_id:
            s += f"\n  MLflow run {self.run_id}"
        if self.lost_logging:
            s += f" ({self.lost_logging} logging call(s) lost: see lost_calls in mlflow_run.json)"
        return s


def effective_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its preset applied (:func:`lungseg.training.presets.resolve_preset`: ``paper``
    fills the paper's value into every key left at its library default)."""
    return resolve_preset(cfg).config


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    if cfg.device not in ("cpu", "cuda"):
        raise ConfigError(f"train.device: unknown device {cfg.device!r} (allowed: auto, cpu, cuda)")
    return torch.device(cfg.device)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic() -> Any:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` inside the block only."""
    prev, prev_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    prev_bench = torch.backends.cudnn.benchmark
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    if cfg.scheduler == "none":
        return None
    raise ConfigError(f"train.scheduler: unknown schedule {cfg.scheduler!r} (allowed: cosine, plateau, none)")


def _describe_preset(preset) -> str:
    """The stderr line of a paper-preset run: what it filled in and what it honours against the paper."""
    filled = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in preset.filled.items()) or "nothing"
    text = f"set {filled} (the paper's values for settings left at their defaults)"
    if preset.deviations:
        text += f"; honouring settings that differ from the paper: {preset.describe_deviations()}"
    return text


def _validate_config(cfg: TrainConfig) -> None:
    """The load-time checks of :mod:`lungseg.config` again, for configs built in code (a preset, or
    ``dataclasses.replace``); warns about model options that do not apply to ``cfg.model``."""
    check_train(cfg, "train")
    _, ignored = model_options(cfg)
    if ignored:
        print(
            f"lungseg: warning: train.model_kwargs {', '.join(ignored)}: not an option of {cfg.model}, ignored "
            f"(write options per model: model_kwargs: {{<model>: {{...}}}})",
            file=sys.stderr,
        )


def _build_for_training(identity: dict[str, Any]) -> torch.nn.Module:
    """:func:`build_model`, with a value the model rejects reported as a config error (not a traceback)."""
    try:
        return build_model(identity)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train.model_kwargs: {fmt_identity(identity)} cannot be built: {exc}") from exc


def _discard_partial(work: Path, tracking_uri: str) -> None:
    """Say what a ``.partial`` left by a killed run holds before it is deleted, and mark its MLflow
    run (still ``RUNNING``: the process died before it could end it) ``KILLED``."""
    epoch, run_id = None, None
    with contextlib.suppress(CheckpointError):
        ckpt = load_checkpoint(work / CHECKPOINT)
        epoch, run_id = ckpt.get("epoch"), ckpt.get("mlflow_run_id")
    with contextlib.suppress(DataError):  # a run file half-written or unreadable: the checkpoint's run id
        run_file = RunFile.find(work / RUN_FILE)
        run_id = run_file.run_id if run_file else run_id
    marked = ""
    if run_id:
        from lungseg.tracking import mark_stale_run

        marked = mark_stale_run(tracking_uri, run_id)
    what = f"{epoch} finished epoch(s)" if epoch else "no finished epoch"
    print(
        f"lungseg: discarding {work}, left by an earlier run that did not finish ({what}"
        f"{f'; MLflow run {run_id} {marked}' if run_id else ''}); use --resume to continue such a run instead",
        file=sys.stderr,
    )
    shutil.rmtree(work)


def _continue_finished(output_dir: Path, work: Path, cfg: TrainConfig, identity: dict[str, Any]) -> None:
    """``--resume`` with no ``.partial`` but a finished ``output_dir``: copy it to ``work`` to go on
    training it, or refuse (``ConfigError``/``CheckpointError`` for another architecture; nothing
    touched) when nothing is left to train."""
    ckpt = load_checkpoint(output_dir / CHECKPOINT, identity)
    done, stale = int(ckpt["epoch"]), int(ckpt.get("stale", 0))
    if ckpt.get("stopped_early") and not _early_stop_lifted(cfg, stale):
        raise ConfigError(
            f"{output_dir}: this run stopped early after epoch {done} (no better validation Dice for "
            f"{stale} epoch(s), train.early_stopping_patience = {cfg.early_stopping_patience}); "
            "nothing to continue: raise the patience (or set 0) to train it on"
        )
    if done >= cfg.epochs:
        raise ConfigError(
            f"{output_dir}: this run has already trained {done} epoch(s) (train.epochs = {cfg.epochs}); "
            "nothing to resume: raise train.epochs to continue it, or train without --resume "
            "to start over"
        )
    shutil.copytree(output_dir, work)
    print(
        f"lungseg: continuing the finished run in {output_dir} from epoch {done} to {cfg.epochs} "
        f"({output_dir} is replaced when it ends)",
        file=sys.stderr,
    )


def _early_stop_lifted(cfg: TrainConfig, stale: int) -> bool:
    """Whether a run that stopped early may go on under ``cfg`` (patience off, or raised above ``stale``)."""
    return cfg.early_stopping_patience == 0 or stale < cfg.early_stopping_patience


def _log_params(run, params: Params, cfg: TrainConfig, extra: dict[str, Any]) -> None:
    given = flatten({"train": dataclasses.asdict(params.train), "mlflow": dataclasses.asdict(params.mlflow)})
    eff = {f"effective.{k}": v for k, v in dataclasses.asdict(cfg).items() if getattr(params.train, k) != v}
    run.log_params({**given, **eff, **extra})


def _start_run(params: Params, tracking_uri: str, run_id: str | None, cfg: TrainConfig, tags: dict[str, str]):
    from lungseg.tracking import ResilientRun

    if run_id is not None:
        try:
            return ResilientRun.start(tracking_uri, params.mlflow.experiment, run_id=run_id), False
        except TrainingError as exc:
            print(f"lungseg: warning: cannot re-open MLflow run {run_id} ({exc}); starting a new run", file=sys.stderr)
            tags = {**tags, "resumed_from_run": run_id}
    run = ResilientRun.start(tracking_uri, params.mlflow.experiment, run_name=f"{cfg.model}-seed{cfg.seed}", tags=tags)
    return run, True


@dataclass(frozen=True)
class _Setup:
    """What :func:`train` derives from params and data before anything is written."""

    cfg: TrainConfig
    preset: PresetResult
    meta: dict[str, Any]
    train_set: Any
    val_set: Any
    size: int
    identity: dict[str, Any]
    info: RunInfo
    device: torch.device
    data_hash_source: str
    loss_name: str
    loss_options: dict[str, Any]


def _prepare(params: Params, data_dir: Path, ddp) -> _Setup:
    """Check the settings against the data and derive the run's constants (nothing is written);
    under DDP the device is this rank's and the settings DDP cannot honour are refused."""
    from lungseg.tracking import data_hash

    _validate_config(params.train)  # the user's settings (warnings name their keys)
    preset = resolve_preset(params.train)
    cfg = preset.config
    check_train(cfg, "train (preset applied)")
    meta = read_meta(data_dir)
    train_set, val_set = load_split(data_dir, "train"), load_split(data_dir, "val")
    size = int(train_set.images.shape[-1])
    preset = check_paper_size(preset, size, data_dir)  # refused unless train.allow_non_paper_size
    if cfg.preset == "paper" and ddp.is_main:
        print(f"lungseg: paper preset: {_describe_preset(preset)}", file=sys.stderr)
    num_labels = int(meta["num_labels"])
    num_classes = 1 if num_labels == 2 else num_labels
    identity = model_identity(cfg, int(train_set.images.shape[1]), num_classes)
    device = ddp.device(_device(cfg))
    ddp.check(cfg, device)
    dhash, dhash_source = data_hash(data_dir)
    loss_name = default_loss_for(cfg.model) if cfg.loss == "auto" else cfg.loss
    loss_options = paper_loss_options(num_classes) if cfg.preset == "paper" and loss_name == "dice_focal" else {}
    info = RunInfo(
        model_identity=identity,
        config=dataclasses.asdict(cfg),
        params=params.to_dict(),
        num_classes=num_classes,
        data_hash=dhash,
        image_size=size,
        preprocess=training_preprocessing(meta),
        preset_deviations=preset.deviations,
        distributed=ddp.checkpoint_info(cfg),
    )
    return _Setup(
        cfg, preset, meta, train_set, val_set, size, identity, info, device, dhash_source, loss_name, loss_options
    )


#: ``train.data_on_device: auto`` copies the data to the GPU when it takes at most this share of the
#: free memory (measured once the model is there): the rest is for activations, gradients, Adam's
#: moments, cuDNN workspaces and the allocator's slack
DATA_ON_DEVICE_SHARE = 0.25


def keep_on_device(setting: bool | str, need: int, free: int) -> bool:
    """``train.data_on_device`` decided for ``need`` bytes of data and ``free`` bytes of GPU memory."""
    if isinstance(setting, bool):
        return setting
    return need <= DATA_ON_DEVICE_SHARE * free


def stage_data(train_set, val_set, cfg: TrainConfig, device: torch.device, *, announce: bool = True):
    """``(x_train, y_train, x_val, y_val)``: the splits as the loop indexes them.

    On the CPU: the arrays as tensors (no copy), masks as int64 — what the loop always used. On CUDA,
    with ``train.data_on_device`` ``true``, or ``auto`` and the four arrays taking at most
    :data:`DATA_ON_DEVICE_SHARE` of the GPU's free memory: copied to the GPU once, masks kept uint8
    (a fifth of the int64 size; each batch is widened there). Otherwise they stay in host memory and
    each batch is copied over. ``announce``: say on stderr which it is (rank 0 under DDP).
    ``ConfigError`` when ``true`` is asked and they do not fit."""
    x_train, x_val = torch.from_numpy(train_set.images), torch.from_numpy(val_set.images)
    if device.type != "cuda":
        return x_train, torch.from_numpy(train_set.masks).long(), x_val, torch.from_numpy(val_set.masks).long()
    y_train, y_val = torch.from_numpy(train_set.masks), torch.from_numpy(val_set.masks)
    arrays = (x_train, y_train, x_val, y_val)
    need = sum(t.numel() * t.element_size() for t in arrays)
    free, _ = torch.cuda.mem_get_info(device)
    gib = 2.0**30
    sizes = f"{need / gib:.2f} GiB; {free / gib:.1f} GiB free on {device}"
    if not keep_on_device(cfg.data_on_device, need, free):
        if announce:
            why = "train.data_on_device: false" if cfg.data_on_device is False else "more than a quarter of it"
            print(f"lungseg: training data kept in host memory ({sizes}: {why}); batches are copied", file=sys.stderr)
        return arrays
    try:
        staged = tuple(t.to(device) for t in arrays)
    except torch.cuda.OutOfMemoryError as exc:
        raise ConfigError(
            f"train.data_on_device: true, but the training and validation data ({sizes}) do not fit: set auto or false"
        ) from exc
    if announce:
        print(f"lungseg: training data on {device} ({sizes} before)", file=sys.stderr)
    return staged


#: train settings that do not change what is trained (a resume with them changed is not warned about)
_NEUTRAL_SETTINGS = (
    "epochs",
    "device",
    "num_workers",
    "progress_every_s",
    "data_on_device",
    "checkpoint_every",
    "checkpoint_async",
)


def _restore(ckpt_path: Path, s: _Setup, data_dir: Path, model, optimizer, scheduler, ddp) -> TrainState:
    """The state of ``ckpt_path`` loaded into ``model``/``optimizer``/``scheduler`` and the RNGs, with
    a warning for each setting or data that changed since it was written (rank 0 only under DDP)."""
    cfg = s.cfg
    ckpt = load_checkpoint(ckpt_path, s.identity)
    model.load_state_dict(ckpt["model_state"])
    optimizer.load_state_dict(ckpt["optimizer_state"])
    if scheduler is not None and ckpt.get("scheduler_state"):
        scheduler.load_state_dict(ckpt["scheduler_state"])
    set_rng_state(ckpt["rng"])  # (a format-1 file's scaler_state, of a disabled GradScaler, is not needed)
    remove_stale_temporaries(ckpt_path.parent)  # a process killed while writing a checkpoint leaves one
    ddp.check_resume(ckpt, ckpt_path)
    state = TrainState.resumed(s.info, ckpt)
    changed = sorted(
        k
        for k, v in ckpt.get("config", {}).items()
        if k not in _NEUTRAL_SETTINGS and dataclasses.asdict(cfg).get(k) != v
    )
    if changed:
        print(
            f"lungseg: warning: resuming with changed train settings {', '.join(changed)} "
            "(the result will differ from an uninterrupted run)",
            file=sys.stderr,
        )
    if ckpt.get("data_hash") != s.info.data_hash:
        print(
            f"lungseg: warning: the data in {data_dir} differs from the data the checkpoint was trained on",
            file=sys.stderr,
        )
    planned = (ckpt.get("config") or {}).get("epochs")
    if cfg.scheduler == "cosine" and planned is not None and planned != cfg.epochs:
        print(
            f"lungseg: warning: the cosine schedule was planned for {planned} epochs and is kept: past epoch "
            f"{planned} its learning rate rises again, so {cfg.epochs} epochs this way differ from a run "
            f"planned for {cfg.epochs}",
            file=sys.stderr,
        )
    if state.stopped_early and _early_stop_lifted(cfg, state.stale):
        state.stopped_early = False  # the patience was raised (or switched off): go on
    print(f"lungseg: resuming {ckpt_path} after epoch {state.epoch}", file=sys.stderr)
    return state


def _open_run(
    params: Params,
    s: _Setup,
    data_dir: Path,
    tracking_uri: str,
    state: TrainState,
    work: Path,
    output_dir: Path,
    model,
    *,
    continued: bool,
):
    """Start (or re-open) the MLflow run, tag it, log the params of a new one; ``mlflow_run.json``
    is written at once so that even a run killed in its first epoch can be found."""
    from lungseg.lineage import run_context_tags, source_tags
    from lungseg.tracking import git_commit, portable_path

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
    if cfg.preset == "paper":
        tags["preset_deviations"] = s.preset.describe_deviations()
    tags.update(source_tags(s.meta))  # the raw data version the processed set came from (#16)
    tags.update(run_context_tags())  # the image and KFP run this stage ran in, when a pipeline set them
    run, is_new = _start_run(params, tracking_uri, state.run_id, cfg, tags)
    state.run_id = run.run_id
    if continued:
        run.set_tags({"lungseg.continued_to_epochs": str(cfg.epochs)})
    if not is_new and cfg.preset == "paper":
        run.set_tags({"preset_deviations": tags["preset_deviations"]})  # this session's (a resume may change them)
    _write_run_file(work, run, params, cfg, None, output_dir, final=False)  # findable even if killed in epoch 1
    if is_new:
        run.set_tags(tags)
        _log_params(
            run,
            params,
            cfg,
            {
                "train.loss_resolved": s.loss_name,
                "data.dataset": s.meta.get("dataset"),
                "data.image_size": s.size,
                "data.n_train": len(s.train_set),
                "data.n_val": len(s.val_set),
                "data.hash_source": s.data_hash_source,
                "model.n_parameters": sum(p.numel() for p in model.parameters()),
                "device": str(s.device),
                **({"train.loss_options": json.dumps(s.loss_options, sort_keys=True)} if s.loss_options else {}),
                **({"preset_deviations": tags["preset_deviations"]} if cfg.preset == "paper" else {}),
            },
        )
        for row in state.history:  # a new run for a resumed training: carry the earlier epochs over
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    return run


def train(params: Params, data_dir: str | Path, output_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train ``params.train.model`` on ``data_dir`` into ``output_dir`` (see the module docstring);
    under ``torchrun``, as one process of a DDP group (:mod:`lungseg.training.distributed`)."""
    from lungseg.training import distributed

    ddp = distributed.setup(params.train)
    try:
        result = _train(params, data_dir, output_dir, resume, ddp)
        ddp.barrier()  # the other ranks wait until rank 0 has put the output in place
        return result
    except Exception as exc:
        broken = ddp.broken(exc)
        if broken is exc:
            raise
        raise broken from exc
    finally:
        ddp.close()


def _train(params: Params, data_dir: str | Path, output_dir: str | Path, resume: bool, ddp) -> TrainResult:
    from lungseg.tracking import resolve_tracking_uri
    from lungseg.training.distributed import NO_RUN

    t0 = time.perf_counter()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    check_output_dir(output_dir)  # before any work: a file there would only be found at the end
    s = _prepare(params, data_dir, ddp)
    cfg, device = s.cfg, s.device
    work = output_dir.parent / f"{output_dir.name}.partial"
    ckpt_path = work / CHECKPOINT
    tracking_uri = resolve_tracking_uri(params)
    seed_everything(cfg.seed)
    model = _build_for_training(s.identity)
    divisor = int(getattr(model, "size_divisor", 1))
    if s.size % divisor:
        raise ConfigError(
            f"{data_dir}: images are {s.size}² but {cfg.model} needs a multiple of {divisor} "
            "(set preprocess.image_size)"
        )
    loss_fn = create_loss(s.loss_name, num_classes=s.info.num_classes, **s.loss_options)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(cfg, optimizer)
    continued = False
    state = TrainState(s.info)
    if ddp.is_main:  # rank 0 alone reads and writes the output folder (DDP)
        if resume and not ckpt_path.is_file() and (output_dir / CHECKPOINT).is_file():
            if work.exists():
                _discard_partial(work, tracking_uri)
            _continue_finished(output_dir, work, cfg, s.identity)
            continued = True
        if resume and ckpt_path.is_file():
            state = _restore(ckpt_path, s, data_dir, model, optimizer, scheduler, ddp)
        else:
            if resume:
                print(
                    f"lungseg: nothing to resume in {work} (nor a finished run in {output_dir}); starting fresh",
                    file=sys.stderr,
                )
            if work.exists():
                _discard_partial(work, tracking_uri)
            work.mkdir(parents=True)
    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer_to_params(optimizer)  # a restored state was loaded while the model was still on the CPU
    # rank 0 alone logs to MLflow; the block ends the run FINISHED, or FAILED/KILLED when anything in it
    # raises (the last flush happens either way), so the run file written after it has the final tally
    run = NO_RUN
    if ddp.is_main:
        run = _open_run(params, s, data_dir, tracking_uri, state, work, output_dir, model, continued=continued)
    with run:
        shared = ddp.share_start(
            optimizer,
            scheduler,
            {  # after a resume only rank 0 has read the checkpoint
                "epoch": state.epoch,
                "best": state.best,
                "best_epoch": state.best_epoch,
                "stale": state.stale,
                "stopped_early": state.stopped_early,
                "history": state.history,
            },
        )
        for key, value in shared.items():
            setattr(state, key, value)
        # what trains: ``net`` (DDP; routes forward_heads through DDP's forward for deep supervision);
        # ``model`` (inside it) is what is saved and validated
        net = ddp.wrap(
            model,
            cfg,
            device,
            heads=bool(getattr(model, "deep_supervision_weights", None)),
            sample_shape=tuple(s.train_set.images.shape[1:]),
        )

        x_train, y_train, x_val, y_val = stage_data(s.train_set, s.val_set, cfg, device, announce=ddp.is_main)
        writer = CheckpointWriter(background=cfg.checkpoint_async)
        saved = state.epoch  # the epoch of the checkpoint.pt on disk (0: none yet)
        try:
            with deterministic():
                for epoch in range(state.epoch + 1, cfg.epochs + 1):
                    if state.stopped_early:
                        break
                    row = _train_epoch(
                        net, loss_fn, optimizer, x_train, y_train, cfg, device, epoch, ckpt_path, ddp=ddp, saved=saved
                    )
                    val_loss, val_dice = ddp.validate(_validate, model, loss_fn, x_val, y_val, cfg, device)
                    row.update(val_loss=val_loss, val_dice=val_dice)
                    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        scheduler.step(val_dice)
                    elif scheduler is not None:
                        scheduler.step()
                    improved = state.end_epoch(row, min_epochs=cfg.min_epochs, patience=cfg.early_stopping_patience)
                    due = state.checkpoint_due(cfg.checkpoint_every, cfg.epochs, improved=improved)
                    saved = epoch if due else saved
                    if not ddp.is_main:
                        continue  # the same decisions as rank 0 (same all-reduced values); rank 0 reports and writes
                    print(
                        f"epoch {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  "
                        f"val Dice {val_dice:.4f}{'  *' if improved else ''}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if state.stopped_early:
                        print(f"lungseg: early stop: no better val Dice for {state.stale} epoch(s)", file=sys.stderr)
                    if due:
                        state.save(work, model, optimizer, scheduler, improved=improved, writer=writer)
                    _write_history(work / "history.csv", state.history)
                    run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            writer.wait()  # the last write is complete (its error raised) before anything reads the files
        except BaseException:
            writer.abandon()  # no write left running; its own failure is reported, this error goes on
            raise
        model_uri = _log_results(params, s, state, run, work, t0) if ddp.is_main else None
    if not ddp.is_main:
        return TrainResult(
            output_dir,
            state.epoch,
            state.best_epoch,
            state.best,
            state.stopped_early,
            None,
            0,
            time.perf_counter() - t0,
            state.history,
            rank=ddp.rank,
        )
    _write_run_file(work, run, params, s.cfg, model_uri, output_dir, final=True)
    replace_dir(work, output_dir)
    epochs_run = state.history[-1]["epoch"]
    return TrainResult(
        output_dir,
        epochs_run,
        state.best_epoch,
        state.best,
        state.stopped_early,
        run.run_id,
        run.summary()["lost_logging"],
        time.perf_counter() - t0,
        state.history,
    )


def _log_results(params: Params, s: _Setup, state: TrainState, run, work: Path, t0: float) -> str | None:
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
    curves = _plot_history(work / "learning_curves.png", history)
    run.log_metrics({"best_val_dice": state.best, "best_epoch": state.best_epoch}, step=epochs_run)
    run.log_artifact(work / "history.csv")
    run.log_artifact(work / "train_metrics.json")
    run.log_artifact(curves, "plots")
    run.log_artifact(work / BEST, "checkpoints")
    run.log_artifact(work / CHECKPOINT, "checkpoints")
    best_model = build_model(s.identity)
    best_model.load_state_dict(load_checkpoint(work / BEST, s.identity)["model_state"])
    best_model.eval()
    return _log_portable_model(run, best_model, s.identity, s.info.preprocess, params.evaluate.threshold)


def _log_portable_model(
    run, model: torch.nn.Module, identity: dict[str, Any], preprocessing: dict[str, Any], threshold: float
) -> str | None:
    """Log ``model`` (the ``best.pt`` weights) to ``run`` as the portable MLflow pyfunc model of
    :mod:`lungseg.artifacts.pyfunc` (its code, weights, preprocessing and a synthetic input example:
    no patient data); its model URI, or None when the call was queued (the store is unreachable)."""
    from lungseg.artifacts.pyfunc import log_model
    from lungseg.tracking import scoped_tracking_uri

    result: dict[str, str] = {}

    def fn():
        with scoped_tracking_uri(run.tracking_uri):
            result["uri"] = log_model(
                model, identity=identity, preprocess=preprocessing, threshold=threshold, run_id=run.run_id
            )

    return result.get("uri") if run.call("log_model(model)", fn) else None


def _write_run_file(
    work: Path, run, params: Params, cfg: TrainConfig, model_uri: str | None, output_dir: Path, *, final: bool
) -> None:
    """``mlflow_run.json``: the run (its store as a repository-relative URI where it is local to the
    repository the output lives in, :func:`lungseg.tracking.portable_uri`), the logged model and, at
    the end (``final``), the sha256 of ``best.pt`` — the weights behind ``model_uri``, which
    registration checks the evaluation against. Before the end it says ``status: running``."""
    from lungseg.tracking import portable_uri

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


def _train_epoch(
    model,
    loss_fn,
    optimizer,
    x,
    y,
    cfg: TrainConfig,
    device,
    epoch: int,
    ckpt_path: Path,
    ddp=None,
    *,
    saved: int | None = None,
) -> dict:
    """One epoch over the shuffled training split; its row of the history.

    ``x``/``y``: the split as :func:`stage_data` gives it — on ``device`` (batches are indexed there)
    or in host memory (each batch is copied to ``device``); augmentation runs on ``device`` either way.
    ``ckpt_path``/``saved``: the checkpoint a non-finite loss error points back to, and its epoch
    (default: the previous one).

    Losses and Dice stay on the device as 0-d tensors and are read back at a sync point only — every
    step on the CPU (where reading is free and a non-finite loss is caught before its update), on CUDA
    only when a progress line or bar update is due and at the end of the epoch (no per-step host sync;
    a non-finite loss is then reported at the first step it occurred).

    ``model`` is what :meth:`Distributed.wrap` returned (the model itself without ``torchrun``).
    Under DDP each rank trains on its part of every global batch, the values read back are the
    global batch's (all-reduced), the read-back points do not depend on the clock (every step on the
    CPU, the epoch end on CUDA: every rank must reach each collective at the same step), and only
    rank 0 shows progress."""
    from lungseg.training.distributed import SINGLE

    ddp = ddp or SINGLE
    use_cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    torch.manual_seed(ddp.dropout_seed(_epoch_seed(cfg.seed, epoch)))  # dropout randomness of this epoch
    model.train()
    n = len(x)
    starts = _batch_starts(n, cfg.batch_size, ddp)
    inner = ddp.unwrap(model)  # the model itself (DDP wraps it)
    heads = getattr(inner, "deep_supervision_weights", None)
    if heads:  # Inf-Net, AWSnet: every head is trained (lungseg.losses.deep_supervision), metrics on the main one
        loss_fn = DeepSupervisionLoss(loss_fn, heads, getattr(inner, "deep_supervision_targets", None))
    images = sum(min(cfg.batch_size, n - s) for s in starts)
    progress = _Progress(
        epoch, cfg, len(starts), images, sync_every_step=not use_cuda, sync_on_clock=not ddp.active, show=ddp.is_main
    )
    losses, dices = [], []  # python floats, read back at sync points
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (loss, Dice) on the device, not yet read
    t0 = time.perf_counter()
    for step, (xb, yb, size) in enumerate(epoch_batches(x, y, cfg, device, gen, ddp), 1):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda and cfg.amp):
            # under DDP the wrapped module's forward returns the heads (never model.module.forward_heads:
            # DDP synchronises the gradients only of what runs through its own forward)
            outputs = model(xb) if ddp.active or not heads else model.forward_heads(xb)
        logits = outputs[0] if heads else outputs
        loss = loss_fn([o.float() for o in outputs] if heads else logits.float(), yb)
        if not use_cuda:  # CPU: caught before the update (reading is free); DDP: the global batch's loss
            value = ddp.mean(loss)
            if not math.isfinite(value):
                _non_finite(value, epoch, step, optimizer, ckpt_path, saved)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pending.append((loss.detach(), dice_per_image_torch(logits.detach().float(), yb).mean()))
        if progress.sync_due(step):
            _read_back(pending, losses, dices, epoch, step, optimizer, ckpt_path, ddp=ddp, saved=saved)
            progress.show(step, size, losses, dices)
        else:
            progress.count(size)
    _read_back(pending, losses, dices, epoch, len(starts), optimizer, ckpt_path, ddp=ddp, saved=saved)
    progress.close()
    return {
        "epoch": epoch,
        "train_loss": float(np.mean(losses)),
        "train_dice": float(np.mean(dices)),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _batch_starts(n: int, batch_size: int, ddp) -> list[int]:
    """Where an epoch's (global) batches start in the permutation of ``n`` images."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()  # a last batch of one image breaks BatchNorm statistics: dropped this epoch
    return ddp.even_batches(starts, n, batch_size)  # DDP: only global batches that split evenly


def epoch_batches(x, y, cfg: TrainConfig, device: torch.device, gen: torch.Generator, ddp=None):
    """An epoch's training batches, in order, as ``(images, masks, global batch size)``: the
    permutation and the augmentation drawn from ``gen`` (the epoch's CPU generator, seeded with
    ``(seed, epoch)``), each batch indexed where ``x``/``y`` live, moved to ``device`` if it is not
    there, augmented on ``device``, cut to this rank's part (DDP) and, on CUDA with
    ``channels_last``, laid out so — exactly what :func:`_train_epoch` trains on (the epoch
    benchmark stages the same batches with it)."""
    from lungseg.training.distributed import SINGLE

    ddp = ddp or SINGLE
    n = len(x)
    starts = _batch_starts(n, cfg.batch_size, ddp)
    order = torch.randperm(n, generator=gen)
    if order.device != x.device:
        order = order.to(x.device, non_blocking=True)  # data on the GPU: index it there
    for start in starts:
        idx = order[start : start + cfg.batch_size]
        xb, yb = x[idx], y[idx]
        if xb.device != device:  # data in host memory, training on CUDA: the batch goes over first
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        yb = yb.long()  # (masks on the GPU are kept as uint8)
        if cfg.augment:  # on the batch's device, with parameters drawn on the CPU from gen
            xb, yb = augment(xb, yb, gen)
        xb, yb = ddp.shard(xb), ddp.shard(yb)  # DDP: this rank's part of the (augmented) global batch
        if device.type == "cuda" and cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, yb, len(idx)


def _read_back(
    pending: list,
    losses: list[float],
    dices: list[float],
    epoch: int,
    step: int,
    optimizer,
    ckpt_path: Path,
    ddp=None,
    *,
    saved: int | None = None,
) -> None:
    """Move the pending device values into ``losses``/``dices`` (one host sync); a non-finite loss
    among them is a ``TrainingError`` naming its step. Under DDP the values are averaged over the
    ranks (one collective; equal parts per rank, so the global batch's means) — every rank must call
    this at the same step with the same number of pending values."""
    from lungseg.training.distributed import SINGLE

    if not pending:
        return
    values = (ddp or SINGLE).mean_many(torch.stack([v for pair in pending for v in pair]))
    step_losses, step_dices = values[0::2], values[1::2]
    first = step - len(pending) + 1
    pending.clear()
    for i, (loss, dice) in enumerate(zip(step_losses, step_dices)):
        if not math.isfinite(loss):
            _non_finite(loss, epoch, first + i, optimizer, ckpt_path, saved)
        losses.append(loss)
        dices.append(dice)


def _non_finite(value: float, epoch: int, step: int, optimizer, ckpt_path: Path, saved: int | None = None) -> None:
    """A :class:`TrainingError` naming the step and ``ckpt_path``, the last good checkpoint, with
    ``saved``, the epoch it holds as the loop knows it (0: none; a background write of it may still be
    finishing) — without it, the previous epoch's, if the file exists."""
    written = saved > 0 if saved is not None else ckpt_path.is_file()
    where = (
        f"the last good checkpoint is {ckpt_path} (epoch {epoch - 1 if saved is None else saved})"
        if written
        else "no checkpoint was written yet"
    )
    raise TrainingError(
        f"loss became {value} at epoch {epoch}, step {step} (lr {optimizer.param_groups[0]['lr']:g}); {where}"
    )


class _Progress:
    """Progress inside an epoch: a tqdm bar (images, img/s, ETA, mean loss and Dice) when stderr is a
    terminal; otherwise — KFP and DVC logs, ``nohup`` — one line at most every ``train.progress_every_s``
    seconds: ``epoch 3/30  step 120/500  loss 0.4321  dice 0.812  41.2 img/s  ETA 1:32``.

    :meth:`sync_due` says when the loop should read its device values back: every step when
    ``sync_every_step`` (CPU), else only when a line (or, on a terminal, a bar refresh each second) is due
    — unless ``sync_on_clock`` is false (DDP: the ranks' clocks differ, and a read-back is a collective
    every rank must reach at the same step), then only at the end of the epoch. ``show`` false (DDP
    ranks other than 0): no bar, no lines."""

    def __init__(
        self,
        epoch: int,
        cfg: TrainConfig,
        steps: int,
        images: int,
        *,
        sync_every_step: bool,
        sync_on_clock: bool = True,
        show: bool = True,
    ):
        self.epoch, self.epochs, self.steps, self.images = epoch, cfg.epochs, steps, images
        self.every_s, self.sync_every_step = float(cfg.progress_every_s), sync_every_step
        self.sync_on_clock, self.shown = sync_on_clock, show
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=images, unit="img", desc=f"epoch {epoch}/{cfg.epochs}", leave=False)

    def _line_due(self, now: float) -> bool:
        return now - self.last >= (1.0 if self.bar is not None else self.every_s)

    def sync_due(self, step: int) -> bool:
        if self.sync_every_step:
            return True
        return self.sync_on_clock and step < self.steps and self._line_due(time.monotonic())

    def count(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)

    def show(self, step: int, images: int, losses: list[float], dices: list[float]) -> None:
        """Count ``images`` and, when due, show the running means (the values are read back)."""
        self.count(images)
        now = time.monotonic()
        if self.bar is not None:
            self.last = now
            self.bar.set_postfix(loss=f"{np.mean(losses):.4f}", dice=f"{np.mean(dices):.3f}", refresh=False)
            return
        if not self.shown or step >= self.steps or not self._line_due(now):
            return  # the epoch line follows at the end
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = _clock((self.images - self.done) / rate) if rate > 0 else "?"
        print(
            f"epoch {self.epoch}/{self.epochs}  step {step}/{self.steps}  loss {np.mean(losses):.4f}  "
            f"dice {np.mean(dices):.3f}  {rate:.1f} img/s  ETA {eta}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    """``75.4`` → ``1:15``; ``3725`` → ``1:02:05``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@torch.no_grad()
def _validate(model, loss_fn, x, y, cfg: TrainConfig, device) -> tuple[float, float]:
    """(mean loss, Dice mean over images) on the validation split (``x``/``y`` as :func:`stage_data`
    gives them). The values stay on the device until the end: one read-back, not one per batch."""
    model.eval()
    losses, sizes, dices = [], [], []
    bs = max(cfg.batch_size, 8)
    for start in range(0, len(x), bs):
        xb = x[start : start + bs].to(device, non_blocking=True)
        yb = y[start : start + bs].to(device, non_blocking=True).long()
        if device.type == "cuda" and cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.amp):
            logits = model(xb)
        logits = logits.float()
        losses.append(loss_fn(logits, yb).detach())
        sizes.append(len(xb))
        dices.append(dice_per_image_torch(logits, yb))
    # the same float arithmetic as reading each batch's loss at once: float(loss) * n, summed in order
    total = sum(value * n for value, n in zip(torch.stack(losses).tolist(), sizes))
    return float(total / len(x)), float(torch.cat(dices).mean())


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    lines = [",".join(HISTORY_FIELDS)]
    for r in history:
        lines.append(",".join(str(r[f]) if f == "epoch" else repr(float(r[f])) for f in HISTORY_FIELDS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _plot_history(path: Path, history: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [r["train_loss"] for r in history], marker=".", label="train")
    a.plot(epochs, [r["val_loss"] for r in history], marker=".", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    b.plot(epochs, [r["train_dice"] for r in history], marker=".", label="train (augmented batches)")
    b.plot(epochs, [r["val_dice"] for r in history], marker=".", label="val")
    b.set_xlabel("epoch"), b.set_ylabel("Dice (mean over images)"), b.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


__all__ = [
    "BEST",
    "CHECKPOINT",
    "TrainResult",
    "TrainState",
    "build_model",
    "effective_config",
    "epoch_batches",
    "load_checkpoint",
    "model_identity",
    "keep_on_device",
    "save_checkpoint",
    "stage_data",
    "train",
    "training_preprocessing",
]
