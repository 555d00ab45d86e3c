"""Checkpoints: what ``checkpoint.pt`` and ``best.pt`` hold, the model identity they are checked
against, and their atomic I/O. Evaluation and inference read checkpoints through this module.

``checkpoint.pt`` (every ``train.checkpoint_every`` epochs, see :meth:`TrainState.checkpoint_due`) is
:meth:`TrainState.checkpoint`: the run's constants
(:class:`RunInfo`: model identity, effective config, all params, number of classes, data hash, image
size, preprocessing, the paper preset's deviations, ``distributed``: the world size and
``sync_batchnorm`` of the process group that wrote it — ``{world_size: 1, sync_batchnorm: false}``
without ``torchrun``) plus the state of the epoch — model, optimizer
and scheduler states, epoch, best Dice + epoch, early-stopping counter, ``stopped_early``, history,
RNG states (python, numpy, torch, CUDA), MLflow run id. ``best.pt`` (when the validation Dice improves)
is :meth:`TrainState.best_checkpoint`: the weights, ``epoch``, ``best`` and the run's constants.

Formats: 2 (this one). Format 1 (before the split of the training loop) also stored ``scaler_state``,
the state of a disabled ``GradScaler`` kept only for the file format (bf16 needs no loss scaling);
it is ignored when such a checkpoint is loaded, and format-1 checkpoints resume exactly as before.

Writing: :class:`CheckpointWriter` writes the files in the training thread (default) or, with
``train.checkpoint_async``, in one background thread from a snapshot (model, optimizer and scheduler
states copied to the CPU at the end of the epoch), while the next epoch trains. Either way each file
goes to a temporary file, is fsynced and renamed into place (:func:`save_checkpoint`), one write at a
time: a new write waits for the previous one, whose error (disk full, …) is raised then — or at the
end of the run (:meth:`CheckpointWriter.wait`) — never lost.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.config import TrainConfig, model_options
from lungseg.errors import CheckpointError
from lungseg.models import complete_options, create_recorded
from lungseg.models.input_norm import KEYS as INPUT_NORM_KEYS

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = 2
#: what ``best.pt`` keeps of a full checkpoint
BEST_KEYS = (
    "format",
    "model_identity",
    "model_state",
    "epoch",
    "best",
    "config",
    "num_classes",
    "data_hash",
    "image_size",
    "preprocess",
    "preset_deviations",
)


# ------------------------------------------------------------------------------------ identity
def model_identity(cfg: TrainConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    """What a checkpoint must match: model name + every constructor argument (the options of
    ``cfg.model`` from ``train.model_kwargs``, see :func:`lungseg.config.model_options`)."""
    options, _ = model_options(cfg)
    options = complete_options(cfg.model, options)
    return {
        "name": cfg.model,
        "kwargs": {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "base_channels": cfg.base_channels,
            **options,
        },
    }


def build_model(identity: dict[str, Any]) -> torch.nn.Module:
    """The network of a recorded identity (versioned options filled as they were when recorded)."""
    return create_recorded(identity)


def fmt_identity(identity: dict[str, Any]) -> str:
    """``unet(base_channels=4, in_channels=1, num_classes=1)``."""
    kw = ", ".join(f"{k}={v}" for k, v in sorted(identity.get("kwargs", {}).items()))
    return f"{identity.get('name')}({kw})"


def training_preprocessing(meta: dict[str, Any]) -> dict[str, Any]:
    """What a model needs to know of the data it was trained on, from the processed set's ``meta.json``:
    the preprocess settings (``image_size``, ``hu_window``, …) plus ``dataset``, ``num_labels`` and
    ``label_names``. Stored as ``preprocess`` in ``checkpoint.pt``/``best.pt`` so evaluation and
    inference apply (or check) the very same preprocessing."""
    return {
        **dict(meta.get("preprocess") or {}),
        "image_size": int(meta["image_size"]),
        "dataset": meta.get("dataset"),
        "num_labels": int(meta["num_labels"]),
        "label_names": list(meta.get("label_names") or []),
    }


# ------------------------------------------------------------------------------------ I/O
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
    if problem := norm_mismatch(stored, ckpt.get("preprocess")):
        raise CheckpointError(f"{path}: {problem}")
    if expected is not None and stored != expected:
        raise CheckpointError(f"{path}: {identity_difference(stored, expected)}")
    return ckpt


def _fmt_norm(record: dict[str, Any] | None) -> str:
    if not record:
        return "none (window data)"
    return "ct_zscore (" + ", ".join(f"{k} {record.get(k)!r}" for k in INPUT_NORM_KEYS) + ")"


def norm_mismatch(identity: dict[str, Any], preprocess: dict[str, Any] | None) -> str | None:
    """Why the ``preprocess`` record and the model identity's ``input_norm`` disagree, or None (review
    of #25: a checkpoint whose preprocess says ``ct_zscore`` but whose identity carries no
    ``input_norm`` — hand-edited — was predicted without normalisation, silently). The identity
    decides what the network applies, so both must name the same normalisation and numbers."""
    if preprocess is None:  # an old checkpoint without the record: nothing to check against
        return None
    scheme = preprocess.get("normalization", "window")
    norm = identity.get("input_norm")
    if scheme == "window" and not norm:
        return None
    recorded = preprocess.get("ct_norm") or {}
    if scheme != "window" and norm and all(norm.get(k) == recorded.get(k) for k in INPUT_NORM_KEYS):
        return None
    return (
        f"the preprocess record says normalization {_fmt_norm(recorded) if scheme != 'window' else 'window'} "
        f"but the model identity's input_norm is {_fmt_norm(norm)}: the network would not apply the "
        "normalisation it was trained with; not a checkpoint lungseg wrote (edited?)"
    )


def identity_difference(stored: dict[str, Any], expected: dict[str, Any]) -> str:
    """``checkpoint is for X, but the configuration asks for Y`` naming what differs — the
    architecture, or the input normalisation (``input_norm``: the data's ``preprocess.normalization``),
    which :func:`fmt_identity` does not show."""
    if {k: v for k, v in stored.items() if k != "input_norm"} != {
        k: v for k, v in expected.items() if k != "input_norm"
    }:
        return f"checkpoint is for {fmt_identity(stored)}, but the configuration asks for {fmt_identity(expected)}"
    return (
        f"checkpoint is for {fmt_identity(stored)} with input normalisation {_fmt_norm(stored.get('input_norm'))}, "
        f"but the data asks for {_fmt_norm(expected.get('input_norm'))} (the data's preprocess.normalization or its "
        "statistics differ from the run's: resume with the data it was trained on, or train without --resume)"
    )


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


# ------------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    """The python, numpy, torch and CUDA RNG states (restored on resume)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def optimizer_to_params(optimizer: torch.optim.Optimizer) -> None:
    """Put every optimizer state tensor (Adam's moments, …) where its parameter now is — device and,
    for floating state, dtype — with the policy of ``Optimizer.load_state_dict`` (which casts to the
    parameters' device *when it is called*; ``step`` counters keep theirs).

    Why: ``--resume`` restores the optimizer while the model is still on the CPU; ``model.to(cuda)``
    then moves the parameters but not the state, and the first ``optimizer.step()`` would mix CPU
    moments with CUDA parameters (a device error in the fused/foreach Adam kernels). Re-loading the
    optimizer's own state dict after the move applies torch's casting rules, nothing hand-written."""
    if any(optimizer.state.values()):
        optimizer.load_state_dict(optimizer.state_dict())


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s state dict (what the files store)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def snapshot(obj: Any) -> Any:
    """A deep copy of ``obj`` (a state dict, a history) with every tensor copied to the CPU: what a
    background write may hold while training goes on changing the originals in place (Adam's moments,
    the step counters, the history list)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(snapshot(v) for v in obj)
    return copy.deepcopy(obj)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files (``.checkpoint.pt.tmp-<pid>``, ``.best.pt.tmp-<pid>``) a process
    killed while writing left in ``folder``; the deleted paths. The files themselves are intact:
    a temporary file only replaces its target once it is complete."""
    gone = []
    for name in (CHECKPOINT, BEST):
        for tmp in folder.glob(f".{name}.tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                gone.append(tmp)
    return gone


def _save_all(items: list[tuple[dict[str, Any], Path]]) -> None:
    for obj, path in items:
        save_checkpoint(obj, path)


class CheckpointWriter:
    """Writes checkpoint files one batch at a time: in the calling thread, or (``background``) in one
    background thread, so that the next epoch trains while the files are written.

    :meth:`write` first waits for the previous batch and raises its error, if any (the exception
    of the failed write, e.g. ``OSError(28, 'No space left on device')``); :meth:`wait` (called at
    the end of the run) does the same for the last one. :meth:`abandon` is for a run that already
    failed: it waits and logs a write error as a warning, leaving the run's own error to propagate.
    What is handed over must not change afterwards (:func:`snapshot`)."""

    def __init__(self, background: bool = False):
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, items: list[tuple[dict[str, Any], Path]]) -> None:
        """Write every ``(content, path)`` in order with :func:`save_checkpoint`."""
        self.wait()
        if not self.background:
            _save_all(items)
            return
        self._thread = threading.Thread(target=self._run, args=(items,), name="lungseg-checkpoint-writer")
        self._thread.start()

    def _run(self, items: list[tuple[dict[str, Any], Path]]) -> None:
        try:
            _save_all(items)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread, raised there
            self._error = exc

    def wait(self) -> None:
        """Block until the last write is done; raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def abandon(self) -> None:
        """:meth:`wait` for a run that is failing already: a write error is printed, not raised."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - reported; the run's own error is the one raised
            log.warning(f"lungseg: warning: a checkpoint write failed too: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------ state
@dataclass(frozen=True)
class RunInfo:
    """What every checkpoint of one run records and that does not change from epoch to epoch."""

    model_identity: dict[str, Any]
    config: dict[str, Any]
    """The effective ``train`` settings (preset applied)."""
    params: dict[str, Any]
    num_classes: int
    data_hash: str
    image_size: int
    preprocess: dict[str, Any]
    preset_deviations: dict[str, Any] = field(default_factory=dict)
    distributed: dict[str, Any] = field(default_factory=lambda: {"world_size": 1, "sync_batchnorm": False})
    """The DDP group that trains (:meth:`lungseg.training.distributed.Distributed.checkpoint_info`)."""

    def as_dict(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, **dataclasses.asdict(self)}


@dataclass
class TrainState:
    """The state a run carries from epoch to epoch, and the two files it produces.

    ``epoch`` is the last finished epoch (0 before the first); ``best``/``best_epoch`` the best
    validation Dice so far (-1/0 before any); ``stale`` the epochs since it last improved (early
    stopping); ``run_id`` the MLflow run the epochs are logged to.
    """

    info: RunInfo
    epoch: int = 0
    best: float = -1.0
    best_epoch: int = 0
    stale: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None

    @classmethod
    def resumed(cls, info: RunInfo, ckpt: dict[str, Any]) -> TrainState:
        """The state stored in ``ckpt`` (format 1 or 2) under this run's ``info``."""
        return cls(
            info,
            epoch=int(ckpt["epoch"]),
            best=float(ckpt["best"]),
            best_epoch=int(ckpt["best_epoch"]),
            stale=int(ckpt["stale"]),
            stopped_early=bool(ckpt.get("stopped_early", False)),
            history=list(ckpt["history"]),
            run_id=ckpt.get("mlflow_run_id"),
        )

    def end_epoch(self, row: dict[str, Any], *, min_epochs: int, patience: int) -> bool:
        """Record the finished epoch ``row`` (with ``val_dice``); whether it is the new best. Before
        ``min_epochs`` an epoch neither becomes the best nor counts towards early stopping."""
        epoch, val_dice = int(row["epoch"]), float(row["val_dice"])
        warm = epoch >= min_epochs
        improved = warm and val_dice > self.best
        if improved:
            self.best, self.best_epoch, self.stale = val_dice, epoch, 0
        elif warm:
            self.stale += 1
        self.epoch = epoch
        self.history.append(row)
        if patience and self.stale >= patience:
            self.stopped_early = True
        return improved

    def checkpoint(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, *, copy_state: bool = False
    ) -> dict[str, Any]:
        """The content of ``checkpoint.pt`` after :attr:`epoch` (RNG states taken now). ``copy_state``:
        the optimizer and scheduler states and the history as copies (:func:`snapshot`), for a
        background write; by default they are the live objects, written at once."""
        optimizer_state = optimizer.state_dict()
        scheduler_state = scheduler.state_dict() if scheduler is not None else None
        history = self.history
        if copy_state:
            optimizer_state, scheduler_state, history = snapshot((optimizer_state, scheduler_state, history))
        return {
            **self.info.as_dict(),
            "model_state": cpu_state(model),
            "epoch": self.epoch,
            "optimizer_state": optimizer_state,
            "scheduler_state": scheduler_state,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "stopped_early": self.stopped_early,
            "history": history,
            "rng": rng_state(),
            "mlflow_run_id": self.run_id,
        }

    def checkpoint_due(self, every: int, last_epoch: int, *, improved: bool) -> bool:
        """Whether ``checkpoint.pt`` is written after :attr:`epoch`: every ``every`` epochs, at
        ``last_epoch``, at an early stop, and whenever ``best.pt`` is (``improved``) — so ``best.pt``
        is never newer than ``checkpoint.pt`` and a resumed run never has to reconcile a best model
        from epochs it is about to re-run."""
        return improved or self.stopped_early or self.epoch >= last_epoch or self.epoch % every == 0

    @staticmethod
    def best_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
        """The content of ``best.pt`` from a full checkpoint of the improving epoch."""
        return {k: checkpoint[k] for k in BEST_KEYS}

    def save(
        self,
        folder: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        *,
        improved: bool,
        writer: CheckpointWriter | None = None,
    ) -> None:
        """Write ``best.pt`` (when ``improved``) and then ``checkpoint.pt`` into ``folder``, atomically;
        through ``writer`` (a background one gets a snapshot), else at once."""
        writer = writer or CheckpointWriter()
        ckpt = self.checkpoint(model, optimizer, scheduler, copy_state=writer.background)
        items = [(self.best_checkpoint(ckpt), folder / BEST)] if improved else []
        writer.write([*items, (ckpt, folder / CHECKPOINT)])


__all__ = [
    "BEST",
    "BEST_KEYS",
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "CheckpointWriter",
    "RunInfo",
    "TrainState",
    "build_model",
    "cpu_state",
    "fmt_identity",
    "load_checkpoint",
    "model_identity",
    "optimizer_to_params",
    "remove_stale_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "snapshot",
    "training_preprocessing",
]
