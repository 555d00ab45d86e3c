"""Evaluation of a model trained on the real sample: report files, self-consistency of the numbers,
logging into the training run (local sqlite store), atomic output and clear errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from train_helpers import write_params

from lungseg.config import load_params
from lungseg.data.dataset import load_split
from lungseg.errors import CheckpointError, DataError
from lungseg.evaluation import evaluate
from lungseg.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("eval")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    params = load_params(write_params(root / "p.yaml", uri, epochs=2))
    params = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, n_overlays=2))
    train(params, tiny_data, root / "model")
    return root, params, uri


def test_report_files_numbers_and_mlflow(trained, tiny_data):
    root, params, uri = trained
    result = evaluate(params, root / "model", tiny_data, root / "report")
    out = root / "report"
    assert {p.name for p in out.iterdir()} == {"per_image.csv", "metrics.json", "overlays.png", "roc.csv", "pr.csv",
                                              "curves.csv", "curves.png", "mlflow_logging.json"}  # fmt: skip
    test = load_split(tiny_data, "test")
    per_image = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    assert per_image["id"].tolist() == test.manifest["id"].tolist()
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["n_images"] == len(test) == result.n_images
    assert m["checkpoint"] == "best.pt"
    assert m["dice_mean"] == pytest.approx(per_image["dice"].mean())
    tp, fp, fn = (int(per_image[c].sum()) for c in ("tp", "fp", "fn"))
    assert m["dice_pooled"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert any("slice-level split" in w for w in m["data_warnings"])  # carried over from meta.json
    assert m["data_fingerprint"].startswith("sha256:")

    curves = pd.read_csv(out / "curves.csv")
    roc, pr = pd.read_csv(out / "roc.csv"), pd.read_csv(out / "pr.csv")
    assert len(curves) == len(roc) == len(pr) == 101
    at_half = curves[np.isclose(curves["threshold"], 0.5)].iloc[0]
    assert at_half["dice"] == pytest.approx(m["dice_pooled"])  # same pooled rule as the summary
    assert roc["tpr"].is_monotonic_decreasing and roc["fpr"].is_monotonic_decreasing
    assert roc.iloc[0][["fpr", "tpr"]].tolist() == [1.0, 1.0]
    assert 0.0 <= m["roc_auc_pooled"] <= 1.0

    info = json.loads((root / "model" / "mlflow_run.json").read_text())
    client = MlflowClient(uri)
    run = client.get_run(info["run_id"])
    assert run.data.metrics["eval_dice_mean"] == pytest.approx(m["dice_mean"])
    assert run.data.tags["eval_split"] == "test" and run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(info["run_id"], "evaluation/test")}
    assert {f"evaluation/test/{n}" for n in ("per_image.csv", "metrics.json", "overlays.png", "roc.csv",
                                             "curves.csv")} <= logged  # fmt: skip
    assert json.loads((out / "mlflow_logging.json").read_text())["lost_logging"] == 0


def test_failed_evaluation_keeps_previous_report(trained, tiny_data):
    root, params, _ = trained
    evaluate(params, root / "model", tiny_data, root / "report2")
    before = (root / "report2" / "metrics.json").read_bytes()
    bad = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, split="no-such-split"))
    with pytest.raises(DataError, match="no-such-split"):
        evaluate(bad, root / "model", tiny_data, root / "report2")
    assert (root / "report2" / "metrics.json").read_bytes() == before
    assert not list(root.glob(".report2.tmp-*"))
    with pytest.raises(CheckpointError, match="training output folder not found"):
        evaluate(params, root / "nowhere", tiny_data, root / "report3")
    assert not (root / "report3").exists()


def test_falls_back_to_last_checkpoint(trained, tiny_data, tmp_path):
    root, params, _ = trained
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    (model / "best.pt").unlink()
    (model / "mlflow_run.json").unlink()  # not logged: said in the report folder, not an error
    evaluate(params, model, tiny_data, tmp_path / "report")
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert m["checkpoint"] == "checkpoint.pt" and m["checkpoint_epoch"] == 2
    assert json.loads((tmp_path / "report" / "mlflow_logging.json").read_text())["run_id"] is None


def test_corrupt_run_file_is_a_data_error_naming_it(trained, tiny_data, tmp_path):
    root, params, _ = trained
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    (model / "mlflow_run.json").write_text('{"run_id": "abc", ', encoding="utf-8")
    with pytest.raises(DataError, match=r"mlflow_run\.json: not valid JSON"):
        evaluate(params, model, tiny_data, tmp_path / "report")
    assert not (tmp_path / "report").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left either
