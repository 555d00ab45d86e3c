"""Training: presets, seeded augmentation, checkpoint every epoch, exact resume, MLflow tracking.

Where things go
    The run works in ``<output>.partial/``: a checkpoint (``checkpoint.pt``) is written there
    atomically at the end of every epoch, ``best.pt`` whenever validation Dice improves. When the
    run ends, the history, summary and ``mlflow_run.json`` are added and the folder is renamed to
    ``<output>`` — a previous ``<output>`` stays intact until then, and a failed or killed run
    never leaves a half-written ``<output>``. ``resume=True`` continues a killed run from
    ``<output>.partial/checkpoint.pt`` (the same MLflow run goes on).

Exact resume
    The checkpoint holds model, optimizer, scheduler, scaler, epoch, best Dice, the early-stopping
    counter, every RNG state, the config and the model identity. In addition every epoch draws its
    shuffling, augmentation and dropout randomness from generators seeded with ``(seed, epoch)``,
    so an epoch is a pure function of (weights, optimizer state, seed, epoch): a run killed after
    epoch k and resumed gives bitwise the same weights as an uninterrupted run on the CPU (tested).

Presets
    ``default``: Adam(lr from params, default 1e-3), cosine schedule, early stopping on validation
    Dice — what trains well on these small sets. ``paper`` (LG-Net §3): Adam, lr 0.01, batch 4,
    120 epochs, constant lr; it expects 512² data (``preprocess.image_size: 512``) and warns
    otherwise.

Augmentation (training split only)
    Random horizontal/vertical flips, a random 90° rotation and a random intensity scale/shift of
    ±10 %, on batched tensors (masks move with images; no interpolation, so labels stay exact).

Device
    ``device: auto`` uses CUDA when available. bf16 autocast (``amp``) and channels_last apply on
    CUDA only; on the CPU they are ignored (both are recorded in the run's params either way).
"""

from __future__ import annotations

import csv
import dataclasses
import json
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

from lungseg.config import Params, TrainConfig, flatten
from lungseg.data.dataset import load_split, read_meta
from lungseg.errors import CheckpointError, ConfigError, DataError, TrainingError
from lungseg.io import atomic_write_json, atomic_write_text
from lungseg.losses import create_loss, default_loss_for
from lungseg.metrics import dice_per_image_torch
from lungseg.models import create_model, list_models

PAPER_PRESET = {"lr": 0.01, "batch_size": 4, "epochs": 120, "scheduler": "none"}
PAPER_IMAGE_SIZE = 512
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


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

    def describe(self) -> str:
        s = (f"trained {self.epochs_run} epoch(s) in {self.seconds:.1f} s; best val Dice {self.best_val_dice:.4f} "
             f"at epoch {self.best_epoch}{' (early stop)' if self.stopped_early else ''} → {self.output_dir}")
        if self.run_id:
            s += f"\n  MLflow run {self.run_id}"
        if self.lost_logging:
            s += f" ({self.lost_logging} logging call(s) lost: tracking server unreachable)"
        return s


def effective_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the preset applied (``paper`` overrides lr, batch, epochs, schedule)."""
    if cfg.preset == "default":
        return cfg
    if cfg.preset == "paper":
        return dataclasses.replace(cfg, **PAPER_PRESET)
    raise ConfigError(f"train.preset: unknown preset {cfg.preset!r} (allowed: default, paper)")


def model_identity(cfg: TrainConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    return {"name": cfg.model, "kwargs": {"in_channels": in_channels, "num_classes": num_classes,
                                           "base_channels": cfg.base_channels, **cfg.model_kwargs}}  # fmt: skip


def build_model(identity: dict[str, Any]) -> torch.nn.Module:
    return create_model(identity["name"], **identity["kwargs"])


def load_checkpoint(path: Path, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint; ``CheckpointError`` if missing, corrupt, or of another architecture."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "model_identity" not in ckpt or "model_state" not in ckpt:
        raise CheckpointError(f"{path}: not a lungseg checkpoint (no model identity/state)")
    if expected is not None and ckpt["model_identity"] != expected:
        raise CheckpointError(
            f"{path}: checkpoint is for {_fmt_identity(ckpt['model_identity'])}, "
            f"but the configuration asks for {_fmt_identity(expected)}"
        )
    return ckpt


def _fmt_identity(identity: dict[str, Any]) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in sorted(identity.get("kwargs", {}).items()))
    return f"{identity.get('name')}({kw})"


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    if cfg.device not in ("cpu", "cuda"):
        raise ConfigError(f"train.device: unknown device {cfg.device!r} (allowed: auto, cpu, cuda)")
    return torch.device(cfg.device)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, a 90° rotation and ±10 % intensity jitter per image; labels stay exact."""
    out_x, out_y = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if torch.rand(1, generator=gen).item() < 0.5:
            xi, yi = xi.flip(-1), yi.flip(-1)
        if torch.rand(1, generator=gen).item() < 0.5:
            xi, yi = xi.flip(-2), yi.flip(-2)
        k = int(torch.randint(0, 4, (1,), generator=gen).item())
        xi, yi = torch.rot90(xi, k, (-2, -1)), torch.rot90(yi, k, (-2, -1))
        scale = 1.0 + (torch.rand(1, generator=gen).item() - 0.5) * 0.2
        shift = (torch.rand(1, generator=gen).item() - 0.5) * 0.2
        out_x.append((xi * scale + shift).clamp(0.0, 1.0))
        out_y.append(yi)
    return torch.stack(out_x), torch.stack(out_y)


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


def data_hash(data_dir: Path) -> str:
    """The data version: sha256 over the manifest's per-slice checksums and splits.

    Computed from the processed folder itself (so it is the same whether the folder came from
    ``dvc repro``, a KFP artifact or a copy); DVC's own md5 of the folder is in ``dvc.lock``.
    """
    import hashlib

    manifest = (data_dir / "manifest.csv").read_bytes()
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    if cfg.scheduler == "none":
        return None
    raise ConfigError(f"train.scheduler: unknown schedule {cfg.scheduler!r} (allowed: cosine, plateau, none)")


def _validate_config(cfg: TrainConfig) -> None:
    if cfg.model not in list_models():
        raise ConfigError(f"train.model: unknown model {cfg.model!r} (valid: {', '.join(list_models())})")
    for key in ("epochs", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train.{key}: must be ≥ 1, got {getattr(cfg, key)}")
    if not cfg.lr > 0:
        raise ConfigError(f"train.lr: must be > 0, got {cfg.lr}")


def train(params: Params, data_dir: str | Path, output_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train ``params.train.model`` on ``data_dir``; see the module docstring for the contract."""
    from tqdm import tqdm

    from lungseg.tracking import RunLogger, git_commit

    t0 = time.perf_counter()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    cfg = effective_config(params.train)
    _validate_config(cfg)
    meta = read_meta(data_dir)
    train_set, val_set = load_split(data_dir, "train"), load_split(data_dir, "val")
    if cfg.preset == "paper" and meta.get("image_size") != PAPER_IMAGE_SIZE:
        print(f"lungseg: warning: the paper preset trains at {PAPER_IMAGE_SIZE}², this data is "
              f"{meta.get('image_size')}² (set preprocess.image_size)", file=sys.stderr)  # fmt: skip
    num_labels = int(meta["num_labels"])
    num_classes = 1 if num_labels == 2 else num_labels
    identity = model_identity(cfg, int(train_set.images.shape[1]), num_classes)
    device = _device(cfg)
    use_cuda = device.type == "cuda"

    work = output_dir.parent / f"{output_dir.name}.partial"
    ckpt_path = work / CHECKPOINT
    seed_everything(cfg.seed)
    model = build_model(identity)
    loss_name = default_loss_for(cfg.model) if cfg.loss == "auto" else cfg.loss
    loss_fn = create_loss(loss_name, num_classes=num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(cfg, optimizer)
    start_epoch, best, best_epoch, stale, history, run_id = 0, -1.0, 0, 0, [], None
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, identity)
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        if scheduler is not None and ckpt.get("scheduler_state"):
            scheduler.load_state_dict(ckpt["scheduler_state"])
        _set_rng_state(ckpt["rng"])
        start_epoch, best, best_epoch, stale = ckpt["epoch"], ckpt["best"], ckpt["best_epoch"], ckpt["stale"]
        history, run_id = ckpt["history"], ckpt.get("mlflow_run_id")
        print(f"lungseg: resuming {ckpt_path} after epoch {start_epoch}", file=sys.stderr)
    else:
        if resume:
            print(f"lungseg: nothing to resume in {work}; starting fresh", file=sys.stderr)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
    model.to(device)
    if use_cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    logger = RunLogger(params.mlflow, run_id=run_id, run_name=f"{cfg.model}-seed{cfg.seed}",
                       tags={"lungseg.model": cfg.model, "lungseg.stage": "train"})  # fmt: skip
    if run_id is None:
        logger.log_params(flatten({"train": dataclasses.asdict(cfg)}) | {
            "train.loss_resolved": loss_name, "data.dataset": meta.get("dataset"),
            "data.image_size": meta.get("image_size"), "data.n_train": len(train_set.images),
            "data.n_val": len(val_set.images), "device": str(device)})  # fmt: skip
        logger.set_tags({"git_commit": git_commit(), "data_hash": data_hash(data_dir),
                         "data_dir": str(data_dir), "split_level": meta.get("split_level", "")})  # fmt: skip

    x_train = torch.from_numpy(np.ascontiguousarray(train_set.images))
    y_train = torch.from_numpy(np.ascontiguousarray(train_set.masks)).long()
    x_val = torch.from_numpy(np.ascontiguousarray(val_set.images))
    y_val = torch.from_numpy(np.ascontiguousarray(val_set.masks)).long()
    n = len(x_train)
    stopped_early = False
    epoch = start_epoch
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        gen = _epoch_generator(cfg.seed, epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout randomness for this epoch
        model.train()
        order = torch.randperm(n, generator=gen)
        losses = []
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not sys.stderr.isatty())  # fmt: skip
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if cfg.augment:
                xb, yb = augment(xb, yb, gen)
            xb, yb = xb.to(device), yb.to(device)
            if use_cuda and cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda and cfg.amp):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {epoch}, batch {start // cfg.batch_size + 1} "
                    f"(lr {optimizer.param_groups[0]['lr']:g}); the last good checkpoint is {ckpt_path}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
        train_loss = float(np.mean(losses))
        val_loss, val_dice = _validate(model, loss_fn, x_val, y_val, cfg, device)
        lr = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_dice)
        elif scheduler is not None:
            scheduler.step()
        improved = val_dice > best
        if improved:
            best, best_epoch, stale = val_dice, epoch, 0
        else:
            stale += 1
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_dice": val_dice, "lr": lr}
        history.append(row)
        print(f"epoch {epoch}/{cfg.epochs}  loss {train_loss:.4f}  val loss {val_loss:.4f}  "
              f"val Dice {val_dice:.4f}{'  *' if improved else ''}", file=sys.stderr)  # fmt: skip
        logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        state = {
            "model_identity": identity, "model_state": _cpu_state(model), "epoch": epoch,
            "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
            "best": best, "best_epoch": best_epoch, "stale": stale, "history": history,
            "rng": _rng_state(), "config": dataclasses.asdict(cfg), "mlflow_run_id": logger.run_id,
            "num_classes": num_classes, "data_hash": data_hash(data_dir),
        }  # fmt: skip
        if improved:
            _save({k: state[k] for k in ("model_identity", "model_state", "epoch", "best", "config",
                                          "num_classes", "data_hash")}, work / BEST)  # fmt: skip
        _save(state, ckpt_path)
        if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
            stopped_early = True
            print(f"lungseg: early stop: no better val Dice for {stale} epochs", file=sys.stderr)
            break

    epochs_run = history[-1]["epoch"] if history else 0
    _write_history(work / "history.csv", history)
    summary = {"best_val_dice": best, "best_epoch": best_epoch, "epochs_run": epochs_run,
               "final_train_loss": history[-1]["train_loss"] if history else None,
               "stopped_early": stopped_early}  # fmt: skip
    atomic_write_json(work / "train_metrics.json", summary)
    curves = _plot_history(work / "learning_curves.png", history)
    logger.log_metrics({"best_val_dice": best}, step=epochs_run)
    logger.log_artifact(work / "history.csv")
    logger.log_artifact(curves, "plots")
    logger.log_artifact(work / BEST, "checkpoint")
    best_model = build_model(identity)
    best_model.load_state_dict(torch.load(work / BEST, map_location="cpu", weights_only=False)["model_state"])
    best_model.eval()
    size = int(x_val.shape[-1]) if len(x_val) else int(x_train.shape[-1])
    example = np.ascontiguousarray(x_train[:2].numpy()) if n >= 2 else np.zeros((2, 1, size, size), np.float32)
    model_uri = logger.log_model(best_model, example)
    lost = logger.finish()
    atomic_write_json(work / "mlflow_run.json", {
        "run_id": logger.run_id, "experiment_id": logger.experiment_id, "tracking_uri": logger.tracking_uri,
        "model_uri": model_uri, **lost})  # fmt: skip
    _swap_into_place(work, output_dir)
    return TrainResult(output_dir, epochs_run, best_epoch, best, stopped_early, logger.run_id,
                       lost["lost_logging"], time.perf_counter() - t0)  # fmt: skip


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


@torch.no_grad()
def _validate(model, loss_fn, x, y, cfg: TrainConfig, device) -> tuple[float, float]:
    if len(x) == 0:
        raise DataError(None, "the validation split is empty")
    model.eval()
    losses, dices = [], []
    for start in range(0, len(x), cfg.batch_size):
        xb, yb = x[start : start + cfg.batch_size].to(device), y[start : start + cfg.batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.amp):
            logits = model(xb)
        logits = logits.float()
        losses.append(loss_fn(logits, yb).item() * len(xb))
        dices.append(dice_per_image_torch(logits, yb).cpu())
    return float(sum(losses) / len(x)), float(torch.cat(dices).mean())


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    fields = ["epoch", "train_loss", "val_loss", "val_dice", "lr"]
    lines = [",".join(fields)] + [",".join(repr(float(r[f])) if f != "epoch" else str(r[f]) for f in fields)
                                  for r in history]  # fmt: skip
    atomic_write_text(path, "\n".join(lines) + "\n")


def _plot_history(path: Path, history: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [r["train_loss"] for r in history], label="train")
    a.plot(epochs, [r["val_loss"] for r in history], label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    b.plot(epochs, [r["val_dice"] for r in history], color="tab:green")
    b.set_xlabel("epoch"), b.set_ylabel("val Dice (mean over images)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _swap_into_place(work: Path, output_dir: Path) -> None:
    backup = None
    if output_dir.exists():
        backup = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
        os.replace(output_dir, backup)
    os.replace(work, output_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)




__all__ = ["TrainResult", "train", "load_checkpoint", "build_model", "effective_config", "augment"]
