"""The run's folder: ``<output>.partial`` opened fresh, resumed, or continued from a finished run; a
killed run's leftovers reported and discarded; the history written as it grows (see
``docs/training.md``, "Where things go" and "Exact resume")."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from lungseg.artifacts.checkpoint import (
    CHECKPOINT,
    TrainState,
    load_checkpoint,
    remove_stale_temporaries,
    set_rng_state,
)
from lungseg.artifacts.run_file import RUN_FILE, RunFile
from lungseg.config import TrainConfig
from lungseg.errors import CheckpointError, ConfigError, DataError
from lungseg.io import MARKER, atomic_write_text, check_output_dir, marker_text
from lungseg.tracking import mark_stale_run
from lungseg.training.setup import Setup

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "train_loss", "train_dice", "val_loss", "val_dice", "lr", "seconds"]

#: train settings that do not change what is trained (a resume with them changed is not warned about)
NEUTRAL_SETTINGS = (
    "epochs",
    "device",
    "num_workers",
    "progress_every_s",
    "data_on_device",
    "checkpoint_every",
    "checkpoint_async",
)


#: settings a resume cannot change: the optimizer and schedule states it restores carry their values
#: (a changed lr was warned about but trained at the old one, while the checkpoint recorded the new);
#: ``optimizer`` (#25): Adam's state loaded into SGD (or back) crashed the first step with a KeyError.
#: The other keys #25 added are read afresh each epoch, nothing restored carries them, so a resume may
#: change them (with the warning of :func:`_warn_changes`): ``iterations_per_epoch``,
#: ``oversample_foreground`` (the batch plan is drawn from ``(seed, epoch)``), ``augment``, ``grad_clip``
RESTORED_SETTINGS = ("lr", "weight_decay", "scheduler", "optimizer")


def work_dir(output_dir: Path) -> Path:
    """``<output>.partial``: where the run works until it is renamed to ``output_dir``."""
    return output_dir.parent / f"{output_dir.name}.partial"


def open_work(
    output_dir: Path, s: Setup, data_dir: Path, tracking_uri: str, *, resume: bool, model, optimizer, scheduler, ddp
) -> tuple[TrainState, bool]:
    """Make ``<output>.partial`` ready and return the state to start from and whether a finished run
    is continued: the state of ``.partial/checkpoint.pt`` (``resume``), the finished ``output_dir``
    copied there to go on (``resume`` with no ``.partial``), or a fresh folder — a ``.partial`` left
    by a killed run discarded with a message (:func:`discard_partial`)."""
    work = work_dir(output_dir)
    ckpt_path = work / CHECKPOINT
    continued = False
    if resume and not ckpt_path.is_file() and (output_dir / CHECKPOINT).is_file():
        refuse_registered(output_dir, tracking_uri)
        if work.exists():
            discard_partial(work, tracking_uri)
        continue_finished(output_dir, work, s.cfg, s.identity)
        continued = True
    if resume and ckpt_path.is_file():
        return restore(ckpt_path, s, data_dir, model, optimizer, scheduler, ddp), continued
    if resume:
        log.info(f"lungseg: nothing to resume in {work} (nor a finished run in {output_dir}); starting fresh")
    if work.exists():
        discard_partial(work, tracking_uri)
    work.mkdir(parents=True)
    (work / MARKER).write_text(marker_text(), encoding="utf-8")  # lungseg's: a later run may discard it
    return TrainState(s.info), continued


def discard_partial(work: Path, tracking_uri: str) -> None:
    """Say what a ``.partial`` left by a killed run holds before it is deleted, and mark its MLflow
    run (still ``RUNNING``: the process died before it could end it) ``KILLED``. A folder of that name
    that is not a training's work folder — no lungseg marker, no readable lungseg checkpoint or run
    file (an older lungseg's) — is refused unless ``--overwrite`` (:func:`lungseg.io.check_output_dir`)."""
    epoch, run_id, ours = None, None, False
    with contextlib.suppress(CheckpointError):
        ckpt = load_checkpoint(work / CHECKPOINT)
        epoch, run_id, ours = ckpt.get("epoch"), ckpt.get("mlflow_run_id"), True
    with contextlib.suppress(DataError):  # a run file half-written or unreadable: the checkpoint's run id
        run_file = RunFile.find(work / RUN_FILE)
        run_id = run_file.run_id if run_file else run_id
        ours = ours or run_file is not None
    if not ours:
        check_output_dir(work)
    marked = mark_stale_run(tracking_uri, run_id) if run_id else ""
    what = f"{epoch} finished epoch(s)" if epoch else "no finished epoch"
    log.info(
        f"lungseg: discarding {work}, left by an earlier run that did not finish ({what}"
        f"{f'; MLflow run {run_id} {marked}' if run_id else ''}); use --resume to continue such a run instead"
    )
    shutil.rmtree(work)


def refuse_registered(output_dir: Path, tracking_uri: str) -> None:
    """A finished run whose weights are a registered model version is not continued: its metrics
    (``best_val_dice``, ``best_epoch``) would change under that version. ``ConfigError`` naming it."""
    from mlflow import MlflowClient

    run = RunFile.find(output_dir / RUN_FILE)
    if run is None:
        return
    versions = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_model_versions(
        f"run_id = '{run.run_id}'"
    )
    if versions:
        named = ", ".join(sorted(f"{v.name} v{v.version}" for v in versions))
        raise ConfigError(
            f"{output_dir}: its run {run.run_id} is registered ({named}): continuing it would change the "
            "metrics under that version; train into a new --output instead"
        )


def continue_finished(output_dir: Path, work: Path, cfg: TrainConfig, identity: dict[str, Any]) -> None:
    """``--resume`` with no ``.partial`` but a finished ``output_dir``: copy it to ``work`` to go on
    training it, or refuse (``ConfigError``/``CheckpointError`` for another architecture; nothing
    touched) when nothing is left to train."""
    ckpt = load_checkpoint(output_dir / CHECKPOINT, identity)
    # before anything is copied or reopened: a refusal later left a .partial and its MLflow run FAILED
    _refuse_restored_changes(ckpt, cfg, output_dir / CHECKPOINT)
    done, stale = int(ckpt["epoch"]), int(ckpt.get("stale", 0))
    if ckpt.get("stopped_early") and not early_stop_lifted(cfg, stale):
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
    log.info(
        f"lungseg: continuing the finished run in {output_dir} from epoch {done} to {cfg.epochs} "
        f"({output_dir} is replaced when it ends)"
    )


def early_stop_lifted(cfg: TrainConfig, stale: int) -> bool:
    """Whether a run that stopped early may go on under ``cfg`` (patience off, or raised above ``stale``)."""
    return cfg.early_stopping_patience == 0 or stale < cfg.early_stopping_patience


def restore(ckpt_path: Path, s: Setup, data_dir: Path, model, optimizer, scheduler, ddp) -> TrainState:
    """The state of ``ckpt_path`` loaded into ``model``/``optimizer``/``scheduler`` and the RNGs, with
    a warning for each setting or data that changed since it was written."""
    ckpt = load_checkpoint(ckpt_path, s.identity)
    _refuse_restored_changes(ckpt, s.cfg, ckpt_path)
    model.load_state_dict(ckpt["model_state"])
    optimizer.load_state_dict(ckpt["optimizer_state"])
    if scheduler is not None and ckpt.get("scheduler_state"):
        scheduler.load_state_dict(ckpt["scheduler_state"])
        _rebase_poly(s.cfg, scheduler, optimizer)
    set_rng_state(ckpt["rng"])  # (a format-1 file's scaler_state, of a disabled GradScaler, is not needed)
    remove_stale_temporaries(ckpt_path.parent)  # a process killed while writing a checkpoint leaves one
    ddp.check_resume(ckpt, ckpt_path)
    state = TrainState.resumed(s.info, ckpt)
    _warn_changes(ckpt, s, data_dir)
    if state.stopped_early and early_stop_lifted(s.cfg, state.stale):
        state.stopped_early = False  # the patience was raised (or switched off): go on
    log.info(f"lungseg: resuming {ckpt_path} after epoch {state.epoch}")
    return state


def _refuse_restored_changes(ckpt: dict[str, Any], cfg: TrainConfig, ckpt_path: Path) -> None:
    """A :data:`RESTORED_SETTINGS` value changed since ``ckpt``: a ``ConfigError`` (the restored optimizer
    and schedule would train at the old value while the run records the new one)."""
    saved, now = ckpt.get("config") or {}, cfg.model_dump()
    changed = [f"{k} {saved[k]!r} → {now[k]!r}" for k in RESTORED_SETTINGS if k in saved and saved[k] != now.get(k)]
    if changed:
        raise ConfigError(
            f"{ckpt_path}: --resume restores the optimizer and schedule of the run, so train.{', '.join(changed)} "
            "cannot take effect; resume with the run's values, or train without --resume to start over"
        )


def _rebase_poly(cfg: TrainConfig, scheduler, optimizer) -> None:
    """A poly schedule planned for other than ``train.epochs`` is re-planned for ``train.epochs``
    (:func:`lungseg.training.poly_lr.rebase_poly`), with one warning line saying so (review of #25:
    a finished poly run continued with more epochs trained at lr 0, weights unchanged, silently)."""
    if cfg.scheduler != "poly" or scheduler.total_iters == cfg.epochs:
        return
    from lungseg.training.poly_lr import rebase_poly

    old, lr = rebase_poly(scheduler, optimizer, cfg.epochs)
    if scheduler.total_iters != old:
        log.warning(
            f"lungseg: warning: the poly schedule was planned for {old} epochs and is re-planned for "
            f"{cfg.epochs}: from epoch {scheduler.last_epoch + 1} on the learning rate is a run planned for "
            f"{cfg.epochs} epochs' (next {lr:.4g}); the epochs before kept the old plan, so the result "
            f"differs from such a run"
        )


def _warn_changes(ckpt: dict[str, Any], s: Setup, data_dir: Path) -> None:
    """A warning for each train setting (not :data:`NEUTRAL_SETTINGS`) or data changed since ``ckpt``."""
    cfg = s.cfg
    changed = sorted(  # each named with its old → new value (#24)
        f"{k} {v!r} → {cfg.model_dump().get(k)!r}"
        for k, v in ckpt.get("config", {}).items()
        if k not in NEUTRAL_SETTINGS and cfg.model_dump().get(k) != v
    )
    if changed:
        log.warning(
            f"lungseg: warning: resuming with changed train settings {', '.join(changed)} "
            "(the result will differ from an uninterrupted run)"
        )
    if ckpt.get("data_hash") != s.info.data_hash:
        log.warning(f"lungseg: warning: the data in {data_dir} differs from the data the checkpoint was trained on")
    planned = (ckpt.get("config") or {}).get("epochs")
    if cfg.scheduler == "cosine" and planned is not None and planned != cfg.epochs:
        log.warning(
            f"lungseg: warning: the cosine schedule was planned for {planned} epochs and is kept: past epoch "
            f"{planned} its learning rate rises again, so {cfg.epochs} epochs this way differ from a run "
            f"planned for {cfg.epochs}"
        )


def last_good(ckpt_path: Path, saved: int) -> str:
    """Which checkpoint a failed run can resume from: ``ckpt_path`` holding epoch ``saved`` (as the
    loop knows it: a background write of it may still be finishing), or none (``saved`` 0)."""
    return f"the last good checkpoint is {ckpt_path} (epoch {saved})" if saved > 0 else "no checkpoint was written yet"


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """``history.csv``: one row per finished epoch (floats as ``repr``, exactly)."""
    lines = [",".join(HISTORY_FIELDS)]
    for r in history:
        lines.append(",".join(str(r[f]) if f == "epoch" else repr(float(r[f])) for f in HISTORY_FIELDS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_history(path: Path, history: list[dict[str, Any]]) -> Path:
    """``learning_curves.png``: loss and Dice per epoch, train and validation (written atomically)."""
    # imported here: choosing the Agg backend at import time would change it for a whole notebook
    # that merely imports lungseg.training, and pyplot takes ~1.5 s to import (python -X importtime, this machine)
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
    "HISTORY_FIELDS",
    "NEUTRAL_SETTINGS",
    "continue_finished",
    "discard_partial",
    "early_stop_lifted",
    "last_good",
    "open_work",
    "plot_history",
    "restore",
    "write_history",
]
