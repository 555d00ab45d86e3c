"""Before the first epoch: the settings checked against the data, the run's constants, the device,
seeding and determinism, the model, its loss, optimizer and schedule (see ``docs/training.md``)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.artifacts import core
from lungseg.artifacts.checkpoint import (
    RunInfo,
    build_model,
    fmt_identity,
    model_identity,
    optimizer_to_params,
    training_preprocessing,
)
from lungseg.config import Params, TrainConfig, check_train, model_options
from lungseg.data.dataset import load_split, read_meta
from lungseg.data.normalize import input_norm
from lungseg.errors import ConfigError, TrainingError
from lungseg.losses import create_loss, default_loss_for
from lungseg.tracking import data_hash
from lungseg.training.nnunet_preset import nnunet_loss_options
from lungseg.training.poly_lr import nnunet_optimizer, poly_scheduler
from lungseg.training.presets import PresetResult, check_paper_size, paper_loss_options, resolve_preset

log = logging.getLogger(__name__)


def effective_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its preset applied (:func:`lungseg.training.presets.resolve_preset`: ``paper``
    fills the paper's value into every key left at its library default)."""
    return resolve_preset(cfg).config


def pick_device(cfg: TrainConfig) -> torch.device:
    """``train.device`` (auto, cpu or cuda: checked at load): ``auto`` is CUDA when available."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(cfg.device)


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes in bfloat16 natively: :func:`lungseg.artifacts.core.cpu_supports_bf16`,
    the one check ``lungseg predict --precision`` uses too (#24). Without it ``torch.autocast("cpu",
    bfloat16)`` still runs, emulated — measured ~20× slower than fp32 for a U-Net train step on an
    AVX2-only EPYC (``docs/training.md``, "Precision and compilation")."""
    return core.cpu_supports_bf16()


#: the environment variable that makes ``train.precision: bf16`` run bf16 on a CPU without native bf16 —
#: emulated, several times slower: for measuring bf16's effect on quality there (#24, ``lungseg results run
#: --precision bf16``); ``1`` forces it
FORCE_BF16_EMULATION_ENV = "LUNGSEG_FORCE_BF16_EMULATION"


def bf16_emulation_forced() -> bool:
    """Whether :data:`FORCE_BF16_EMULATION_ENV` is ``1``: ``train.precision: bf16`` then stays bf16 on a
    CPU without native bf16 (emulated) instead of falling back to fp32."""
    return os.environ.get(FORCE_BF16_EMULATION_ENV, "") == "1"


def cpu_bf16_mode() -> str:
    """How this CPU runs bf16: ``native`` (:func:`cpu_bf16_supported`), ``emulated`` (not native, forced by
    :data:`FORCE_BF16_EMULATION_ENV`) or ``none`` (``train.precision: bf16`` falls back to fp32 here)."""
    if cpu_bf16_supported():
        return "native"
    return "emulated" if bf16_emulation_forced() else "none"


def resolve_precision(
    cfg: TrainConfig, device: torch.device, *, announce: bool = False, cpu_bf16: str | None = None
) -> str:
    """``train.precision`` (with the deprecated ``amp``) on ``device``: ``"bf16"`` or ``"fp32"``.

    ``auto``: bf16 on CUDA (the former ``amp: true``), fp32 on a CPU (:data:`AUTO_CPU_BF16`);
    ``bf16`` on a CPU without native bf16 (:func:`cpu_bf16_supported`): fp32, with a note
    (``announce``) — emulated bf16 would be many times slower, never faster. ``cpu_bf16``: how the CPU
    runs bf16 (:func:`cpu_bf16_mode`'s values; a record's ``device.bf16``, #24), this CPU's when None."""
    asked = cfg.precision if cfg.amp else "fp32"  # amp: false is the deprecated spelling of fp32
    if asked == "fp32":
        return "fp32"
    if device.type == "cuda":
        return "bf16"
    mode = cpu_bf16_mode() if cpu_bf16 is None else cpu_bf16
    if asked == "auto":
        return "bf16" if AUTO_CPU_BF16 and mode == "native" else "fp32"
    if mode in ("native", "emulated"):  # emulated: forced, slow (lungseg results --precision)
        return "bf16"
    if announce:
        log.info("lungseg: note: train.precision: bf16, but this CPU has no native bf16 (AVX-512 BF16/AMX): fp32")
    return "fp32"


#: ``train.precision: auto`` on a CPU with native bf16: fp32 (see ``docs/training.md``, "Precision
#: and compilation": bf16 is made the CPU default only where the test Dice holds)
AUTO_CPU_BF16 = False


def autocast(cfg: TrainConfig, device: torch.device):
    """The ``torch.autocast`` block of a train step or validation at ``cfg``'s precision (resolved
    here when it is still ``auto``: what :func:`prepare` hands the loop is resolved already)."""
    bf16 = resolve_precision(cfg, device) == "bf16"  # (a resolved setting resolves to itself)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``train.compile``: ``model`` compiled in place (``nn.Module.compile``, inductor, static shapes:
    one graph per batch size and mode), so its state keys and the saved files stay the same; a deep
    supervision model's ``forward_heads`` (what its train step calls) is compiled too. A compile
    error is raised where it happens, at the first step — never a silent fall-back to eager (#24):
    refused where torch.compile is disabled (:func:`check_compile`), each compiled call strict
    (:func:`_strict`: errors raise also under ``TORCHDYNAMO_SUPPRESS_ERRORS=1``, and a call after which
    no graph was ever compiled fails). Dynamo's caches are reset first: graphs compiled earlier in the
    process are compiled again when next called."""
    check_compile()
    # a training owns the process's compile state: dynamo's recompile limit (8 per code object) is
    # shared by every model of a class in a process, and each compile's own backend counts as a
    # recompile, so without a reset the 9th training in one process (a notebook, a sweep) was refused
    torch._dynamo.reset()
    backend = core.CountingBackend("inductor")
    model.compile(backend=backend, dynamic=False)
    model._compiled_call_impl = _strict(model._compiled_call_impl, backend)  # what Module.__call__ runs
    if callable(getattr(model, "forward_heads", None)) and getattr(model, "deep_supervision_weights", None):
        heads = core.CountingBackend("inductor")
        model.forward_heads = _strict(torch.compile(model.forward_heads, backend=heads, dynamic=False), heads)
    return model


def _compile_refused(why: str) -> TrainingError:
    return TrainingError(f"train.compile: {why}; set train.compile: false")


def check_compile() -> None:
    """``train.compile`` refused in one line where torch.compile would compile nothing (#24)."""
    if why := core.compile_blocked():
        raise _compile_refused(why)


def _strict(fn, backend: core.CountingBackend):
    """``fn`` (compiled with ``backend``) called through :func:`lungseg.artifacts.core.run_compiled`: a
    compile error, or a call after which ``backend`` has compiled no graph (it ran eager), is a
    :class:`TrainingError` naming the setting."""

    def call(*args, **kwargs):
        return core.run_compiled(lambda: fn(*args, **kwargs), backend, _compile_refused)

    return call


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s generators (shuffling, augmentation, dropout)."""
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


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """``train.scheduler`` (checked at load): ``cosine`` over ``train.epochs``, ``plateau`` on the
    validation Dice, or None (``none``)."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    if cfg.scheduler == "poly":  # issue #25: nnU-Net's PolyLRScheduler, per epoch (lungseg.training.poly_lr)
        return poly_scheduler(optimizer, cfg.epochs)
    return None


def step_scheduler(scheduler, val_dice: float) -> None:
    """The end-of-epoch step: ``plateau`` follows the validation Dice, the others the epoch count."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_dice)
    elif scheduler is not None:
        scheduler.step()


def describe_preset(preset: PresetResult) -> str:
    """The message of a paper-preset run: what it filled in and what it honours against the paper."""
    filled = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in preset.filled.items()) or "nothing"
    whose = "nnU-Net" if preset.config.preset == "nnunet" else "the paper"  # (#25)
    text = f"set {filled} ({whose}'s values for settings left at their defaults)"
    if preset.deviations:
        text += f"; honouring settings that differ from {whose}: {preset.describe_deviations()}"
    return text


def validate_config(cfg: TrainConfig) -> None:
    """The load-time checks of :mod:`lungseg.config` again, for a config changed in code with
    ``model_copy(update=...)`` (which pydantic does not check); warns about model options that do not
    apply to ``cfg.model``."""
    check_train(cfg, "train")
    _, ignored = model_options(cfg)
    if ignored:
        log.warning(
            f"lungseg: warning: train.model_kwargs {', '.join(ignored)}: not an option of {cfg.model}, ignored "
            f"(write options per model: model_kwargs: {{<model>: {{...}}}})"
        )


@dataclass(frozen=True)
class Setup:
    """What :func:`lungseg.training.train` derives from params and data before anything is written."""

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


def prepare(params: Params, data_dir: Path, ddp) -> Setup:
    """Check the settings against the data and derive the run's constants (nothing is written);
    under DDP the device is this rank's and the settings DDP cannot honour are refused."""
    validate_config(params.train)  # the user's settings (warnings name their keys)
    preset = resolve_preset(params.train)  # (a preset's result is checked there)
    cfg = preset.config
    meta = read_meta(data_dir)
    train_set, val_set = load_split(data_dir, "train"), load_split(data_dir, "val")
    size = int(train_set.images.shape[-1])
    preset = check_paper_size(preset, size, data_dir)  # refused unless train.allow_non_paper_size
    num_labels = int(meta["num_labels"])
    num_classes = 1 if num_labels == 2 else num_labels
    identity = model_identity(cfg, int(train_set.images.shape[1]), num_classes)
    if (norm := input_norm(meta.get("preprocess"), str(data_dir))) is not None:  # #25: ct_zscore, in the network
        identity = {**identity, "input_norm": norm}
    device = ddp.device(pick_device(cfg))
    ddp.check(cfg, device)
    if cfg.compile:
        check_compile()  # before anything is written (#24)
    cfg = cfg.model_copy(update={"precision": resolve_precision(cfg, device, announce=ddp.is_main)})  # recorded
    dhash, dhash_source = data_hash(data_dir)
    loss_name = default_loss_for(cfg.model) if cfg.loss == "auto" else cfg.loss
    loss_options = paper_loss_options(num_classes) if cfg.preset == "paper" and loss_name == "dice_focal" else {}
    loss_options = loss_options or nnunet_loss_options(cfg, loss_name)  # issue #25: batch Dice under nnunet
    info = RunInfo(
        model_identity=identity,
        config=cfg.model_dump(),
        params=params.to_dict(),
        num_classes=num_classes,
        data_hash=dhash,
        image_size=size,
        preprocess=training_preprocessing(meta),
        preset_deviations=preset.deviations,
        distributed=ddp.checkpoint_info(cfg),
    )
    return Setup(
        cfg, preset, meta, train_set, val_set, size, identity, info, device, dhash_source, loss_name, loss_options
    )


def build_training(s: Setup, data_dir: Path):
    """``(model, loss_fn, optimizer, scheduler)`` of the run, the model's weights drawn from the seeded
    RNG (call :func:`seed_everything` first); ``ConfigError`` when the model cannot be built from the
    settings or does not fit the data's image size."""
    try:
        model = build_model(s.identity)
    except (TypeError, ValueError) as exc:  # a value the model rejects: a config error, not a traceback
        raise ConfigError(f"train.model_kwargs: {fmt_identity(s.identity)} cannot be built: {exc}") from exc
    divisor = int(getattr(model, "size_divisor", 1))
    if s.size % divisor:
        raise ConfigError(
            f"{data_dir}: images are {s.size}² but {s.cfg.model} needs a multiple of {divisor} "
            "(set preprocess.image_size)"
        )
    loss_fn = create_loss(s.loss_name, num_classes=s.info.num_classes, **s.loss_options)
    if s.cfg.optimizer == "sgd_nesterov":  # issue #25: nnU-Net's SGD, Nesterov momentum 0.99
        optimizer = nnunet_optimizer(model.parameters(), s.cfg.lr, s.cfg.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=s.cfg.lr, weight_decay=s.cfg.weight_decay)
    return model, loss_fn, optimizer, make_scheduler(s.cfg, optimizer)


def to_device(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device):
    """``model`` moved to ``device`` (channels_last on CUDA when asked) and the optimizer's state put
    where the parameters now are (a restored state was loaded while the model was still on the CPU);
    compiled in place with ``train.compile`` (:func:`compile_model`)."""
    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer_to_params(optimizer)
    return compile_model(model) if cfg.compile else model


__all__ = [
    "AUTO_CPU_BF16",
    "Setup",
    "autocast",
    "bf16_emulation_forced",
    "build_training",
    "check_compile",
    "compile_model",
    "cpu_bf16_mode",
    "cpu_bf16_supported",
    "deterministic",
    "describe_preset",
    "effective_config",
    "epoch_seed",
    "make_scheduler",
    "pick_device",
    "prepare",
    "resolve_precision",
    "seed_everything",
    "step_scheduler",
    "to_device",
    "validate_config",
]
