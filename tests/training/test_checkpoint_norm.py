"""A checkpoint's preprocess record and its model identity's input_norm must agree (review of #25),
and an identity that differs only in input_norm is named so."""

from __future__ import annotations

import pytest
import torch

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.errors import CheckpointError
from lungseg.models import create_model

STATS = {"scheme": "ct", "mean": 0.45, "std": 0.12, "percentile_00_5": 0.1, "percentile_99_5": 0.8, "n_foreground": 9}
KW = {"in_channels": 1, "num_classes": 1, "base_channels": 4}


def _write(path, preprocess, input_norm):
    identity = {"name": "unet", "kwargs": dict(KW), **({"input_norm": input_norm} if input_norm else {})}
    state = create_model("unet", **KW).state_dict()
    torch.save({"model_identity": identity, "model_state": state, "preprocess": preprocess, "epoch": 1}, path)
    return path


CT = {"normalization": "ct_zscore", "ct_norm": STATS, "image_size": 32}
WINDOW = {"image_size": 32}


@pytest.mark.parametrize(
    ("preprocess", "norm", "says"),
    [
        (CT, None, "normalization ct_zscore (mean 0.45"),  # the hand-edited checkpoint of the review
        (WINDOW, STATS, "normalization window but the model identity's input_norm is ct_zscore"),
        (CT, {**STATS, "mean": 0.5}, "input_norm is ct_zscore (mean 0.5,"),
    ],
)
def test_a_preprocess_record_that_disagrees_with_the_identity_is_refused_naming_the_file(
    tmp_path, preprocess, norm, says
):
    path = _write(tmp_path / "edited.pt", preprocess, norm)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: the preprocess record says") and says in msg and "\n" not in msg


@pytest.mark.parametrize(("preprocess", "norm"), [(CT, STATS), (WINDOW, None), (None, None)])
def test_agreeing_records_load(tmp_path, preprocess, norm):
    ckpt = load_checkpoint(_write(tmp_path / "ok.pt", preprocess, norm))
    assert ckpt["model_identity"].get("input_norm") == norm


def test_an_identity_differing_only_in_input_norm_names_the_normalisation(tmp_path):
    """Was: 'checkpoint is for unet(base_channels=4, …), but the configuration asks for unet(base_channels=4, …)'."""
    path = _write(tmp_path / "ct.pt", CT, STATS)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, {"name": "unet", "kwargs": dict(KW)})
    msg = str(err.value)
    assert "with input normalisation ct_zscore (mean 0.45, std 0.12" in msg
    assert "but the data asks for none (window data)" in msg and "preprocess.normalization" in msg
    with pytest.raises(
        CheckpointError, match=r"checkpoint is for unet\(base_channels=4.*asks for unet\(base_channels=8"
    ):
        load_checkpoint(path, {"name": "unet", "kwargs": {**KW, "base_channels": 8}, "input_norm": STATS})
