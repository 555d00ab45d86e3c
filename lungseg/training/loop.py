"""The training loop: :func:`train` and its skeleton, a list of hooks from the rooms beside it —
:mod:`~lungseg.training.setup` (settings, device, seeding, the model), :mod:`~lungseg.training.rundir`
(``.partial``, resume, history), :mod:`~lungseg.training.epoch` (one epoch, validation),
:mod:`~lungseg.training.mlflow_run` (the MLflow run and ``mlflow_run.json``) and
:mod:`~lungseg.training.distributed` (DDP). What a run promises — where files go, exact resume,
presets, MLflow, progress, devices, DDP, failures — is ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungseg.artifacts.checkpoint import CHECKPOINT, CheckpointWriter, TrainState
from lungseg.config import Params
from lungseg.errors import TrainingError
from lungseg.io import check_output_dir, replace_dir
from lungseg.tracking import resolve_tracking_uri
from lungseg.training import distributed, mlflow_run, precise_bn, rundir
from lungseg.training.distributed import NO_RUN
from lungseg.training.epoch import NonFiniteLoss, stage_data, train_epoch, validate
from lungseg.training.setup import (
    Setup,
    build_training,
    describe_preset,
    deterministic,
    prepare,
    seed_everything,
    step_scheduler,
    to_device,
)

log = logging.getLogger(__name__)


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


class Writer:
    """What rank 0 alone does (every process without ``torchrun``): report, read and write the output
    folder and its checkpoints, log to MLflow. The other DDP ranks get a :class:`Worker`, whose hooks
    do nothing: the one place where the ranks differ."""

    reports = True

    def __init__(self, params: Params, s: Setup, data_dir: Path, output_dir: Path, ddp):
        self.params, self.s, self.data_dir, self.output_dir, self.ddp = params, s, data_dir, output_dir, ddp
        self.work = rundir.work_dir(output_dir)
        self.tracking_uri = resolve_tracking_uri(params)
        self.run = NO_RUN

    def announce(self) -> None:
        if self.s.cfg.preset != "default":  # paper, nnunet (#25)
            log.info(f"lungseg: {self.s.cfg.preset} preset: {describe_preset(self.s.preset)}")

    def open_work(self, resume: bool, model, optimizer, scheduler) -> tuple[TrainState, bool]:
        return rundir.open_work(
            self.output_dir,
            self.s,
            self.data_dir,
            self.tracking_uri,
            resume=resume,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            ddp=self.ddp,
        )

    def open_run(self, state: TrainState, model, *, continued: bool):
        """The MLflow run; its block ends it FINISHED, or FAILED/KILLED when anything in it raises (the
        last flush happens either way), so the run file written after it has the final tally."""
        self.run = mlflow_run.open_run(
            self.params,
            self.s,
            self.data_dir,
            self.tracking_uri,
            state,
            work=self.work,
            output_dir=self.output_dir,
            model=model,
            continued=continued,
        )
        return self.run

    def end_epoch(self, state: TrainState, improved: bool, due: bool, model, optimizer, scheduler, ckpts) -> None:
        """The epoch's line, its checkpoint files (when ``due``), ``history.csv`` and its metrics."""
        row, cfg = state.history[-1], self.s.cfg
        log.info(
            f"epoch {row['epoch']}/{cfg.epochs}  loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"val Dice {row['val_dice']:.4f}{'  *' if improved else ''}"
        )
        if state.stopped_early:
            log.info(f"lungseg: early stop: no better val Dice for {state.stale} epoch(s)")
        if due:
            state.save(self.work, model, optimizer, scheduler, improved=improved, writer=ckpts)
        rundir.write_history(self.work / "history.csv", state.history)
        self.run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    def log_results(self, state: TrainState, t0: float) -> str | None:
        return mlflow_run.log_results(self.params, self.s, state, self.run, self.work, t0)

    def finish(self, model_uri: str | None) -> tuple[str | None, int]:
        """``mlflow_run.json`` in its final form, ``.partial`` renamed to the output; the run id and
        the number of logging calls lost."""
        mlflow_run.write_run_file(self.work, self.run, self.params, self.s.cfg, model_uri, self.output_dir, final=True)
        replace_dir(self.work, self.output_dir)
        return self.run.run_id, self.run.summary()["lost_logging"]


class Worker(Writer):
    """A DDP rank other than 0: trains its share and takes part in every collective; reads and writes
    nothing, logs nothing (its state comes from rank 0, :meth:`Distributed.share_start`)."""

    reports = False

    def announce(self) -> None:
        pass

    def open_work(self, resume: bool, model, optimizer, scheduler) -> tuple[TrainState, bool]:
        return TrainState(self.s.info), False

    def open_run(self, state: TrainState, model, *, continued: bool):
        return NO_RUN

    def end_epoch(self, state: TrainState, improved: bool, due: bool, model, optimizer, scheduler, ckpts) -> None:
        pass  # the same decisions as rank 0 (same all-reduced values); rank 0 reports and writes

    def log_results(self, state: TrainState, t0: float) -> str | None:
        return None

    def finish(self, model_uri: str | None) -> tuple[str | None, int]:
        return None, 0


def train(params: Params, data_dir: str | Path, output_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train ``params.train.model`` on ``data_dir`` into ``output_dir`` (see ``docs/training.md``);
    under ``torchrun``, as one process of a DDP group (:mod:`lungseg.training.distributed`)."""
    ddp = distributed.setup(params.train)
    try:
        result = _train(params, Path(data_dir), Path(output_dir), resume, ddp)
        ddp.barrier()  # the other ranks wait until rank 0 has put the output in place
        return result
    except Exception as exc:
        broken = ddp.broken(exc)
        if broken is exc:
            raise
        raise broken from exc
    finally:
        ddp.close()


def _train(params: Params, data_dir: Path, output_dir: Path, resume: bool, ddp) -> TrainResult:
    t0 = time.perf_counter()
    check_output_dir(output_dir)  # before any work: a file there would only be found at the end
    s = prepare(params, data_dir, ddp)
    out = (Writer if ddp.is_main else Worker)(params, s, data_dir, output_dir, ddp)
    out.announce()
    seed_everything(s.cfg.seed)
    model, loss_fn, optimizer, scheduler = build_training(s, data_dir)
    state, continued = out.open_work(resume, model, optimizer, scheduler)
    model = to_device(model, optimizer, s.cfg, s.device)
    with out.open_run(state, model, continued=continued):
        _share_state(ddp, state, optimizer, scheduler)
        # what trains: ``net`` (DDP; routes forward_heads through DDP's forward for deep supervision);
        # ``model`` (inside it) is what is saved and validated
        heads = bool(getattr(model, "deep_supervision_weights", None))
        net = ddp.wrap(model, s.cfg, s.device, heads=heads, sample_shape=tuple(s.train_set.images.shape[1:]))
        data = stage_data(s.train_set, s.val_set, s.cfg, s.device, announce=out.reports)
        _epochs(s, state, out, (net, model, loss_fn, optimizer, scheduler), data, ddp)
        model_uri = out.log_results(state, t0)
    run_id, lost_logging = out.finish(model_uri)
    return TrainResult(
        output_dir=output_dir,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        best_val_dice=state.best,
        stopped_early=state.stopped_early,
        run_id=run_id,
        lost_logging=lost_logging,
        seconds=time.perf_counter() - t0,
        history=state.history,
        rank=ddp.rank,
    )


def _share_state(ddp, state: TrainState, optimizer, scheduler) -> None:
    """Rank 0's optimizer, scheduler and counters on every rank (after a resume only rank 0 has read
    the checkpoint); the identity in a single process."""
    counters = ("epoch", "best", "best_epoch", "stale", "stopped_early", "history")
    shared = ddp.share_start(optimizer, scheduler, {key: getattr(state, key) for key in counters})
    for key, value in shared.items():
        setattr(state, key, value)


def _epochs(s: Setup, state: TrainState, out: Writer, parts: tuple, data: tuple, ddp) -> None:
    """The epochs from ``state.epoch + 1`` to ``train.epochs`` (or an early stop): train, validate,
    step the schedule, record, and — on rank 0 — report and write (:meth:`Writer.end_epoch`).
    ``parts``: ``(net, model, loss_fn, optimizer, scheduler)``; ``data``: :func:`stage_data`'s."""
    net, model, loss_fn, optimizer, scheduler = parts
    x_train, y_train, x_val, y_val = data
    cfg = s.cfg
    ckpts = CheckpointWriter(background=cfg.checkpoint_async)
    saved = state.epoch  # the epoch of the checkpoint.pt on disk (0: none yet)
    if out.reports:
        log.info(f"lungseg: precise BN: {precise_bn.describe(cfg, model, len(x_train))}")
    try:
        with deterministic():
            for epoch in range(state.epoch + 1, cfg.epochs + 1):
                if state.stopped_early:
                    break
                try:
                    row = train_epoch(net, loss_fn, optimizer, x_train, y_train, cfg, s.device, epoch, ddp=ddp)
                except NonFiniteLoss as exc:  # the last good checkpoint is what the run can resume from
                    raise TrainingError(f"{exc}; {rundir.last_good(out.work / CHECKPOINT, saved)}") from exc
                # the BatchNorm statistics of these weights, before they are validated and saved
                precise_bn.run(model, x_train, cfg, s.device, epoch, ddp=ddp)
                val_loss, val_dice = ddp.validate(validate, model, loss_fn, x_val, y_val, cfg, s.device)
                row.update(val_loss=val_loss, val_dice=val_dice)
                step_scheduler(scheduler, val_dice)
                improved = state.end_epoch(row, min_epochs=cfg.min_epochs, patience=cfg.early_stopping_patience)
                due = state.checkpoint_due(cfg.checkpoint_every, cfg.epochs, improved=improved)
                saved = epoch if due else saved
                out.end_epoch(state, improved, due, model, optimizer, scheduler, ckpts)
        ckpts.wait()  # the last write is complete (its error raised) before anything reads the files
    except BaseException:
        ckpts.abandon()  # no write left running; its own failure is reported, this error goes on
        raise


__all__ = ["TrainResult", "Worker", "Writer", "train"]
