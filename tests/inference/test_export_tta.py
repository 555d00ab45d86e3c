"""Review of #25: ``lungseg export`` of a ``train.preset: nnunet`` model exported the plain network
(``export.json`` tta none) and checked its parity against un-mirrored PyTorch while the model serves
``mirror``. The export now carries the model's serving tta (ONNX and TorchScript), records it, and
refuses in one line a tta it cannot carry (``flips``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lungseg.artifacts import core
from lungseg.inference import volumes
from lungseg.inference.export import check_batch
from lungseg.inference.predict import load_model
from train_helpers import SAMPLE


@pytest.fixture(scope="module")
def preset_folder(tmp_path_factory, tiny_data, store) -> Path:
    """A U-Net (base 4, 32²) trained one epoch under ``train.preset: nnunet``."""
    from lungseg.config import load_params
    from lungseg.training import train

    root = tmp_path_factory.mktemp("export-preset")
    train_cfg = {"model": "unet", "base_channels": 4, "epochs": 1, "device": "cpu", "preset": "nnunet"}
    data = {"train": {**train_cfg, "iterations_per_epoch": 2}, "mlflow": {"tracking_uri": store, "experiment": "t"}}
    (root / "p.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    train(load_params(root / "p.yaml"), tiny_data, root / "model")
    return root / "model"


def _x(model) -> np.ndarray:
    slices = volumes.to_model_range(volumes.read_scan(SAMPLE / "tr_im"), model.preprocess)[0]
    return check_batch(slices[:6], model.image_size)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_preset_model_exports_with_its_mirror(preset_folder, tmp_path, export, fmt):
    out = tmp_path / fmt
    code, stdout, _ = export(preset_folder, fmt, out, "--max-check-slices", "6")
    assert code == 0 and "tta mirror" in stdout
    info = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert info["tta"] == "mirror" and info["parity"]["passed"]
    model = load_model(preset_folder)
    assert model.serving.tta == "mirror"  # what predict serves and evaluate scores
    x = _x(model)
    with torch.inference_mode():
        mirrored = core.ProbabilityNet(model.net, tta="mirror").eval()(torch.from_numpy(x)).numpy()
        plain = core.ProbabilityNet(model.net).eval()(torch.from_numpy(x)).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {"slices": x})[0]
    else:
        with torch.inference_mode():
            got = torch.jit.load(str(out / "model.pt"))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, mirrored, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-4  # the export is not the plain network's


def test_a_tta_an_export_cannot_carry_is_refused_in_one_line(preset_folder, tmp_path, store, capsys):
    from lungseg.cli import main

    params = tmp_path / "flips.yaml"
    params.write_text(
        yaml.safe_dump({"mlflow": {"tracking_uri": store}, "evaluate": {"tta": "flips"}}), encoding="utf-8"
    )
    out = tmp_path / "never"
    args = ["export", "--model", str(preset_folder), "--format", "onnx", "--output", str(out)]
    code = main([*args, "--check-input", str(SAMPLE / "tr_im"), "--params", str(params)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "tta 'flips'" in err and "set evaluate.tta to none or mirror" in err
    assert not out.exists()
