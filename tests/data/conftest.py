"""Fixtures of the data tests: small image size (64) so the real sets preprocess in about a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungseg.config import PreprocessConfig

SIZE = 64


@pytest.fixture(scope="session")
def cfg() -> PreprocessConfig:
    return PreprocessConfig(image_size=SIZE)


@pytest.fixture(scope="session")
def params_file(tmp_path_factory) -> Path:
    """A params.yaml for CLI runs (only the preprocess section; the rest are defaults)."""
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(f"preprocess:\n  image_size: {SIZE}\n")
    return path


@pytest.fixture(scope="session")
def processed_medseg(tmp_path_factory, shared_data, cfg) -> Path:
    """The full real MedSeg set, preprocessed once for the session."""
    from lungseg.data.preprocess import preprocess

    out = tmp_path_factory.mktemp("processed") / "medseg"
    preprocess("medseg", shared_data / "medseg-covid100", out, cfg)
    return out
