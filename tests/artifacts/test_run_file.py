"""``mlflow_run.json`` through its one reader/writer (lungseg.artifacts.run_file)."""

from __future__ import annotations

import json
import subprocess

import pytest

from lungseg.artifacts.run_file import RUN_FILE, RunFile
from lungseg.errors import DataError

#: what training writes at the end (the keys in its order)
WRITTEN = {
    "run_id": "abc123",
    "experiment_id": "1",
    "experiment": "lungseg",
    "tracking_uri": "sqlite:///mlflow.db",
    "model_uri": "models:/m-1",
    "model": "lgnet",
    "lost_logging": 0,
    "lost_calls": [],
    "logging_failures": 0,
    "flushed_calls": 0,
    "best_sha256": "sha256:00",
}


def _write(path, data) -> None:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")


def test_a_file_goes_through_unchanged(tmp_path):
    """from_file → to_file gives the same JSON; unknown keys are kept."""
    src = tmp_path / RUN_FILE
    data = {**WRITTEN, "future_field": {"x": 1}}
    _write(src, data)
    run = RunFile.from_file(src)
    assert (run.run_id, run.model_uri, run.model, run.lost_logging) == ("abc123", "models:/m-1", "lgnet", 0)
    assert run.extra == {"future_field": {"x": 1}} and run.path == src
    out = run.to_file(tmp_path / "copy.json")
    assert json.loads(out.read_text(encoding="utf-8")) == data


def test_the_running_file_keeps_a_null_model_uri():
    """While the run goes on training writes ``model_uri: null`` and ``status: running``, no best_sha256."""
    run = RunFile(run_id="r", experiment_id="1", experiment="e", tracking_uri="file:/x", model="unet", status="running")
    d = run.to_dict()
    assert d["model_uri"] is None and d["status"] == "running" and "best_sha256" not in d
    assert list(d)[:6] == ["run_id", "experiment_id", "experiment", "tracking_uri", "model_uri", "model"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, r"mlflow_run\.json: missing \(written by `lungseg train`\)"),
        ('{"run_id": "abc", ', r"mlflow_run\.json: not valid JSON"),
        ("[1, 2]", r"mlflow_run\.json: expected a JSON object, found list"),
        ({"model_uri": "models:/m-1"}, r"mlflow_run\.json: no 'run_id': the training run was not logged to MLflow"),
        ({"run_id": "a", "lost_logging": "3"}, r"mlflow_run\.json: lost_logging must be int, found str: '3'"),
        ({"run_id": "a", "model_uri": 5}, r"mlflow_run\.json: model_uri must be str, found int"),
        ({"run_id": "a", "lost_logging": True}, r"mlflow_run\.json: lost_logging must be int, found bool"),
    ],
)
def test_a_bad_file_is_a_one_line_data_error_naming_it(tmp_path, content, problem):
    path = tmp_path / RUN_FILE
    if content is not None:
        _write(path, content)
    with pytest.raises(DataError, match=problem) as err:
        RunFile.from_file(path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_require_names_the_file_and_the_missing_field(tmp_path):
    path = tmp_path / RUN_FILE
    _write(path, {"run_id": "abc", "tracking_uri": "sqlite:///mlflow.db"})
    run = RunFile.from_file(path)
    assert run.require("tracking_uri") is run
    with pytest.raises(DataError, match=rf"{RUN_FILE}: no 'model_uri': the training run was not logged to MLflow"):
        run.require("tracking_uri", "model_uri")


def test_find_is_none_without_a_file_and_strict_with_one(tmp_path):
    assert RunFile.find(tmp_path / RUN_FILE) is None
    _write(tmp_path / RUN_FILE, "{")
    with pytest.raises(DataError, match="not valid JSON"):
        RunFile.find(tmp_path / RUN_FILE)


def test_a_repository_relative_store_is_resolved_against_the_files_repository(tmp_path):
    """``sqlite:///mlflow.db`` (how training records the repository's own store) means the mlflow.db
    of the repository the file lies in, wherever the reader runs."""
    repo = tmp_path / "clone"
    (repo / "models" / "medseg").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    path = repo / "models" / "medseg" / RUN_FILE
    _write(path, WRITTEN)
    assert RunFile.from_file(path).resolved_tracking_uri() == f"sqlite:///{repo.resolve()}/mlflow.db"
    assert RunFile(run_id="x").resolved_tracking_uri() is None
    assert RunFile(run_id="x", tracking_uri="http://mlflow:5000").resolved_tracking_uri() == "http://mlflow:5000"
