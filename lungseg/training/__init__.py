"""Training (see :mod:`lungseg.training.loop` for the contract: presets, resume, MLflow)."""

from lungseg.training.loop import TrainResult, build_model, effective_config, load_checkpoint, train

__all__ = ["TrainResult", "build_model", "effective_config", "load_checkpoint", "train"]
