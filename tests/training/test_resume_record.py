"""What a resumed or continued run records when a session changes its settings (review of #24, F3): the
MLflow params of the first session cannot change, so each later session tags the run with the resolved
precision of its epochs and every setting it changed (``old → new``), and the warning names the values."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.config import load_params
from lungseg.training import setup, train
from train_helpers import write_params


def _params(path: Path, uri: str, **train_settings):
    return load_params(write_params(path, uri, **train_settings))


@pytest.mark.slow
def test_a_continuation_that_resolves_precision_differently_is_recorded(tmp_path, tiny_data, monkeypatch, capsys):
    uri, out = f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "out"
    monkeypatch.setattr(setup, "cpu_bf16_supported", lambda: True)  # a CPU with native bf16
    first = train(_params(tmp_path / "a.yaml", uri, precision="bf16", epochs=1), tiny_data, out)
    assert load_checkpoint(out / "checkpoint.pt")["config"]["precision"] == "bf16"
    capsys.readouterr()

    monkeypatch.setattr(setup, "cpu_bf16_supported", lambda: False)  # continued on one without: fp32
    second = train(_params(tmp_path / "b.yaml", uri, precision="bf16", epochs=2), tiny_data, out, resume=True)
    err = capsys.readouterr().err
    assert second.run_id == first.run_id
    assert "resuming with changed train settings precision 'bf16' → 'fp32' (the result" in err, err
    assert load_checkpoint(out / "checkpoint.pt")["config"]["precision"] == "fp32"
    assert load_checkpoint(out / "best.pt")["epoch"] in (1, 2)

    # a third session changes nothing but the epochs
    third = train(_params(tmp_path / "c.yaml", uri, precision="bf16", epochs=3), tiny_data, out, resume=True)
    assert third.run_id == first.run_id and "changed train settings" not in capsys.readouterr().err

    run = mlflow.MlflowClient(uri).get_run(first.run_id)
    assert run.data.params["train.precision"] == "bf16" and run.data.params["train.epochs"] == "1"  # immutable
    assert "effective.precision" not in run.data.params  # the first session resolved bf16 to bf16
    resume = {k: v for k, v in run.data.tags.items() if k.startswith("lungseg.resume.")}
    assert resume == {
        "lungseg.resume.1.precision": "fp32",
        "lungseg.resume.1.changed.precision": "bf16 → fp32",
        "lungseg.resume.1.changed.epochs": "1 → 2",
        "lungseg.resume.2.precision": "fp32",
        "lungseg.resume.2.changed.epochs": "2 → 3",
    }
    assert run.data.tags["lungseg.continued_to_epochs"] == "3"


@pytest.mark.slow
def test_a_fresh_run_has_no_resume_tags(tmp_path, tiny_data):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = train(_params(tmp_path / "a.yaml", uri, epochs=1), tiny_data, tmp_path / "out")
    tags = mlflow.MlflowClient(uri).get_run(result.run_id).data.tags
    assert not [k for k in tags if k.startswith("lungseg.resume.")]
