"""Data-parallel training under ``torchrun`` (DDP): what :func:`lungseg.training.train` does differently
when it is one of several processes.

Launch
    ``torchrun --nproc_per_node=G [--nnodes=N --node_rank=… --rdzv_endpoint=…] -m lungseg.cli train …``
    (or the Kubeflow ``TrainJob`` of :mod:`pipelines.distributed`). ``torchrun`` sets ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` sees ``RANK``
    and ``WORLD_SIZE`` and joins the process group (``nccl`` on CUDA, each process on GPU
    ``LOCAL_RANK``; ``gloo`` on the CPU). Without them nothing changes: one process, no group
    (:data:`SINGLE`). Under ``torchrun`` DDP is used even with one process (what the DDP-overhead
    benchmark measures, ``bench/bench_ddp.py``).

Batches: ``train.batch_size`` is the *global* batch
    Every rank draws the same permutation from the ``(seed, epoch)`` generator the single-process
    loop uses, cuts it into the same global batches of ``train.batch_size``, augments the global
    batch with the same generator (so the augmented images are bitwise those of a single-process
    run) and keeps its own contiguous ``batch_size / WORLD_SIZE`` part (:meth:`Distributed.shard`).
    The gradients DDP averages over the ranks are then those of the global batch for a loss that
    is a mean over images (``bce_dice``/``dice_focal`` with the default ``batch=False``) — except
    for BatchNorm, whose batch statistics are per rank unless ``train.sync_batchnorm`` (CUDA only:
    ``torch.nn.SyncBatchNorm`` has no CPU kernel). So one ``params.yaml`` describes the same
    optimisation at any world size: the learning rate needs no rescaling, and more GPUs need a
    larger ``batch_size`` (it must be a multiple of ``WORLD_SIZE``: a :class:`ConfigError`
    otherwise). A global batch that does not split evenly (the last, short one) is dropped in
    that epoch — DDP needs every rank to take the same number of steps. The cost: each rank
    augments the whole global batch (on its GPU under CUDA, else on the CPU: work that grows with
    the world size); the reward is that the data stream does not depend on the world size.
    Dropout is seeded per rank (rank 0 keeps the single-process seed), so the ranks do not draw
    the same masks.

Who writes
    Rank 0 alone touches ``<output>``/``<output>.partial`` and MLflow (resume checks, checkpoints,
    ``history.csv``, the run, the logged model); the others train and validate, then wait at a
    barrier until rank 0 has renamed the output into place. At the start rank 0 sends its state
    (optimizer, scheduler, epoch counters; the weights travel with DDP's own broadcast) to the
    others (:meth:`Distributed.share_start`), so ``--resume`` needs the checkpoint on rank 0's
    disk only. Validation is sharded over the ranks and all-reduced (:meth:`Distributed.validate`)
    after rank 0's BatchNorm running statistics are copied to every rank, so all ranks validate —
    and take the same early-stopping and schedule decisions on — the model rank 0 saves.

Failures
    The losses are all-reduced when they are read back — every step on the CPU, at the end of
    the epoch on CUDA (no per-step host sync; :func:`lungseg.training.epoch.train_epoch`) — so a
    non-finite loss stops every rank at the same point with the same :class:`TrainingError`. A rank that dies
    (an error, an OOM kill, a lost node) makes ``torchrun``
    end the others; a rank blocked in a collective whose peer vanished gives up — at once on gloo,
    whose connection to the peer drops, else after ``LUNGSEG_DDP_TIMEOUT_S`` seconds (default 1800:
    rank 0 may spend minutes uploading the model while the others wait at the final barrier) — and
    reports a :class:`TrainingError` that names its rank and says another rank failed: never a
    hang, never a traceback.

Resume
    The checkpoint holds the unwrapped model (the same keys as a single-process run; SyncBatchNorm
    layers are plain BatchNorm layers in the file) plus ``distributed: {world_size, sync_batchnorm}``.
    A run killed (SIGKILL of the whole group) and resumed under the same world size continues
    bitwise exactly with 2 processes (tested on the CPU: ``tests/training/test_distributed.py``);
    with 3, measured once, it was not (weights off by up to 1.5e-8 after 4 epochs, see
    :meth:`Distributed.settle` and docs/training.md). Another world size is allowed with a
    warning: the global batches and augmentations are the same, but the per-rank BatchNorm
    statistics and the reduction order differ, so the result differs from an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lungseg.errors import ConfigError, LungsegError, TrainingError
from lungseg.training.setup import autocast

log = logging.getLogger(__name__)

#: seconds a collective waits for a missing peer before the group is declared broken
TIMEOUT_ENV = "LUNGSEG_DDP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800
#: the environment torchrun (and Kubeflow Trainer's torch runtime through it) gives each process
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched(environ: dict[str, str] | None = None) -> bool:
    """Whether this process was started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` are set)."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


@dataclass
class Distributed:
    """This process's place in the group; ``world_size == 1`` without ``torchrun`` (:data:`SINGLE`),
    where every method is the identity of the single-process loop."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world_size}"

    # ------------------------------------------------------------------ setup
    def device(self, device):
        """The device of this rank: ``cuda:LOCAL_RANK`` (made current) under DDP on CUDA."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def check(self, cfg, device) -> None:
        """Settings DDP cannot honour, as :class:`ConfigError` before any work."""
        if not self.active:
            return
        if cfg.batch_size % self.world_size:
            raise ConfigError(
                f"train.batch_size: {cfg.batch_size} does not split over {self.world_size} processes "
                f"(WORLD_SIZE): it is the global batch, each process takes batch_size / WORLD_SIZE; "
                f"use a multiple of {self.world_size}"
            )
        if cfg.sync_batchnorm and device.type != "cuda" and self.world_size > 1:
            raise ConfigError(
                "train.sync_batchnorm: torch.nn.SyncBatchNorm runs on CUDA only; set it false for CPU (gloo) training"
            )

    def warn_small_batchnorm(self, model, cfg) -> bool:
        """Warn (rank 0) when each process's share of the global batch is one image and ``model`` has
        plain BatchNorm layers: their batch statistics would be of one image per rank, unlike one process
        (``batch_size: 2`` on 2 ranks widened the loss gap to one process from 0.009 % to 1.6 %)."""
        per_rank = cfg.batch_size // self.world_size
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        small = self.world_size > 1 and per_rank < 2 and has_bn and not cfg.sync_batchnorm
        if small and self.is_main:
            log.warning(
                f"lungseg: warning: train.batch_size {cfg.batch_size} over {self.world_size} processes gives each "
                f"{per_rank} image per step: the BatchNorm layers of {type(model).__name__} then see one image per "
                "rank (not what one process trains); use a larger batch_size, or train.sync_batchnorm: true on CUDA"
            )
        return small

    def wrap(self, model, cfg, device, *, heads: bool = False, sample_shape: tuple[int, ...] | None = None):
        """``model`` in ``DistributedDataParallel`` (its BatchNorm layers synchronised first with
        ``train.sync_batchnorm``); ``model`` itself when not distributed. The BatchNorm layers are
        converted in place, so ``model`` (what is saved) keeps its parameters and state keys.

        ``heads``: the wrapped module's ``forward`` is ``model.forward_heads`` (deep supervision,
        Inf-Net/AWSnet): DDP synchronises gradients only of what runs through its own ``forward``,
        so the heads must come out of ``net(x)``, never ``net.module.forward_heads(x)``.
        ``static_graph=True``: every step runs the same graph, and parameters that a plain forward
        leaves unused (those models' auxiliary heads) are allowed.

        ``sample_shape`` (one image's ``(C, H, W)``): :meth:`settle` runs once, so every training
        step of every run — fresh or resumed — uses the same gradient-bucket layout."""
        if not self.active:
            return model
        self.warn_small_batchnorm(model, cfg)
        if cfg.sync_batchnorm:
            converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            assert converted is model, "a model that is itself a BatchNorm layer"  # never for lungseg models
        ids = [device.index] if device.type == "cuda" else None
        module = _heads_module(model) if heads else model
        net = DistributedDataParallel(
            module, device_ids=ids, output_device=device.index if ids else None, static_graph=True
        )
        if sample_shape is not None:
            self.settle(net, model, cfg, device, sample_shape)
        return net

    def settle(self, net, model, cfg, device, sample_shape: tuple[int, ...]) -> None:
        """One throw-away forward/backward on zeros, undone (gradients dropped, BatchNorm running
        statistics restored, no optimizer step), so that DDP rebuilds its gradient buckets now.

        Why: DDP reduces the first step's gradients in buckets laid out in parameter order and
        rebuilds them in the order gradients became ready; the ring all-reduce's summation order
        depends on a value's place in its bucket, and with 3 or more processes ``a + b + c`` then
        rounds differently. Without this, the first step after a ``--resume`` (a new process) would
        use the first layout where the uninterrupted run used the rebuilt one — measured with 3 CPU
        processes: weights off by up to 1.8e-7 after 4 epochs and train losses different from the
        second epoch after the resume; with it, equal train losses and weights off by up to 1.5e-8
        (a remaining difference whose cause was not found). The torch RNG is reseeded at every
        epoch, so the dropout this draws changes nothing."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        net.train()
        x = torch.zeros((2, *sample_shape), device=device)
        if device.type == "cuda" and cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(cfg, device):  # train.precision, as the train step (#24)
            out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().mean() for o in outs).backward()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.load_state_dict(saved)

    @staticmethod
    def unwrap(net):
        """The model inside what :meth:`wrap` returned (the model itself when not wrapped)."""
        inner = getattr(net, "module", net)
        return getattr(inner, "model", inner) if type(inner).__name__ == "ForwardHeads" else inner

    def share_start(self, optimizer, scheduler, counters: dict[str, Any]) -> dict[str, Any]:
        """Rank 0's optimizer and scheduler states and epoch counters (``start_epoch``, ``best``, …)
        for every rank — after a resume only rank 0 has read the checkpoint. Returns ``counters``
        as rank 0 has them. (The weights and buffers are broadcast by DDP when it wraps the model.)"""
        if not self.active:
            return counters
        payload = [None]
        if self.is_main:
            payload = [
                {
                    "optimizer": _to_cpu(optimizer.state_dict()),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "counters": counters,
                }
            ]
        self._collective(dist.broadcast_object_list, payload, src=0)
        state = payload[0]
        if not self.is_main:
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
        return state["counters"]

    # ------------------------------------------------------------------ per step
    def even_batches(self, starts: list[int], n: int, batch_size: int) -> list[int]:
        """The global batches (their start indices) every rank can take an equal part of."""
        if not self.active:
            return starts
        return [s for s in starts if (min(s + batch_size, n) - s) % self.world_size == 0]

    def shard(self, batch):
        """This rank's contiguous part of a global batch (the batch itself when not distributed)."""
        if not self.active:
            return batch
        part = len(batch) // self.world_size
        return batch[self.rank * part : (self.rank + 1) * part]

    def mean(self, value) -> float:
        """A scalar tensor averaged over the ranks, as a float (``value.item()`` when not distributed).
        With equal parts per rank, the mean of the ranks' batch means is the global batch's mean."""
        if not self.active:
            return value.item()
        t = value.detach().reshape(1).to(torch.float64)
        self._collective(dist.all_reduce, t)
        return float(t.item()) / self.world_size

    def mean_many(self, values) -> list[float]:
        """A 1-d tensor (e.g. the stacked losses of several steps) averaged over the ranks, as floats,
        in one collective (``values.tolist()`` when not distributed)."""
        if not self.active:
            return values.tolist()
        t = values.detach().to(torch.float64).contiguous()
        self._collective(dist.all_reduce, t)
        return (t / self.world_size).tolist()

    def dropout_seed(self, seed: int) -> int:
        """The seed of this rank's dropout/torch RNG for an epoch (rank 0: ``seed`` itself)."""
        return seed if self.rank == 0 else (seed * 1_000_003 + self.rank) % 2**63

    # ------------------------------------------------------------------ per epoch
    def validate(
        self, fn: Callable[..., tuple[float, float]], model, loss_fn, x, y, cfg, device
    ) -> tuple[float, float]:
        """``fn(model, loss_fn, x, y, cfg, device) -> (mean loss, mean Dice)`` over the validation
        split, sharded over the ranks (contiguous parts) and combined weighted by their sizes,
        after every rank has taken rank 0's buffers (BatchNorm running statistics)."""
        if not self.active:
            return fn(model, loss_fn, x, y, cfg, device)
        self.sync_buffers(model)
        n = len(x)
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        if hi > lo:
            loss, dice = fn(model, loss_fn, x[lo:hi], y[lo:hi], cfg, device)
            sums += torch.tensor([loss * (hi - lo), dice * (hi - lo), hi - lo], dtype=torch.float64, device=device)
        self._collective(dist.all_reduce, sums)
        total = sums[2].item()
        return float(sums[0].item() / total), float(sums[1].item() / total)

    def sync_buffers(self, model) -> None:
        """Rank 0's buffers (BatchNorm running statistics: each rank updated its own from its part
        of the batch) on every rank."""
        if not self.active:
            return
        for buf in model.buffers():
            self._collective(dist.broadcast, buf, src=0)

    def checkpoint_info(self, cfg) -> dict[str, Any]:
        """What a checkpoint records of the group it was written by."""
        return {"world_size": self.world_size, "sync_batchnorm": bool(cfg.sync_batchnorm and self.active)}

    def check_resume(self, ckpt: dict[str, Any], path) -> None:
        """Warn when a checkpoint is resumed under another world size (allowed: same global batches)."""
        before = int((ckpt.get("distributed") or {}).get("world_size", 1))
        if before != self.world_size:
            log.warning(
                f"lungseg: warning: {path} was written by {before} process(es), resuming with {self.world_size}: the "
                "global batches and augmentations are the same, but BatchNorm statistics (per process unless "
                "train.sync_batchnorm) and reduction order differ, so the result will differ from an "
                "uninterrupted run"
            )

    # ------------------------------------------------------------------ end
    def barrier(self) -> None:
        if self.active:
            self._collective(dist.barrier)

    def close(self) -> None:
        if self.active:
            if dist.is_initialized():
                dist.destroy_process_group()

    def broken(self, exc: BaseException) -> BaseException:
        """A collective's failure (a peer died, or the timeout passed) as a one-line
        :class:`TrainingError` naming this rank; other exceptions unchanged."""
        if not self.active or isinstance(exc, LungsegError) or not _is_collective_failure(exc):
            return exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TrainingError(
            f"{self.describe()}: the process group broke — another process failed or was killed "
            f"(its own error is above), or none answered within {_timeout_s()} s "
            f"({TIMEOUT_ENV}): {type(exc).__name__}: {first}"
        )

    def _collective(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # re-raised, translated when it is a broken group
            raise self.broken(exc) from exc


#: not launched by torchrun: one process, no process group
SINGLE = Distributed()


def _heads_module(model):
    """``model`` behind a module whose ``forward`` is ``model.forward_heads`` (same parameters)."""

    class ForwardHeads(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, x):
            return self.model.forward_heads(x)

    return ForwardHeads(model)


class _NoRun:
    """Stands for the MLflow run on ranks other than 0, which log nothing."""

    run_id = None

    def __enter__(self) -> _NoRun:  # ``with run:`` as for a ResilientRun
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        return None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


NO_RUN = _NoRun()


def setup(cfg, environ: dict[str, str] | None = None) -> Distributed:
    """Join the ``torchrun`` process group when launched by it (see the module docstring); else
    :data:`SINGLE`. ``cfg`` (the train section) chooses the device and so the backend."""
    env = os.environ if environ is None else environ
    if not launched(env):
        return SINGLE
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ConfigError(
            f"RANK and WORLD_SIZE are set but {', '.join(missing)} not: start distributed training "
            "with torchrun (it sets all of them)"
        )
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK: not integers ({exc})") from exc
    if not (world >= 1 and 0 <= rank < world):
        raise ConfigError(f"RANK={rank}, WORLD_SIZE={world}: the rank must lie in [0, WORLD_SIZE)")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA device is available")
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local}: this node has {torch.cuda.device_count()} GPU(s); start at most "
                "that many processes per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local)
    ddp = Distributed(rank=rank, world_size=world, local_rank=local, backend=backend)
    timeout = timedelta(seconds=_timeout_s(env))
    try:
        dist.init_process_group(backend, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - rendezvous failures come as many types
        raise (ddp.broken(exc) if _is_collective_failure(exc) else exc) from exc
    return ddp


def _timeout_s(environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def _is_collective_failure(exc: BaseException) -> bool:
    """torch.distributed's own errors (``DistError`` and subclasses: backend, network, store,
    timeouts) and gloo's ``RuntimeError``s for a vanished peer."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text
        for s in (
            "Connection closed by peer",
            "Connection reset by peer",
            "Gloo",
            "NCCL",
            "timed out",
            "Broken pipe",
            "ProcessGroup",
        )
    )


def _to_cpu(obj):
    """``obj`` (a state dict) with every tensor on the CPU, for pickling to other ranks."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


__all__ = ["NO_RUN", "SINGLE", "Distributed", "launched", "setup"]
