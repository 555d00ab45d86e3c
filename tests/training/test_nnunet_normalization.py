"""``preprocess.normalization: ct_zscore`` (issue #25): nnU-Net's CT normalisation computed on the
training split at preprocessing (meta.json), recorded with the trained model (its identity and
preprocess record) and applied by the network itself wherever it is built — training, evaluate,
``predict`` (``lungseg.inference.predict.load_model``) and the served model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lungseg.config import PreprocessConfig, load_params
from lungseg.data.normalize import CTNormStats, apply_ct_norm
from lungseg.data.preprocess import preprocess
from lungseg.errors import ConfigError
from train_helpers import SAMPLE


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctz") / "medseg32-ctz"
    preprocess("medseg", SAMPLE, out, PreprocessConfig(image_size=32, normalization="ct_zscore"))
    return out


def test_the_statistics_are_the_training_foregrounds_and_the_images_stay_in_0_1(ct_data, tiny_data):
    meta = json.loads((ct_data / "meta.json").read_text(encoding="utf-8"))
    assert meta["preprocess"]["normalization"] == "ct_zscore"
    images, masks = np.load(ct_data / "images.npy"), np.load(ct_data / "masks.npy")
    split = pd.read_csv(ct_data / "manifest.csv")["split"].to_numpy()
    # by hand: every foreground pixel of the training slices, pooled (nnU-Net's fingerprint statistics)
    v = images[split == "train", 0][masks[split == "train"] > 0]
    assert 0 < len(v) < (masks > 0).sum()  # the val and test slices do not count
    lo, hi = np.percentile(v, (0.5, 99.5))
    stats = meta["preprocess"]["ct_norm"]
    assert stats == {
        "mean": pytest.approx(float(np.mean(v)), rel=1e-12),
        "std": pytest.approx(float(np.std(v)), rel=1e-12),
        "percentile_00_5": pytest.approx(float(lo), rel=1e-12),
        "percentile_99_5": pytest.approx(float(hi), rel=1e-12),
        "n_foreground": len(v),
        "scheme": "ct",
    }
    # the stored images are the window's, [0, 1], bitwise those of the default preprocessing
    assert np.array_equal(images, np.load(tiny_data / "images.npy"))
    window_meta = json.loads((tiny_data / "meta.json").read_text(encoding="utf-8"))
    assert "normalization" not in window_meta["preprocess"] and "ct_norm" not in window_meta["preprocess"]


def test_the_setting_is_checked_at_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"preprocess": {"normalization": "zscore"}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="preprocess.normalization"):
        load_params(path)
    assert PreprocessConfig().normalization == "window"


def test_the_trained_model_records_it_and_predict_applies_it(ct_data, tmp_path):
    from lungseg.artifacts.checkpoint import load_checkpoint
    from lungseg.artifacts.core import predict_array
    from lungseg.inference.predict import load_model
    from lungseg.models import create_model
    from lungseg.training import train

    params_file = tmp_path / "p.yaml"
    data = {
        "train": {
            "model": "unet",
            "base_channels": 4,
            "epochs": 1,
            "device": "cpu",
            "preset": "nnunet",
            "iterations_per_epoch": 2,
        },
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tests"},
        "evaluate": {"n_overlays": 1},
    }
    params_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    train(load_params(params_file), ct_data, tmp_path / "out")
    meta = json.loads((ct_data / "meta.json").read_text(encoding="utf-8"))
    ckpt = load_checkpoint(tmp_path / "out" / "best.pt")
    assert ckpt["model_identity"]["input_norm"] == meta["preprocess"]["ct_norm"]  # with the model
    assert ckpt["preprocess"]["normalization"] == "ct_zscore"
    assert ckpt["preprocess"]["ct_norm"] == meta["preprocess"]["ct_norm"]

    loaded = load_model(tmp_path / "out")  # what `lungseg predict` serves
    assert loaded.net.input_norm == meta["preprocess"]["ct_norm"]
    bare = create_model("unet", in_channels=1, num_classes=1, base_channels=4)
    bare.load_state_dict(ckpt["model_state"])  # the same weights, no normalisation attached
    bare.eval()
    images = np.load(ct_data / "images.npy")[:6, 0]  # [0, 1], as predict feeds the network
    stats = CTNormStats.from_dict(meta["preprocess"]["ct_norm"])
    got = predict_array(loaded.net, images, 32)
    want = predict_array(bare, apply_ct_norm(images, stats), 32)  # nnU-Net's CTNormalization.run by hand
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not np.allclose(got, predict_array(bare, images, 32), atol=1e-3)  # it did normalise
    # and a state dict without the hook's keys: the bare network's
    assert set(loaded.net.state_dict()) == set(bare.state_dict())
    with torch.no_grad():
        x = torch.from_numpy(images[:2, None])
        assert torch.allclose(loaded.net(x), bare(torch.from_numpy(apply_ct_norm(images[:2, None], stats))))


@pytest.mark.parametrize("name", ["unet", "awsnet"])
def test_the_network_normalises_its_input_in_forward_and_forward_heads(name):
    import copy
    import io

    from lungseg.models import create_model, create_recorded

    record = {
        "scheme": "ct",
        "mean": 0.4,
        "std": 0.2,
        "percentile_00_5": 0.1,
        "percentile_99_5": 0.8,
        "n_foreground": 9,
    }
    torch.manual_seed(0)
    bare = create_model(name, in_channels=1, num_classes=1, base_channels=4).eval()
    net = create_recorded(
        {"name": name, "kwargs": {"in_channels": 1, "num_classes": 1, "base_channels": 4}, "input_norm": record}
    )
    net.load_state_dict(bare.state_dict())
    net.eval()
    x = torch.rand(2, 1, 32, 32)
    z = (x.clamp(0.1, 0.8) - 0.4) / 0.2  # CTNormalization.run by hand
    with torch.no_grad():
        assert torch.equal(net(x), bare(z))
        if hasattr(bare, "forward_heads"):
            for a, b in zip(net.forward_heads(x), bare.forward_heads(z)):
                assert torch.equal(a, b)
        again = torch.load(io.BytesIO(_saved(copy.deepcopy(net))), weights_only=False)  # picklable
        assert torch.equal(again(x), bare(z))


def _saved(net) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(net, buf)
    return buf.getvalue()
