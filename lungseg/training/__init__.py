"""Training (see :mod:`lungseg.training.loop` for the contract: presets, resume, MLflow;
:mod:`lungseg.training.checkpoint` for the checkpoint files and the model identity;
:mod:`lungseg.training.presets` for ``train.preset: paper``)."""

from lungseg.training.augment import augment
from lungseg.training.checkpoint import TrainState
from lungseg.training.loop import (
    TrainResult,
    build_model,
    effective_config,
    load_checkpoint,
    model_identity,
    save_checkpoint,
    train,
)

__all__ = [
    "TrainResult",
    "TrainState",
    "augment",
    "build_model",
    "effective_config",
    "load_checkpoint",
    "model_identity",
    "save_checkpoint",
    "train",
]
