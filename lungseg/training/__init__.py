"""Training (see ``docs/training.md`` for the contract: presets, resume, MLflow;
:mod:`lungseg.artifacts.checkpoint` for the checkpoint files and the model identity;
:mod:`lungseg.training.presets` for ``train.preset: paper``)."""

from lungseg.training.augment import augment
from lungseg.training.loop import TrainResult, train
from lungseg.training.setup import effective_config

__all__ = ["TrainResult", "augment", "effective_config", "train"]
