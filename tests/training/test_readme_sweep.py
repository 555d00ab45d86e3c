"""The README's sweep over the zoo (``dvc exp run -S train.model=<m>``) trains each model with the
committed ``params.yaml``: here the train stage runs in-process for every registered model, one epoch
on the real bundled sample preprocessed with the committed preprocess section, into a throw-away
MLflow store. It crashed with a TypeError for 5 of 7 models once (LG-Net's ``max_tokens`` given to
all). The DVC plumbing around the stage does not depend on the model: it is run for one model in
``tests/integration/test_dvc_pipeline.py::test_experiment_sweep_over_the_model``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.config import params_from_dict
from lungseg.models import list_models
from lungseg.training import train

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "medseg-covid100"


@pytest.fixture(scope="module")
def committed() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def committed_data(tmp_path_factory, committed) -> Path:
    """The bundled sample as the committed preprocess section makes it (once for the module)."""
    from lungseg.data.preprocess import preprocess

    out = tmp_path_factory.mktemp("sweep") / "medseg"
    preprocess("medseg", SAMPLE, out, params_from_dict({"preprocess": committed["preprocess"]}).preprocess)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", list_models())
def test_the_committed_params_train_every_model(model, committed, committed_data, tmp_path):
    data = yaml.safe_load(yaml.safe_dump(committed))  # a deep copy
    data["train"].update(model=model, epochs=1, min_epochs=1)
    data["mlflow"] = {**data.get("mlflow", {}), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    params = params_from_dict(data, f"params.yaml (train.model={model}, train.epochs=1, train.min_epochs=1)")
    result = train(params, committed_data, tmp_path / "out")
    assert result.epochs_run == 1 and math.isfinite(result.history[0]["train_loss"]), result.history
    identity = load_checkpoint(tmp_path / "out" / "best.pt")["model_identity"]
    assert identity["name"] == model and identity["kwargs"]["base_channels"] == committed["train"]["base_channels"]
    # each model gets its own entry of train.model_kwargs and nothing of another model's
    own = (committed["train"].get("model_kwargs") or {}).get(model, {})
    assert {k: identity["kwargs"][k] for k in own} == own
    others = {k for name, kw in (committed["train"].get("model_kwargs") or {}).items() if name != model for k in kw}
    assert not (others - set(own)) & set(identity["kwargs"]), identity
