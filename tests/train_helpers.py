"""Helpers shared by the training, evaluation and tracking tests (``tests/`` is on ``sys.path``
through ``tests/conftest.py``, so every test folder imports it as ``train_helpers``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "medseg-covid100"

TINY_TRAIN = {
    "model": "unet",
    "base_channels": 4,
    "epochs": 3,
    "batch_size": 4,
    "lr": 0.003,
    "augment": True,
    "early_stopping_patience": 0,
    "device": "cpu",
}


def processed_sample(tmp_path_factory, size: int = 32) -> Path:
    """The bundled real MedSeg sample (22 slices: train 14 / val 2 / test 6) preprocessed at ``size``²,
    made once per test session (shared by every test folder)."""
    from lungseg.config import PreprocessConfig
    from lungseg.data.preprocess import preprocess

    out = tmp_path_factory.getbasetemp() / f"medseg{size}"
    if not (out / "meta.json").is_file():
        preprocess("medseg", SAMPLE, out, PreprocessConfig(image_size=size))
    return out


def kaggle_pairs(shared_data: Path, folder: Path, n: int = 40) -> Path:
    """The first ``n`` real Kaggle lung-field images and masks (64 px) as a ``pairs`` folder of PNGs
    (``images/kNNN.png`` + ``masks/kNNN.png``): a user's own labelled data, whose labels the reader
    does not know."""
    import numpy as np
    from PIL import Image

    x = np.load(shared_data / "kaggle-lungs" / "64px" / "x_train.npy", mmap_mode="r")
    y = np.load(shared_data / "kaggle-lungs" / "64px" / "y_train.npy", mmap_mode="r")
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        Image.fromarray(np.round(x[i, :, :, 0] * 255).astype(np.uint8)).save(folder / "images" / f"k{i:03d}.png")
        Image.fromarray((y[i, :, :, 0] > 0.5).astype(np.uint8) * 255).save(folder / "masks" / f"k{i:03d}.png")
    return folder


def write_params(path: Path, tracking_uri: str | None, **train) -> Path:
    """A params.yaml with tiny training settings; ``tracking_uri=None`` keeps the default store."""
    mlflow = {"experiment": "tests"} if tracking_uri is None else {"tracking_uri": tracking_uri, "experiment": "tests"}
    data = {"train": {**TINY_TRAIN, **train}, "mlflow": mlflow, "evaluate": {"n_overlays": 1}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a ``lungseg`` subprocess: one torch thread, no inherited tracking URI."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def lungseg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lungseg.cli", *args]
