"""Review of #25: the model ``lungseg train`` logs to MLflow (mlflow_run.json's ``model_uri``) recorded
lungseg's default serving settings (``tta none``) for a ``train.preset: nnunet`` model, and
``mlflow.pyfunc.load_model`` / ``lungseg predict <model_uri>`` served them as if evaluated, while a
folder predict mirrored and the evaluation scored the mirrored labels. The training run's model now
carries the settings a training run can know (``evaluate.*`` resolved by its preset) and says so
(``serving_origin: training``)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from lungseg.artifacts.checkpoint import build_model, load_checkpoint
from lungseg.artifacts.core import forward_probabilities
from lungseg.config import load_params
from lungseg.inference.predict import load_model
from lungseg.tracking import scoped_tracking_uri
from lungseg.training import train
from train_helpers import write_params


@pytest.mark.parametrize(("preset", "tta"), [("nnunet", "mirror"), ("default", "none")])
def test_the_training_runs_model_serves_as_a_folder_predict_and_the_evaluation(tmp_path, tiny_data, preset, tta):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = {"iterations_per_epoch": 2} if preset == "nnunet" else {}
    params = load_params(write_params(tmp_path / "p.yaml", uri, epochs=1, preset=preset, lr=0.003, **extra))
    out = tmp_path / "out"
    train(params, tiny_data, out)
    model_uri = json.loads((out / "mlflow_run.json").read_text(encoding="utf-8"))["model_uri"]
    with scoped_tracking_uri(uri):
        served = mlflow.pyfunc.load_model(model_uri)
    meta = served.metadata.metadata["lungseg"]
    assert meta["serving"]["tta"] == tta and meta["serving_origin"] == "training"
    assert meta["serving"]["postprocess"] == "none" and meta["serving"]["threshold"] == 0.5  # infection labels
    # the pyfunc's probabilities are the network's under that tta (mirror: logits averaged over the flips)
    ckpt = load_checkpoint(out / "best.pt")
    net = build_model(ckpt["model_identity"])
    net.load_state_dict(ckpt["model_state"])
    net.eval()
    x = np.load(tiny_data / "images.npy")[:3, 0].astype(np.float32)
    with torch.no_grad():
        expected = forward_probabilities(net, torch.from_numpy(x)[:, None], tta=tta)[:, 0].numpy()
        plain = forward_probabilities(net, torch.from_numpy(x)[:, None], tta="none")[:, 0].numpy()
    got = served.predict(x)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if tta == "mirror":
        assert np.abs(got - plain).max() > 1e-4  # mirroring changes these probabilities: the check has teeth
    # lungseg predict's loader: the same settings as the folder, and the report names their origin
    by_uri = load_model(model_uri, tracking_uri=uri)
    folder = load_model(out)
    assert by_uri.serving == folder.serving and by_uri.serving.tta == tta
    assert by_uri.describe()["serving_origin"] == "training"
