"""Review of #25: continuing a preset run with the preset changed crashed (KeyError 'step' in Adam /
'momentum' in SGD at the first step), left ``.partial`` and marked the original finished MLflow run
FAILED. The optimizer is among the settings a resume restores (one-line refusal, nothing touched);
the other train keys #25 added are read afresh each epoch and may change (warned about)."""

from __future__ import annotations

import json
import shutil

import mlflow

from lungseg.config import load_params
from lungseg.training import train
from lungseg.training.rundir import RESTORED_SETTINGS
from train_helpers import write_params

# written in every file so that the preset changes only what it alone decides (the optimizer)
KEEP = {"lr": 0.003, "weight_decay": 1e-5, "scheduler": "cosine", "batch_size": 2}


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_optimizer_is_a_restored_setting_and_the_per_epoch_keys_are_not():
    assert set(RESTORED_SETTINGS) == {"lr", "weight_decay", "scheduler", "optimizer"}
    # safe to change on resume: no state restored from the checkpoint carries them
    assert not {"iterations_per_epoch", "oversample_foreground", "augment", "grad_clip"} & set(RESTORED_SETTINGS)


def test_continuing_a_preset_run_under_another_preset_is_refused_and_touches_nothing(tmp_path, tiny_data, capsys):
    from lungseg.cli import main

    uri = _uri(tmp_path)
    nnunet = write_params(tmp_path / "p.yaml", uri, epochs=1, preset="nnunet", iterations_per_epoch=2, **KEEP)
    out = tmp_path / "out"
    args = ["train", "--data", str(tiny_data), "--output", str(out), "--params"]
    assert main([*args, str(nnunet)]) == 0
    first = json.loads((out / "mlflow_run.json").read_text(encoding="utf-8"))
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    plain = write_params(tmp_path / "q.yaml", uri, epochs=2, **KEEP)  # preset default: Adam
    assert main([*args, str(plain), "--resume"]) == 2
    err = capsys.readouterr().err
    err = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "--resume restores the optimizer" in err[0]
    assert "train.optimizer 'sgd_nesterov' → 'adam'" in err[0] and str(out / "checkpoint.pt") in err[0]
    assert not (tmp_path / "out.partial").exists() and (out / "checkpoint.pt").read_bytes() == before
    run = mlflow.MlflowClient(uri).get_run(first["run_id"])
    assert run.info.status == "FINISHED"  # was FAILED: the crash happened inside the reopened run
    # a killed run's .partial resumed under the other preset: the same refusal, its run not reopened
    shutil.copytree(out, tmp_path / "out.partial")
    assert main([*args, str(plain), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer 'sgd_nesterov' → 'adam'" in err and str(tmp_path / "out.partial" / "checkpoint.pt") in err
    assert mlflow.MlflowClient(uri).get_run(first["run_id"]).info.status == "FINISHED"


def test_the_per_epoch_keys_may_change_on_resume_with_a_warning(tmp_path, tiny_data, caplog):
    uri = _uri(tmp_path)
    kw = {"preset": "nnunet", **KEEP}
    out = tmp_path / "out"
    first = write_params(tmp_path / "p.yaml", uri, epochs=1, iterations_per_epoch=2, augment="nnunet", **kw)
    train(load_params(first), tiny_data, out)
    changed = write_params(
        tmp_path / "q.yaml",
        uri,
        epochs=2,
        iterations_per_epoch=3,
        oversample_foreground=0.5,
        augment="light",
        grad_clip=1.0,
        **kw,
    )
    with caplog.at_level("WARNING"):
        result = train(load_params(changed), tiny_data, out, resume=True)
    assert result.epochs_run == 2
    warned = " ".join(r.getMessage() for r in caplog.records if "changed train settings" in r.getMessage())
    for what in ("iterations_per_epoch 2 → 3", "oversample_foreground", "augment 'nnunet' → 'light'", "grad_clip"):
        assert what in warned, what
    info = json.loads((out / "mlflow_run.json").read_text(encoding="utf-8"))
    assert mlflow.MlflowClient(uri).get_run(info["run_id"]).info.status == "FINISHED"
