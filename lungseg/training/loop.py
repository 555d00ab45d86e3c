"""Training: presets, seeded augmentation, a checkpoint every epoch, exact resume, MLflow tracking.

Where things go
    The run works in ``<output>.partial/`` (a sibling of ``--output``): ``checkpoint.pt`` is written
    there atomically (temporary file + ``os.replace``) at the end of every epoch, ``best.pt`` whenever
    the validation Dice improves, and ``history.csv`` every epoch. When the run ends, the summary,
    the learning curves and ``mlflow_run.json`` are added and the folder is renamed to ``<output>``:
    a previous ``<output>`` stays intact until then, and a failed or killed run never leaves a
    half-written ``<output>``. ``resume=True`` (``lungseg train --resume``) continues a killed run
    from ``<output>.partial/checkpoint.pt``; the same MLflow run goes on. With no ``.partial`` but
    a finished ``<output>``, ``resume`` continues that finished run up to the (raised)
    ``train.epochs`` — same MLflow run, its folder copied to ``.partial`` first so ``<output>`` stays
    intact until the end — or refuses with a one-line error when there is nothing left to train.
    Without ``resume``, a ``.partial`` left by a killed run is discarded *with a message* naming what
    is lost (epochs, MLflow run), and that run, still ``RUNNING`` in MLflow, is marked ``KILLED``.
    ``mlflow_run.json`` is written into ``.partial`` as soon as the run starts, so even a run killed
    in its first epoch can be found and marked.

Exact resume
    The checkpoint holds model, optimizer, scheduler and (bf16-unused, kept for the format) grad
    scaler states, the epoch, best Dice + epoch, the early-stopping counter, the RNG states (torch,
    CUDA, numpy, python), the effective config, the model identity (name + constructor kwargs), the
    history, the MLflow run id and the data's preprocessing (``preprocess``: see
    :func:`training_preprocessing`; ``best.pt`` carries it too). Besides, every epoch draws shuffling, augmentation and dropout
    randomness from generators seeded with ``(seed, epoch)``, so one epoch is a pure function of
    (weights, optimizer state, seed, epoch). On the CPU a run killed after epoch k and resumed ends
    with bitwise the same weights and history as an uninterrupted run (tested by SIGKILL).
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` is on while training (CUDA also gets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set); the previous setting is restored afterwards.

Presets (``train.preset``)
    ``default``: the values of ``params.yaml`` as given; the library defaults are AdamW-style Adam
    (``weight_decay`` 1e-5), lr 1e-3, batch 4, cosine schedule, early stopping after 10 epochs
    without a better validation Dice, augmentation on. ``min_epochs`` (default 0) is a warm-up: before
    that epoch the validation Dice neither selects ``best.pt`` nor counts towards early stopping — on
    a tiny validation set (the bundled sample has 2 slices) an early, lucky value would otherwise be
    kept as the best model and end the run. ``paper`` (LG-Net §3): Adam, lr 0.01, batch 4,
    120 epochs, constant lr, no early stopping, no weight decay. The image size is not a training
    parameter: it comes from preprocessing (``preprocess.image_size``); the paper preset warns when
    the data is not 512².

Device
    ``device: auto`` uses CUDA when available. bf16 autocast (``amp``) and channels_last apply on
    CUDA only; on the CPU they are ignored (the run's params record both).

Recorded paths
    ``mlflow_run.json`` and the ``data_dir`` tag name repository-local things relative to the
    repository (``sqlite:///mlflow.db``, ``data/processed/medseg``; see
    :func:`lungseg.tracking.portable_uri`), so a clone or a copy of the repository never writes
    into the original's store.

Failures
    A non-finite loss raises :class:`~lungseg.errors.TrainingError` naming the epoch and batch; the
    last good checkpoint (previous epoch) is left intact. A checkpoint of another architecture raises
    :class:`~lungseg.errors.CheckpointError` naming the file and both architectures. A missing or
    empty split raises :class:`~lungseg.errors.DataError` (from :func:`lungseg.data.dataset.load_split`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.config import Params, TrainConfig, check_train, flatten, model_options
from lungseg.data.dataset import load_split, read_meta
from lungseg.errors import CheckpointError, ConfigError, LungsegError, TrainingError
from lungseg.io import atomic_write_json, atomic_write_text, check_output_dir, replace_dir, sha256_file
from lungseg.losses import create_loss, default_loss_for
from lungseg.metrics import dice_per_image_torch
from lungseg.models import complete_options, create_model
from lungseg.training.augment import augment

PAPER_PRESET = {"lr": 0.01, "batch_size": 4, "epochs": 120, "scheduler": "none", "early_stopping_patience": 0,
                "weight_decay": 0.0}  # fmt: skip
PAPER_IMAGE_SIZE = 512
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = 1
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

    def describe(self) -> str:
        s = (f"trained {self.epochs_run} epoch(s) in {self.seconds:.1f} s; best val Dice {self.best_val_dice:.4f} "
             f"at epoch {self.best_epoch}{' (early stop)' if self.stopped_early else ''} → {self.output_dir}")
        if self.run_id:
            s += f"\n  MLflow run {self.run_id}"
        if self.lost_logging:
            s += f" ({self.lost_logging} logging call(s) lost: see lost_calls in mlflow_run.json)"
        return s


def effective_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its preset applied (``paper`` overrides lr, batch, epochs, schedule, early stop, decay)."""
    if cfg.preset == "default":
        return cfg
    if cfg.preset == "paper":
        return dataclasses.replace(cfg, **PAPER_PRESET)
    raise ConfigError(f"train.preset: unknown preset {cfg.preset!r} (allowed: default, paper)")


def training_preprocessing(meta: dict[str, Any]) -> dict[str, Any]:
    """What a model needs to know of the data it was trained on, from the processed set's ``meta.json``:
    the preprocess settings (``image_size``, ``hu_window``, …) plus ``dataset``, ``num_labels`` and
    ``label_names``. Stored as ``preprocess`` in ``checkpoint.pt``/``best.pt`` so evaluation and
    inference apply (or check) the very same preprocessing."""
    return {**dict(meta.get("preprocess") or {}), "image_size": int(meta["image_size"]),
            "dataset": meta.get("dataset"), "num_labels": int(meta["num_labels"]),
            "label_names": list(meta.get("label_names") or [])}  # fmt: skip


def model_identity(cfg: TrainConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    """What a checkpoint must match: model name + every constructor argument (the options of
    ``cfg.model`` from ``train.model_kwargs``, see :func:`lungseg.config.model_options`)."""
    options, _ = model_options(cfg)
    options = complete_options(cfg.model, options)
    return {"name": cfg.model, "kwargs": {"in_channels": in_channels, "num_classes": num_classes,
                                           "base_channels": cfg.base_channels, **options}}  # fmt: skip


def build_model(identity: dict[str, Any]) -> torch.nn.Module:
    """The network of a recorded identity (versioned options filled as they were when recorded)."""
    return create_model(identity["name"], **complete_options(identity["name"], identity["kwargs"], recorded=True))


def _fmt_identity(identity: dict[str, Any]) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in sorted(identity.get("kwargs", {}).items()))
    return f"{identity.get('name')}({kw})"


def load_checkpoint(path: str | Path, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a lungseg checkpoint; ``CheckpointError`` if missing, corrupt, or of another architecture.

    Checkpoints hold python RNG states and plain config values besides tensors, so they are read
    with ``weights_only=False``: load only checkpoints you (or your pipeline) wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt/foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "model_identity" not in ckpt or "model_state" not in ckpt:
        raise CheckpointError(f"{path}: not a lungseg checkpoint (no model identity/state)")
    stored = ckpt["model_identity"]
    with contextlib.suppress(ValueError, KeyError, TypeError):  # an unknown model name fails the comparison below
        stored = {**stored, "kwargs": complete_options(stored["name"], stored["kwargs"], recorded=True)}
    ckpt["model_identity"] = stored
    if expected is not None and stored != expected:
        raise CheckpointError(
            f"{path}: checkpoint is for {_fmt_identity(ckpt['model_identity'])}, "
            f"but the configuration asks for {_fmt_identity(expected)}"
        )
    return ckpt


def save_checkpoint(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` (atomic)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


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


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic() -> Any:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` inside the block only."""
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
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


def _validate_config(cfg: TrainConfig) -> None:
    """The load-time checks of :mod:`lungseg.config` again, for configs built in code (a preset, or
    ``dataclasses.replace``); warns about model options that do not apply to ``cfg.model``."""
    check_train(cfg, "train")
    _, ignored = model_options(cfg)
    if ignored:
        print(f"lungseg: warning: train.model_kwargs {', '.join(ignored)}: not an option of {cfg.model}, ignored "
              f"(write options per model: model_kwargs: {{<model>: {{...}}}})", file=sys.stderr)  # fmt: skip


def _build_for_training(identity: dict[str, Any]) -> torch.nn.Module:
    """:func:`build_model`, with a value the model rejects reported as a config error (not a traceback)."""
    try:
        return build_model(identity)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train.model_kwargs: {_fmt_identity(identity)} cannot be built: {exc}") from exc


def _discard_partial(work: Path, tracking_uri: str) -> None:
    """Say what a ``.partial`` left by a killed run holds before it is deleted, and mark its MLflow
    run (still ``RUNNING``: the process died before it could end it) ``KILLED``."""
    import json

    epoch, run_id = None, None
    with contextlib.suppress(CheckpointError):
        ckpt = load_checkpoint(work / CHECKPOINT)
        epoch, run_id = ckpt.get("epoch"), ckpt.get("mlflow_run_id")
    run_file = work / "mlflow_run.json"
    if run_file.is_file():
        with contextlib.suppress(ValueError, OSError):
            info = json.loads(run_file.read_text(encoding="utf-8"))
            if isinstance(info, dict) and info.get("run_id"):
                run_id = info["run_id"]
    marked = ""
    if run_id:
        from lungseg.tracking import mark_stale_run

        marked = mark_stale_run(tracking_uri, run_id)
    what = f"{epoch} finished epoch(s)" if epoch else "no finished epoch"
    print(f"lungseg: discarding {work}, left by an earlier run that did not finish ({what}"
          f"{f'; MLflow run {run_id} {marked}' if run_id else ''}); use --resume to continue such a run instead",
          file=sys.stderr)  # fmt: skip
    shutil.rmtree(work)


def _continue_finished(output_dir: Path, work: Path, cfg: TrainConfig, identity: dict[str, Any]) -> None:
    """``--resume`` with no ``.partial`` but a finished ``output_dir``: copy it to ``work`` to go on
    training it, or refuse (``ConfigError``/``CheckpointError`` for another architecture; nothing
    touched) when nothing is left to train."""
    ckpt = load_checkpoint(output_dir / CHECKPOINT, identity)
    done, stale = int(ckpt["epoch"]), int(ckpt.get("stale", 0))
    if ckpt.get("stopped_early") and not _early_stop_lifted(cfg, stale):
        raise ConfigError(f"{output_dir}: this run stopped early after epoch {done} (no better validation Dice for "
                          f"{stale} epoch(s), train.early_stopping_patience = {cfg.early_stopping_patience}); "
                          "nothing to continue: raise the patience (or set 0) to train it on")  # fmt: skip
    if done >= cfg.epochs:
        raise ConfigError(f"{output_dir}: this run has already trained {done} epoch(s) (train.epochs = {cfg.epochs}); "
                          "nothing to resume: raise train.epochs to continue it, or train without --resume "
                          "to start over")  # fmt: skip
    shutil.copytree(output_dir, work)
    print(f"lungseg: continuing the finished run in {output_dir} from epoch {done} to {cfg.epochs} "
          f"({output_dir} is replaced when it ends)", file=sys.stderr)  # fmt: skip


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
            print(f"lungseg: warning: cannot re-open MLflow run {run_id} ({exc}); starting a new run",
                  file=sys.stderr)  # fmt: skip
            tags = {**tags, "resumed_from_run": run_id}
    run = ResilientRun.start(tracking_uri, params.mlflow.experiment, run_name=f"{cfg.model}-seed{cfg.seed}", tags=tags)
    return run, True


def train(params: Params, data_dir: str | Path, output_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train ``params.train.model`` on ``data_dir`` into ``output_dir`` (see the module docstring)."""
    from lungseg.tracking import data_hash, git_commit, portable_path, resolve_tracking_uri

    t0 = time.perf_counter()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    check_output_dir(output_dir)  # before any work: a file there would only be found at the end
    cfg = effective_config(params.train)
    _validate_config(cfg)
    meta = read_meta(data_dir)
    train_set, val_set = load_split(data_dir, "train"), load_split(data_dir, "val")
    size = int(train_set.images.shape[-1])
    if cfg.preset == "paper" and size != PAPER_IMAGE_SIZE:
        warnings.warn(f"the paper preset trains at {PAPER_IMAGE_SIZE}², this data ({data_dir}) is {size}² "
                      "(the size is set by preprocessing: preprocess.image_size)", stacklevel=2)  # fmt: skip
    num_labels = int(meta["num_labels"])
    preprocessing = training_preprocessing(meta)
    num_classes = 1 if num_labels == 2 else num_labels
    identity = model_identity(cfg, int(train_set.images.shape[1]), num_classes)
    device = _device(cfg)
    use_cuda = device.type == "cuda"
    dhash, dhash_source = data_hash(data_dir)

    work = output_dir.parent / f"{output_dir.name}.partial"
    ckpt_path = work / CHECKPOINT
    tracking_uri = resolve_tracking_uri(params)
    seed_everything(cfg.seed)
    model = _build_for_training(identity)
    divisor = int(getattr(model, "size_divisor", 1))
    if size % divisor:
        raise ConfigError(f"{data_dir}: images are {size}² but {cfg.model} needs a multiple of {divisor} "
                          "(set preprocess.image_size)")  # fmt: skip
    loss_name = default_loss_for(cfg.model) if cfg.loss == "auto" else cfg.loss
    loss_fn = create_loss(loss_name, num_classes=num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no loss scaling; state kept in the format
    start_epoch, best, best_epoch, stale, history, run_id = 0, -1.0, 0, 0, [], None
    stopped_early = continued = False
    if resume and not ckpt_path.is_file() and (output_dir / CHECKPOINT).is_file():
        if work.exists():
            _discard_partial(work, tracking_uri)
        _continue_finished(output_dir, work, cfg, identity)
        continued = True
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, identity)
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        if scheduler is not None and ckpt.get("scheduler_state"):
            scheduler.load_state_dict(ckpt["scheduler_state"])
        if ckpt.get("scaler_state"):
            scaler.load_state_dict(ckpt["scaler_state"])
        _set_rng_state(ckpt["rng"])
        start_epoch, best, best_epoch, stale = ckpt["epoch"], ckpt["best"], ckpt["best_epoch"], ckpt["stale"]
        history, run_id, stopped_early = ckpt["history"], ckpt.get("mlflow_run_id"), ckpt.get("stopped_early", False)
        changed = sorted(k for k, v in ckpt.get("config", {}).items()
                         if k not in ("epochs", "device", "num_workers") and dataclasses.asdict(cfg).get(k) != v)
        if changed:
            print(f"lungseg: warning: resuming with changed train settings {', '.join(changed)} "
                  "(the result will differ from an uninterrupted run)", file=sys.stderr)  # fmt: skip
        if ckpt.get("data_hash") != dhash:
            print(f"lungseg: warning: the data in {data_dir} differs from the data the checkpoint was trained on",
                  file=sys.stderr)  # fmt: skip
        planned = (ckpt.get("config") or {}).get("epochs")
        if cfg.scheduler == "cosine" and planned is not None and planned != cfg.epochs:
            print(f"lungseg: warning: the cosine schedule was planned for {planned} epochs and is kept: past epoch "
                  f"{planned} its learning rate rises again, so {cfg.epochs} epochs this way differ from a run "
                  f"planned for {cfg.epochs}", file=sys.stderr)  # fmt: skip
        if stopped_early and _early_stop_lifted(cfg, stale):
            stopped_early = False  # the patience was raised (or switched off): go on
        print(f"lungseg: resuming {ckpt_path} after epoch {start_epoch}", file=sys.stderr)
    else:
        if resume:
            print(f"lungseg: nothing to resume in {work} (nor a finished run in {output_dir}); starting fresh",
                  file=sys.stderr)  # fmt: skip
        if work.exists():
            _discard_partial(work, tracking_uri)
        work.mkdir(parents=True)
    model.to(device)
    if use_cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    tags = {"git_commit": git_commit(), "data_hash": dhash, "data_hash_source": dhash_source,
            "data_dir": portable_path(data_dir), "dataset": str(meta.get("dataset")), "model": cfg.model,
            "preset": cfg.preset, "lungseg.stage": "train"}  # fmt: skip
    from lungseg.lineage import run_context_tags, source_tags

    tags.update(source_tags(meta))  # the raw data version the processed set came from (#16)
    tags.update(run_context_tags())  # the image and KFP run this stage ran in, when a pipeline set them
    run, is_new = _start_run(params, tracking_uri, run_id, cfg, tags)
    if continued:
        run.set_tags({"lungseg.continued_to_epochs": str(cfg.epochs)})
    _write_run_file(work, run, params, cfg, None, output_dir, final=False)  # findable even if killed in epoch 1
    if is_new:
        run.set_tags(tags)
        _log_params(run, params, cfg, {
            "train.loss_resolved": loss_name, "data.dataset": meta.get("dataset"), "data.image_size": size,
            "data.n_train": len(train_set), "data.n_val": len(val_set), "data.hash_source": dhash_source,
            "model.n_parameters": sum(p.numel() for p in model.parameters()), "device": str(device)})  # fmt: skip
        for row in history:  # a new run for a resumed training: carry the earlier epochs over
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    x_train = torch.from_numpy(train_set.images)
    y_train = torch.from_numpy(train_set.masks).long()
    x_val = torch.from_numpy(val_set.images)
    y_val = torch.from_numpy(val_set.masks).long()
    n = len(x_train)
    try:
        with deterministic():
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                if stopped_early:
                    break
                row = _train_epoch(model, loss_fn, optimizer, x_train, y_train, cfg, device, epoch, ckpt_path)
                val_loss, val_dice = _validate(model, loss_fn, x_val, y_val, cfg, device)
                row.update(val_loss=val_loss, val_dice=val_dice)
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(val_dice)
                elif scheduler is not None:
                    scheduler.step()
                warm = epoch >= cfg.min_epochs  # before min_epochs: no best.pt, no early-stopping count
                improved = warm and val_dice > best
                if improved:
                    best, best_epoch, stale = val_dice, epoch, 0
                elif warm:
                    stale += 1
                history.append(row)
                print(f"epoch {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  "
                      f"val Dice {val_dice:.4f}{'  *' if improved else ''}", file=sys.stderr, flush=True)  # fmt: skip
                if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
                    stopped_early = True
                    print(f"lungseg: early stop: no better val Dice for {stale} epoch(s)", file=sys.stderr)
                state = {
                    "format": CHECKPOINT_FORMAT, "model_identity": identity, "model_state": _cpu_state(model),
                    "epoch": epoch, "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
                    "scaler_state": scaler.state_dict(), "best": best, "best_epoch": best_epoch, "stale": stale,
                    "stopped_early": stopped_early, "history": history, "rng": _rng_state(),
                    "config": dataclasses.asdict(cfg), "params": params.to_dict(), "mlflow_run_id": run.run_id,
                    "num_classes": num_classes, "data_hash": dhash, "image_size": size, "preprocess": preprocessing,
                }  # fmt: skip
                if improved:
                    save_checkpoint({k: state[k] for k in ("format", "model_identity", "model_state", "epoch", "best",
                                                           "config", "num_classes", "data_hash", "image_size",
                                                           "preprocess")},
                                    work / BEST)  # fmt: skip
                save_checkpoint(state, ckpt_path)
                _write_history(work / "history.csv", history)
                run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
    except BaseException as exc:
        run.end("FAILED" if isinstance(exc, (LungsegError, Exception)) else "KILLED")
        run.close()
        raise

    epochs_run = history[-1]["epoch"] if history else 0
    if not (work / BEST).is_file():
        raise TrainingError(f"{work}: no epoch was trained (train.epochs = {cfg.epochs}), nothing to save")
    _write_history(work / "history.csv", history)
    summary = {"best_val_dice": best, "best_epoch": best_epoch, "epochs_run": epochs_run,
               "final_train_loss": history[-1]["train_loss"], "final_val_dice": history[-1]["val_dice"],
               "stopped_early": stopped_early, "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    atomic_write_json(work / "train_metrics.json", summary)
    curves = _plot_history(work / "learning_curves.png", history)
    run.log_metrics({"best_val_dice": best, "best_epoch": best_epoch}, step=epochs_run)
    run.log_artifact(work / "history.csv")
    run.log_artifact(work / "train_metrics.json")
    run.log_artifact(curves, "plots")
    run.log_artifact(work / BEST, "checkpoints")
    run.log_artifact(ckpt_path, "checkpoints")
    best_model = build_model(identity)
    best_model.load_state_dict(load_checkpoint(work / BEST, identity)["model_state"])
    best_model.eval()
    example = np.ascontiguousarray(train_set.images[:2]) if n >= 2 else np.zeros((2, 1, size, size), np.float32)
    model_uri = run.log_torch_model(best_model, example)
    run.end("FINISHED")
    run.close()
    _write_run_file(work, run, params, cfg, model_uri, output_dir, final=True)
    replace_dir(work, output_dir)
    return TrainResult(output_dir, epochs_run, best_epoch, best, stopped_early, run.run_id,
                       run.summary()["lost_logging"], time.perf_counter() - t0, history)  # fmt: skip


def _write_run_file(work: Path, run, params: Params, cfg: TrainConfig, model_uri: str | None, output_dir: Path,
                    *, final: bool) -> None:
    """``mlflow_run.json``: the run (its store as a repository-relative URI where it is local to the
    repository the output lives in, :func:`lungseg.tracking.portable_uri`), the logged model and, at
    the end (``final``), the sha256 of ``best.pt`` — the weights behind ``model_uri``, which
    registration checks the evaluation against. Before the end it says ``status: running``."""
    from lungseg.tracking import portable_uri

    info = {"run_id": run.run_id, "experiment_id": run.experiment_id, "experiment": params.mlflow.experiment,
            "tracking_uri": portable_uri(run.tracking_uri, output_dir), "model_uri": model_uri, "model": cfg.model,
            **run.summary()}  # fmt: skip
    if final:
        info["best_sha256"] = sha256_file(work / BEST)
    else:
        info["status"] = "running"
    atomic_write_json(work / "mlflow_run.json", info)


def _train_epoch(model, loss_fn, optimizer, x, y, cfg: TrainConfig, device, epoch: int, ckpt_path: Path) -> dict:
    from tqdm import tqdm

    use_cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout randomness of this epoch
    model.train()
    n = len(x)
    order = torch.randperm(n, generator=gen)
    starts = list(range(0, n, cfg.batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()  # a last batch of one image breaks BatchNorm statistics: dropped this epoch
    losses, dices, t0 = [], [], time.perf_counter()
    bar = tqdm(starts, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not sys.stderr.isatty())
    for step, start in enumerate(bar, 1):
        idx = order[start : start + cfg.batch_size]
        xb, yb = x[idx], y[idx]
        if cfg.augment:
            xb, yb = augment(xb, yb, gen)
        xb, yb = xb.to(device), yb.to(device)
        if use_cuda and cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda and cfg.amp):
            logits = model(xb)
        loss = loss_fn(logits.float(), yb)
        if not torch.isfinite(loss):
            last = f"the last good checkpoint is {ckpt_path} (epoch {epoch - 1})" if ckpt_path.is_file() else \
                "no checkpoint was written yet"  # fmt: skip
            raise TrainingError(f"loss became {loss.item()} at epoch {epoch}, step {step} "
                                f"(lr {optimizer.param_groups[0]['lr']:g}); {last}")  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        dices.append(dice_per_image_torch(logits.detach().float(), yb).mean().item())
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", dice=f"{np.mean(dices):.3f}")
    bar.close()
    return {"epoch": epoch, "train_loss": float(np.mean(losses)), "train_dice": float(np.mean(dices)),
            "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


@torch.no_grad()
def _validate(model, loss_fn, x, y, cfg: TrainConfig, device) -> tuple[float, float]:
    """(mean loss, Dice mean over images) on the validation split."""
    model.eval()
    losses, dices = [], []
    bs = max(cfg.batch_size, 8)
    for start in range(0, len(x), bs):
        xb, yb = x[start : start + bs].to(device), y[start : start + bs].to(device)
        if device.type == "cuda" and cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.amp):
            logits = model(xb)
        logits = logits.float()
        losses.append(loss_fn(logits, yb).item() * len(xb))
        dices.append(dice_per_image_torch(logits, yb).cpu())
    return float(sum(losses) / len(x)), float(torch.cat(dices).mean())


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


__all__ = ["TrainResult", "build_model", "effective_config", "load_checkpoint", "model_identity",
           "save_checkpoint", "train", "training_preprocessing"]  # fmt: skip
