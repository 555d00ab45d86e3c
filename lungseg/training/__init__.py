"""Training (see :mod:`lungseg.training.loop` for the contract: presets, resume, MLflow)."""

from lungseg.training.augment import augment
from lungseg.training.loop import (
    TrainResult,
    build_model,
    effective_config,
    load_checkpoint,
    model_identity,
    save_checkpoint,
    train,
)

__all__ = ["TrainResult", "augment", "build_model", "effective_config", "load_checkpoint", "model_identity",
           "save_checkpoint", "train"]  # fmt: skip
