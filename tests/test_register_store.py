"""`lungseg register` / `lungseg evaluate` work only in the MLflow store the user names (review F5, #20).

``MLFLOW_TRACKING_URI=sqlite:///other.db lungseg register …`` decided in the store recorded in
``mlflow_run.json``: ``other.db`` was never created and nothing said so, although docs/training.md says
the variable wins. A store named by the variable or ``params.yaml`` that is not the store of the training
run is refused in one line naming both stores and the fix; nothing is registered, nothing is written.
"""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from lungseg.cli import main
from registry_helpers import log_tiny_model, write_candidate


@pytest.fixture(scope="module")
def runs_store(tmp_path_factory):
    """A store holding one training run with a logged model (the store ``mlflow_run.json`` names)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('runs') / 'runs.db'}"
    return uri, log_tiny_model(uri)


def _params_file(path, tracking_uri, name="lsg-store"):
    path.write_text(
        json.dumps({"register": {"model_name": name}, "mlflow": {"tracking_uri": tracking_uri}}), encoding="utf-8"
    )  # JSON is YAML
    return path


def _register(model_dir, eval_dir, out, params_file):
    return main(
        ["register", "--model", str(model_dir), "--evaluation", str(eval_dir), "--output", str(out)]
        + ["--params", str(params_file)]
    )


def _versions(uri, name):
    return MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name = '{name}'")


def test_register_refuses_another_store_named_by_the_variable(tmp_path, runs_store, monkeypatch, capsys):
    uri, info = runs_store
    model_dir, eval_dir = write_candidate(tmp_path / "a", info, dice=0.42, fingerprint="sha256:" + "a" * 64)
    params_file = _params_file(tmp_path / "params.yaml", uri, "lsg-store-env")
    other = tmp_path / "other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    out = tmp_path / "x.json"
    assert _register(model_dir, eval_dir, out, params_file) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {model_dir / 'mlflow_run.json'}: ")
    assert f"logged to {uri}" in err and f"MLFLOW_TRACKING_URI names sqlite:///{other}" in err
    assert "dvc repro" in err
    assert not out.exists() and not other.exists()  # nothing decided, the other store not even created
    assert _versions(uri, "lsg-store-env") == []  # and nothing registered in the runs' store either
    # the variable naming the runs' own store: registered there, as before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert _register(model_dir, eval_dir, out, params_file) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["decision"] == "champion"
    assert [v.run_id for v in _versions(uri, "lsg-store-env")] == [info["run_id"]]


def test_register_refuses_another_store_named_by_params(tmp_path, runs_store, monkeypatch, capsys):
    uri, info = runs_store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model_dir, eval_dir = write_candidate(tmp_path / "a", info, dice=0.42, fingerprint="sha256:" + "a" * 64)
    other = tmp_path / "other.db"
    out = tmp_path / "x.json"
    assert _register(model_dir, eval_dir, out, _params_file(tmp_path / "p.yaml", f"sqlite:///{other}")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"mlflow.tracking_uri (params) names sqlite:///{other}" in err
    assert not out.exists() and not other.exists()


def test_evaluate_refuses_another_store_before_evaluating(tmp_path, runs_store, monkeypatch, capsys):
    """evaluate logs its run under the training run: with another store named it would log there silently."""
    uri, info = runs_store
    model_dir, _ = write_candidate(tmp_path / "a", info, dice=0.42, fingerprint="sha256:" + "a" * 64)
    other = tmp_path / "other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    out = tmp_path / "report"
    params_file = _params_file(tmp_path / "params.yaml", uri)
    code = main(
        ["evaluate", "--model", str(model_dir), "--data", str(tmp_path / "data"), "--output", str(out)]
        + ["--params", str(params_file)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"logged to {uri}" in err and f"MLFLOW_TRACKING_URI names sqlite:///{other}" in err
    assert not out.exists() and not other.exists()


def test_the_library_call_refuses_another_store_too(tmp_path, runs_store, monkeypatch):
    """The KFP register component calls lungseg.registry.register, not the CLI: the check is in the library."""
    from lungseg.config import params_from_dict
    from lungseg.errors import DataError
    from lungseg.registry import register

    uri, info = runs_store
    model_dir, eval_dir = write_candidate(tmp_path / "lib", info, dice=0.42, fingerprint="sha256:" + "a" * 64)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    other = tmp_path / "other.db"
    params = params_from_dict({"register": {"model_name": "lsg-lib"}, "mlflow": {"tracking_uri": f"sqlite:///{other}"}})
    with pytest.raises(DataError, match=f"the training run was logged to {uri}"):
        register(params, model_dir, eval_dir, tmp_path / "x.json")
    assert not other.exists() and not (tmp_path / "x.json").exists()
