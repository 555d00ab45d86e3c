"""Evaluation of a model trained on the real sample: report files, self-consistency of the numbers,
an MLflow run per evaluation nested under the training run (local sqlite store), the binding of the
report to the evaluated weights, the preprocessing check, atomic output and clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from lungseg.config import load_params
from lungseg.data.dataset import load_split
from lungseg.errors import CheckpointError, DataError
from lungseg.evaluation import evaluate
from lungseg.training import train
from train_helpers import write_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("eval")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    params = load_params(write_params(root / "p.yaml", uri, epochs=2))
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"n_overlays": 2})})
    train(params, tiny_data, root / "model")
    return root, params, uri


@pytest.mark.slow
def test_report_files_numbers_and_mlflow(trained, tiny_data):
    root, params, uri = trained
    result = evaluate(params, root / "model", tiny_data, root / "report")
    out = root / "report"
    assert {p.name for p in out.iterdir()} == {
        ".lungseg-output",
        "per_image.csv",
        "metrics.json",
        "headline.json",
        "overlays.png",
        "roc.csv",
        "pr.csv",
        "curves.csv",
        "curves.png",
        "mlflow_logging.json",
    }
    test = load_split(tiny_data, "test")
    per_image = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    assert per_image["id"].tolist() == test.manifest["id"].tolist()
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
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

    # the report names the model it belongs to: the training run and the sha256 of the evaluated weights
    from lungseg.io import sha256_file

    info = json.loads((root / "model" / "mlflow_run.json").read_text(encoding="utf-8"))
    assert m["run_id"] == info["run_id"]
    assert m["model_sha256"] == sha256_file(root / "model" / "best.pt") == info["best_sha256"]
    assert m["preprocessing_mismatch"] == [] and m["preprocessing_unchecked"] == []
    # headline.json (the DVC metrics file) holds the few headline numbers, equal to metrics.json's
    headline = json.loads((out / "headline.json").read_text(encoding="utf-8"))
    assert set(headline) == {
        "n_images",
        "dice_mean",
        "dice_pooled",
        "iou_mean",
        "sen_mean",
        "spe_mean",
        "hd95_mean",
        "roc_auc_pooled",
        "threshold",
        "best_trivial_dice_mean",
    }
    assert all(headline[k] == m[k] for k in headline)

    # its own MLflow run, nested under the training run; the training run is not written to
    client = MlflowClient(uri)
    logging = json.loads((out / "mlflow_logging.json").read_text(encoding="utf-8"))
    assert logging["lost_logging"] == 0 and logging["parent_run_id"] == info["run_id"]
    ev = client.get_run(logging["run_id"])
    assert ev.info.run_id != info["run_id"] and ev.info.status == "FINISHED"
    assert ev.data.tags["mlflow.parentRunId"] == info["run_id"] and ev.data.tags["lungseg.stage"] == "evaluate"
    assert ev.data.tags["eval_split"] == "test" and ev.data.tags["model_sha256"] == m["model_sha256"]
    # lineage (#16): the evaluated set's raw-data version and the code that evaluated it
    from lungseg.lineage import source_tags
    from lungseg.provenance import git_commit

    assert source_tags(test.meta).items() <= ev.data.tags.items() and source_tags(test.meta)
    assert ev.data.tags["git_commit"] == git_commit()
    assert ev.data.metrics["dice_mean"] == pytest.approx(m["dice_mean"])
    assert {"per_image.csv", "metrics.json", "overlays.png", "roc.csv", "curves.csv"} <= {
        a.path for a in client.list_artifacts(ev.info.run_id)
    }
    train_run = client.get_run(info["run_id"])
    assert not [k for k in train_run.data.metrics if k.startswith("eval")] and train_run.info.status == "FINISHED"


@pytest.mark.slow
def test_failed_evaluation_keeps_previous_report(trained, tiny_data):
    root, params, _ = trained
    evaluate(params, root / "model", tiny_data, root / "report2")
    before = (root / "report2" / "metrics.json").read_bytes()
    bad = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"split": "no-such-split"})})
    with pytest.raises(DataError, match="no-such-split"):
        evaluate(bad, root / "model", tiny_data, root / "report2")
    assert (root / "report2" / "metrics.json").read_bytes() == before
    assert not list(root.glob(".report2.tmp-*"))
    with pytest.raises(CheckpointError, match="training output folder not found"):
        evaluate(params, root / "nowhere", tiny_data, root / "report3")
    assert not (root / "report3").exists()


@pytest.mark.slow
def test_falls_back_to_last_checkpoint(trained, tiny_data, tmp_path):
    root, params, _ = trained
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    (model / "best.pt").unlink()
    (model / "mlflow_run.json").unlink()  # not logged: said in the report folder, not an error
    evaluate(params, model, tiny_data, tmp_path / "report")
    m = json.loads((tmp_path / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert m["checkpoint"] == "checkpoint.pt" and m["checkpoint_epoch"] == 2
    assert "best.pt: not found" in m["checkpoint_fallback"]
    assert json.loads((tmp_path / "report" / "mlflow_logging.json").read_text(encoding="utf-8"))["run_id"] is None


@pytest.mark.slow
def test_corrupt_run_file_is_a_data_error_naming_it(trained, tiny_data, tmp_path):
    root, params, _ = trained
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    (model / "mlflow_run.json").write_text('{"run_id": "abc", ', encoding="utf-8")
    with pytest.raises(DataError, match=r"mlflow_run\.json: not valid JSON"):
        evaluate(params, model, tiny_data, tmp_path / "report")
    assert not (tmp_path / "report").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left either


@pytest.mark.slow
def test_a_second_evaluation_never_overwrites_the_first(trained, tiny_data, tmp_path):
    """Two evaluations (another threshold) are two MLflow runs under the training run, each with its
    own numbers; the training run's metrics are untouched (they held two values at one step)."""
    root, params, uri = trained
    evaluate(params, root / "model", tiny_data, tmp_path / "a")
    other = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"threshold": 0.2})})
    evaluate(other, root / "model", tiny_data, tmp_path / "b")
    client = MlflowClient(uri)
    runs = [
        json.loads((tmp_path / x / "mlflow_logging.json").read_text(encoding="utf-8"))["run_id"] for x in ("a", "b")
    ]
    assert len(set(runs)) == 2
    for x, run_id in zip(("a", "b"), runs):
        m = json.loads((tmp_path / x / "metrics.json").read_text(encoding="utf-8"))
        got = client.get_run(run_id).data.metrics
        assert got["dice_mean"] == pytest.approx(m["dice_mean"]) and got["threshold"] == m["threshold"]
        assert [h.value for h in client.get_metric_history(run_id, "dice_mean")] == [pytest.approx(m["dice_mean"])]
    info = json.loads((root / "model" / "mlflow_run.json").read_text(encoding="utf-8"))
    children = client.search_runs(
        [client.get_run(info["run_id"]).info.experiment_id], f"tags.mlflow.parentRunId = '{info['run_id']}'"
    )
    assert set(runs) <= {r.info.run_id for r in children}


@pytest.mark.slow
def test_data_preprocessed_differently_is_refused_unless_allowed(trained, tiny_data, tmp_path_factory, tmp_path):
    """A 32² model on a 64² set ran silently (another score); now a DataError naming both values,
    or, when asked, an evaluation that records the difference."""
    from train_helpers import processed_sample

    root, params, _ = trained
    bigger = processed_sample(tmp_path_factory, 64)
    with pytest.raises(DataError, match=r"medseg64: preprocessed differently .*image_size: data 64, model 32"):
        evaluate(params, root / "model", bigger, tmp_path / "r64")
    assert not (tmp_path / "r64").exists()
    evaluate(params, root / "model", bigger, tmp_path / "r64", allow_preprocessing_mismatch=True)
    m = json.loads((tmp_path / "r64" / "metrics.json").read_text(encoding="utf-8"))
    assert m["preprocessing_mismatch"] == ["image_size: data 64, model 32"] and m["n_images"] == 6

    window = tmp_path / "window"  # same pixels size, another HU window recorded
    shutil.copytree(tiny_data, window)
    meta = json.loads((window / "meta.json").read_text(encoding="utf-8"))
    meta["preprocess"]["hu_window"] = [-1200.0, 600.0]
    (window / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match=r"hu_window: data \[-1200, 600\], model \[-1000, 400\]"):
        evaluate(params, root / "model", window, tmp_path / "rw")


@pytest.mark.slow
def test_an_old_checkpoint_is_checked_on_what_it_records(trained, tiny_data, tmp_path, caplog):
    """best.pt written before training recorded its preprocessing: image_size is still checked, the
    rest is said to be unchecked."""
    import torch

    root, params, _ = trained
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    for name in ("best.pt", "checkpoint.pt"):
        ckpt = torch.load(model / name, weights_only=False)
        del ckpt["preprocess"]
        torch.save(ckpt, model / name)
    evaluate(params, model, tiny_data, tmp_path / "report")
    m = json.loads((tmp_path / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert m["preprocessing_unchecked"] == ["hu_window", "multiclass", "num_labels", "label_names"]
    assert (
        "does not record the training data's hu_window, multiclass, num_labels, label_names" in caplog.text  # logged
    )


@pytest.mark.slow
def test_truncated_best_is_named_and_the_intact_last_checkpoint_is_used(trained, tiny_data, tmp_path, caplog):
    root, params, _ = trained
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    data = (model / "best.pt").read_bytes()
    (model / "best.pt").write_bytes(data[: len(data) // 2])
    evaluate(params, model, tiny_data, tmp_path / "report")
    err = caplog.text  # the warning is logged (the command line prints it on stderr)
    assert "best.pt: not a readable checkpoint" in err and f"evaluating {model / 'checkpoint.pt'} instead" in err
    m = json.loads((tmp_path / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert m["checkpoint"] == "checkpoint.pt" and "best.pt: not a readable checkpoint" in m["checkpoint_fallback"]
    from lungseg.io import sha256_file

    assert m["model_sha256"] == sha256_file(model / "checkpoint.pt")
    (model / "checkpoint.pt").write_bytes(b"")  # both broken: the error names best.pt
    with pytest.raises(CheckpointError, match=r"best\.pt: not a readable checkpoint"):
        evaluate(params, model, tiny_data, tmp_path / "report2")


@pytest.mark.slow
def test_output_naming_a_file_is_refused_before_evaluating(trained, tiny_data, tmp_path):
    root, params, _ = trained
    afile = tmp_path / "afile"
    afile.write_text("keep", encoding="utf-8")
    with pytest.raises(DataError, match="afile: exists and is not a folder"):
        evaluate(params, root / "model", tiny_data, afile)
    assert afile.read_text(encoding="utf-8") == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.slow
def test_serving_settings_and_trivial_baselines_are_recorded(trained, tiny_data, tmp_path):
    """Issue #20: the evaluation is of the model as served (its serving settings and their fingerprint
    in metrics.json and the MLflow run) and scores the trivial predictors with the same metric code."""
    root, params, uri = trained
    from lungseg.artifacts.checkpoint import load_checkpoint
    from lungseg.artifacts.serving import ServingSettings
    from lungseg.metrics import aggregate, per_image_metrics

    p55 = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"threshold": 0.55})})
    evaluate(p55, root / "model", tiny_data, tmp_path / "r55")
    m = json.loads((tmp_path / "r55" / "metrics.json").read_text(encoding="utf-8"))
    pre = load_checkpoint(root / "model" / "best.pt")["preprocess"]
    expected = ServingSettings.for_model(pre, 0.55)
    assert m["serving"] == expected.to_dict() and m["serving_fingerprint"] == expected.fingerprint()
    assert m["serving"]["threshold"] == m["threshold"] == 0.55

    test = load_split(tiny_data, "test")
    masks = np.asarray(test.masks)
    for name, value in (("all_background", 0.0), ("all_foreground", 1.0)):
        probs = np.full(masks.shape, value, np.float32)
        ref = aggregate(per_image_metrics(probs, masks, threshold=0.55))
        assert m["baselines"][name]["dice_mean"] == pytest.approx(ref["dice_mean"])
        assert m["baselines"][name]["sen_mean"] == pytest.approx(ref["sen_mean"])
    assert m["baselines"]["all_foreground"]["sen_mean"] == 1.0 and m["baselines"]["all_background"]["dice_mean"] < 1
    assert m["best_trivial_dice_mean"] == max(b["dice_mean"] for b in m["baselines"].values())

    run = MlflowClient(uri).get_run(
        json.loads((tmp_path / "r55" / "mlflow_logging.json").read_text(encoding="utf-8"))["run_id"]
    )
    assert run.data.tags["lungseg.serving_fingerprint"] == expected.fingerprint()
    assert run.data.params["serving.threshold"] == "0.55" and run.data.params["serving.postprocess"] == "none"
    assert run.data.metrics["baseline.all_foreground.dice_mean"] == pytest.approx(
        m["baselines"]["all_foreground"]["dice_mean"]
    )
    assert run.data.tags["lungseg.preprocessing_mismatch"] == "none"

    # the settings come from evaluate.*: test-time flips are evaluated as they will be served
    from lungseg.config import params_from_dict
    from lungseg.errors import ConfigError

    flips = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"tta": "flips"})})
    evaluate(flips, root / "model", tiny_data, tmp_path / "rt")
    mt = json.loads((tmp_path / "rt" / "metrics.json").read_text(encoding="utf-8"))
    assert mt["serving"]["tta"] == "flips" and mt["serving_fingerprint"] != m["serving_fingerprint"]
    # a name outside the vocabulary is refused when params.yaml is read
    with pytest.raises(ConfigError, match=r"evaluate\.tta"):
        params_from_dict({"evaluate": {"tta": "rotations"}})
