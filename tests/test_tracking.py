"""lungseg.tracking against REAL stores: a local sqlite store and an ``mlflow server`` process that the
tests kill (``os.killpg`` on its process group) and restart on the same port and database.

* the resilient run queues what fails while the server is down and delivers it when it returns;
* as a context manager it ends the run FINISHED / FAILED / KILLED and delivers what is queued once;
* a ``lungseg train`` subprocess whose tracking server dies after its first epoch finishes training,
  records what was lost in ``mlflow_run.json`` (and warns), and what was logged before stays there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lungseg.tracking import HTTP_DEFAULTS, ResilientRun, TrackingWarning, absolute_sqlite, scoped_tracking_uri
from servers import MlflowServer  # tests/servers.py → scripts/servers.py (real server, own process group)
from train_helpers import cli_env, lungseg_cmd, processed_sample, write_params


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``mlflow server`` (sqlite backend, local served artifacts) the tests may stop/restart."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


def _crash(srv: MlflowServer) -> None:
    """SIGKILL the server's whole process group (no graceful shutdown: the server just vanishes)."""
    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(timeout=30)
    srv.proc = None


def _restart(srv: MlflowServer) -> None:
    srv.stop()
    srv.proc = None
    srv.start()  # same port, same database and artifact folder


def test_local_helpers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert absolute_sqlite("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert absolute_sqlite("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"


@pytest.mark.integration
def test_queued_calls_are_delivered_when_the_server_returns(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast while the server is down
    run = ResilientRun.start(server.uri, "tracking-tests", run_name="flush")
    assert run.log_metrics({"val_dice": 0.1}, step=1)
    server.stop()
    with pytest.warns(TrackingWarning, match="queued"):
        assert not run.log_metrics({"val_dice": 0.2}, step=2)
    assert not run.set_tags({"after": "outage"})  # queued behind the first failure, in order
    assert len(run.pending) == 2 and run.summary()["lost_logging"] == 2
    _restart(server)
    assert run.flush(force=True)
    run.end()
    run.close()
    assert run.summary() == {"lost_logging": 0, "lost_calls": [], "logging_failures": 1, "flushed_calls": 2}
    client = MlflowClient(server.uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val_dice")] == [(1, 0.1), (2, 0.2)]
    got = client.get_run(run.run_id)
    assert got.data.tags["after"] == "outage" and got.info.status == "FINISHED"


@pytest.mark.integration
def test_training_survives_the_tracking_server_dying(server, tmp_path_factory, tmp_path):
    data = processed_sample(tmp_path_factory, 32)
    params = write_params(tmp_path / "p.yaml", None, epochs=5)
    env = cli_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        lungseg_cmd("train", "--data", str(data), "--output", str(out), "--params", str(params)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
    )
    history = tmp_path / "out.partial" / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text(encoding="utf-8").splitlines()) >= 2:  # epoch 1 done
            _crash(server)
            break
        time.sleep(0.05)
    assert server.proc is None, "training finished before the server could be stopped"
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log  # training went on without its tracking server
    info = json.loads((out / "mlflow_run.json").read_text(encoding="utf-8"))
    assert info["lost_logging"] > 0 and info["model_uri"] is None
    assert any(c.startswith("log_model(model)") for c in info["lost_calls"]), info["lost_calls"]
    assert any(c.startswith("end_run(FINISHED)") for c in info["lost_calls"])
    lost_steps = [c for c in info["lost_calls"] if c.startswith("log_metrics(step=")]
    assert "TrackingWarning" in log and "could not be delivered" in log
    assert json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))["epochs_run"] == 5

    _restart(server)  # what was logged before the outage is still there, and only that was
    client = MlflowClient(server.uri)
    steps = [m.step for m in client.get_metric_history(info["run_id"], "val_dice")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 5
    # every epoch's metrics either arrived or are listed as lost; a call cut off mid-request may have
    # arrived *and* be listed (no confirmation came back), so lost_logging is an upper bound
    assert len(steps) + sum(1 for c in lost_steps if "best_val_dice" not in c) >= 5
    run = client.get_run(info["run_id"])
    assert run.data.params["train.epochs"] == "5" and run.data.tags["data_hash_source"] == "manifest"
    assert run.info.status == "RUNNING"  # its end could not be recorded: mlflow_run.json says so


def test_unreachable_store_at_start_is_an_error(tmp_path, monkeypatch):
    from lungseg.errors import TrainingError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TrainingError, match="MLflow tracking at http://127.0.0.1:9"):
            ResilientRun.start("http://127.0.0.1:9", "nowhere")
    # the shortened HTTP retries are taken back on the way out; the user's own value was never touched
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in os.environ and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_repo_root_and_repository_relative_uris(tmp_path, monkeypatch):
    """The default store is the repository's, also from a queued DVC experiment's temporary copy
    (`<repo>/.dvc/tmp/exps/…`, deleted by DVC afterwards), and is recorded relative to the repository."""
    from types import SimpleNamespace

    from lungseg.tracking import portable_path, portable_uri, repo_root, resolve_recorded_uri, resolve_tracking_uri

    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "models" / "medseg").mkdir(parents=True)
    exp = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (exp / ".dvc").mkdir(parents=True)
    (exp / "models" / "medseg").mkdir(parents=True)
    assert repo_root(repo / "models" / "medseg") == repo
    assert repo_root(exp / "models" / "medseg") == repo  # the repository the experiment was queued from
    assert repo_root(tmp_path) is None

    params = SimpleNamespace(mlflow=SimpleNamespace(tracking_uri="sqlite:///mlflow.db"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(exp)
    assert resolve_tracking_uri(params) == f"sqlite:///{repo.resolve()}/mlflow.db"
    monkeypatch.chdir(repo / "models")
    assert resolve_tracking_uri(params) == f"sqlite:///{repo.resolve()}/mlflow.db"  # not models/mlflow.db
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(params) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"  # outside a repository

    absolute = f"sqlite:///{repo.resolve()}/mlflow.db"
    assert portable_uri(absolute, repo / "models" / "medseg") == "sqlite:///mlflow.db"
    assert portable_uri(absolute, tmp_path / "elsewhere") == absolute  # the file is not in that repository
    assert portable_uri("http://127.0.0.1:5000", repo) == "http://127.0.0.1:5000"
    # read back: relative to the repository of the file that recorded it (a copy uses its own store)
    copy = tmp_path / "copy"
    (copy / ".git").mkdir(parents=True)
    assert resolve_recorded_uri("sqlite:///mlflow.db", copy / "models" / "medseg" / "mlflow_run.json") == (
        f"sqlite:///{copy.resolve()}/mlflow.db"
    )
    assert resolve_recorded_uri(absolute, copy / "mlflow_run.json") == absolute
    monkeypatch.chdir(repo)
    assert portable_path(repo / "data" / "processed") == "data/processed"
    assert portable_path(tmp_path / "x") == str((tmp_path / "x").resolve())


def test_redact_uri_drops_passwords_only():
    from lungseg.tracking import redact_uri

    assert redact_uri("https://alice:s3cret@mlflow.example.org/x") == "https://alice@mlflow.example.org/x"
    assert redact_uri("https://mlflow.example.org?token=abc") == "https://mlflow.example.org"
    assert redact_uri("postgresql://u:pw@db:5432/mlflow") == "postgresql://u@db:5432/mlflow"
    for kept in ("http://127.0.0.1:5000", "sqlite:///mlflow.db", "sqlite:////abs/mlflow.db", "databricks"):
        assert redact_uri(kept) == kept


def test_store_record_names_the_store_in_use(tmp_path, monkeypatch):
    """dvc.yaml's store stage: the variable wins over params.yaml, a store inside the repository is
    recorded relative to it (a clone records the same bytes), a server without its password."""
    from types import SimpleNamespace

    from lungseg.tracking import store_record

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    anchor = repo / "reports" / "tracking-store.json"
    params = SimpleNamespace(mlflow=SimpleNamespace(tracking_uri="sqlite:///mlflow.db"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(repo)
    assert store_record(params, anchor) == {"tracking_uri": "sqlite:///mlflow.db"}
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    monkeypatch.chdir(clone)
    assert store_record(params, clone / "reports" / "tracking-store.json") == {"tracking_uri": "sqlite:///mlflow.db"}
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")  # outside the repository
    assert store_record(params, anchor) == {"tracking_uri": f"sqlite:///{tmp_path.resolve()}/other.db"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/second.db")  # relative: to the repository
    assert store_record(params, anchor) == {"tracking_uri": "sqlite:///stores/second.db"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:pw@127.0.0.1:5000")
    assert store_record(params, anchor) == {"tracking_uri": "http://bob@127.0.0.1:5000"}
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    params.mlflow.tracking_uri = "http://127.0.0.1:5001"  # params.yaml switches the store too
    assert store_record(params, anchor) == {"tracking_uri": "http://127.0.0.1:5001"}


def test_check_store_in_use_refuses_a_store_other_than_the_one_named(tmp_path, monkeypatch):
    """F5 (#20): register/evaluate use the training run's store only when it is the store in use;
    the same store written differently (relative/absolute sqlite, a password, a trailing slash) is the same."""
    from types import SimpleNamespace

    from lungseg.errors import DataError
    from lungseg.tracking import check_store_in_use, same_store

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    run_file = repo / "models" / "medseg" / "mlflow_run.json"
    own = f"sqlite:///{repo.resolve()}/mlflow.db"
    params = SimpleNamespace(mlflow=SimpleNamespace(tracking_uri="sqlite:///mlflow.db"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(repo / ".git")  # inside the repository: relative to its root
    assert check_store_in_use(params, own, run_file, "register") == own
    assert check_store_in_use(params, None, run_file, "register") is None  # nothing recorded: nothing to check
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    with pytest.raises(DataError) as err:
        check_store_in_use(params, own, run_file, "register")
    msg = str(err.value)
    assert msg.startswith(f"{run_file}: the training run was logged to {own}, but MLFLOW_TRACKING_URI names ")
    assert f"sqlite:///{repo.resolve()}/other.db" in msg and "`dvc repro`" in msg and "\n" not in msg
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:pw@127.0.0.1:5000/")
    assert check_store_in_use(params, "http://bob@127.0.0.1:5000", run_file, "evaluate") == "http://bob@127.0.0.1:5000"
    with pytest.raises(DataError, match=r"logged to http://127.0.0.1:5001, but MLFLOW_TRACKING_URI names http://bob@"):
        check_store_in_use(params, "http://127.0.0.1:5001", run_file, "evaluate")  # the password never printed
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    params.mlflow.tracking_uri = "http://127.0.0.1:5000"
    with pytest.raises(DataError, match=r"mlflow.tracking_uri \(params\) names http://127.0.0.1:5000"):
        check_store_in_use(params, own, run_file, "register")
    assert same_store(f"sqlite:///{repo}/./mlflow.db", own) and not same_store(own, "http://127.0.0.1:5000")


@pytest.mark.slow
def test_lungseg_store_writes_the_record_idempotently(tmp_path):
    """`lungseg store --output F`: the same store gives the same bytes; another store other bytes; a file
    that is not such a record is refused in one line, never overwritten."""
    import sys

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "params.yaml").write_text("mlflow:\n  tracking_uri: sqlite:///mlflow.db\n", encoding="utf-8")
    import lungseg

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(Path(lungseg.__file__).resolve().parents[1])  # this lungseg, not the installed one

    def store(**variables):
        return subprocess.run(
            [sys.executable, "-m", "lungseg.cli", "store", "--output", "reports/tracking-store.json"],
            cwd=repo,
            env={**env, **variables},
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=120,
        )

    out = repo / "reports" / "tracking-store.json"
    first = store()
    assert first.returncode == 0, first.stderr
    assert json.loads(out.read_text(encoding="utf-8")) == {"tracking_uri": "sqlite:///mlflow.db"}
    written = out.read_bytes()
    assert store().returncode == 0 and out.read_bytes() == written
    assert store(MLFLOW_TRACKING_URI="http://127.0.0.1:5000").returncode == 0
    assert json.loads(out.read_text(encoding="utf-8")) == {"tracking_uri": "http://127.0.0.1:5000"}
    out.write_text('{"something": "else"}\n', encoding="utf-8")
    refused = store()
    assert refused.returncode == 2 and out.read_text(encoding="utf-8") == '{"something": "else"}\n'
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a tracking-store record" in lines[0]


def test_lungseg_store_reads_the_mlflow_section_only(tmp_path):
    """The store stage runs first on every `dvc repro`: a bad value in another section must stay the error
    of the stage that reads it (dvc said "failed to reproduce 'store'" for a bad evaluate.split)."""
    from lungseg.cli.store import load_mlflow_section
    from lungseg.errors import ConfigError

    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {split: no-such-split}\nmlflow: {tracking_uri: 'http://h:1'}\n", encoding="utf-8")
    assert load_mlflow_section(params).mlflow.tracking_uri == "http://h:1"
    params.write_text("train: {epochs: many}\n", encoding="utf-8")
    assert load_mlflow_section(params).mlflow.tracking_uri == "sqlite:///mlflow.db"  # the default
    params.write_text("mlflow: {tracking_ur: 'http://h:1'}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"params.yaml.mlflow: unknown key\(s\) tracking_ur"):
        load_mlflow_section(params)
    with pytest.raises(ConfigError, match="parameter file not found"):
        load_mlflow_section(tmp_path / "none.yaml")


@pytest.mark.slow
def test_experiment_artifacts_live_beside_a_local_store_and_stale_runs_are_marked(tmp_path, monkeypatch):
    """Artifacts of a new experiment in a local sqlite store go to mlruns/ beside the database (MLflow's
    default is the working directory's, a temporary folder for a queued DVC experiment); a run a
    killed process left RUNNING is marked KILLED."""
    from lungseg.tracking import mark_stale_run

    store = tmp_path / "repo"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = ResilientRun.start(uri, "artifacts-here", run_name="a")
    client = MlflowClient(uri)
    location = client.get_experiment(run.experiment_id).artifact_location
    assert location.removeprefix("file://").startswith(str(store / "mlruns")), location
    (elsewhere / "notes.txt").write_text("x", encoding="utf-8")
    assert run.log_artifact(elsewhere / "notes.txt", "docs")
    assert [p.read_text(encoding="utf-8") for p in (store / "mlruns").rglob("docs/notes.txt")] == ["x"]
    assert not (elsewhere / "mlruns").exists()
    assert client.get_run(run.run_id).info.status == "RUNNING"
    run.close()  # the process "dies" without ending the run
    assert mark_stale_run(uri, run.run_id) == "marked KILLED"
    assert client.get_run(run.run_id).info.status == "KILLED"
    assert mark_stale_run(uri, run.run_id) == "was already KILLED"
    assert mark_stale_run(uri, "0" * 32).startswith("could not be marked KILLED")


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One local store for the context-manager tests (creating an MLflow database takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('cm-store') / 'mlflow.db'}"


@pytest.mark.parametrize(
    ("raised", "status"),
    [(None, "FINISHED"), (ValueError, "FAILED"), (KeyboardInterrupt, "KILLED"), (SystemExit, "KILLED")],
)
@pytest.mark.slow
def test_context_manager_ends_the_run_by_how_the_block_ends(sqlite_uri, raised, status):
    """A normal exit ends the run FINISHED, an exception FAILED, an interrupt (Ctrl-C, or SIGTERM turned
    into SystemExit) KILLED; the exception goes on, and the run is closed (no more logging)."""
    with pytest.raises(raised) if raised else contextlib.nullcontext():
        with ResilientRun.start(sqlite_uri, "cm", run_name=status) as run:
            assert run.log_metrics({"loss": 0.5}, step=1)
            if raised:
                raise raised()
    got = MlflowClient(sqlite_uri).get_run(run.run_id)
    assert got.info.status == status and got.data.metrics["loss"] == 0.5
    with pytest.raises(RuntimeError, match="closed"):
        run.log_metrics({"loss": 0.1})


@pytest.mark.slow
def test_context_manager_keeps_an_explicit_end(sqlite_uri):
    """``end()`` called inside the block decides the status; leaving the block only closes."""
    with ResilientRun.start(sqlite_uri, "cm", run_name="explicit") as run:
        run.end("KILLED")
    assert MlflowClient(sqlite_uri).get_run(run.run_id).info.status == "KILLED"


@pytest.mark.slow
def test_context_manager_delivers_queued_calls_once(sqlite_uri, tmp_path, caplog):
    """A call that failed in the block (the artifact was not there yet) is retried once when the block
    closes, delivered, and counted once (and logged); closing again delivers nothing twice."""
    late = tmp_path / "late.txt"
    caplog.set_level(logging.INFO, logger="lungseg.tracking")
    with ResilientRun.start(sqlite_uri, "cm", run_name="queued") as run:
        with pytest.warns(TrackingWarning, match="queued"):
            assert not run.log_artifact(late)
        assert not run.log_metrics({"after": 1.0}, step=1)  # queued behind it, in order (retry interval)
        late.write_text("now here", encoding="utf-8")
    assert run.summary() == {"lost_logging": 0, "lost_calls": [], "logging_failures": 1, "flushed_calls": 3}
    run.close()
    run.__exit__(None, None, None)
    assert run.flushed == 3  # log_artifact, log_metrics, end_run(FINISHED): each once
    assert [r.getMessage() for r in caplog.records if r.name == "lungseg.tracking"] == [
        "MLflow logging recovered: 3 queued call(s) delivered"
    ]
    client = MlflowClient(sqlite_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics["after"] == 1.0
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["late.txt"]


@pytest.mark.slow
def test_context_manager_reports_what_could_not_be_delivered(sqlite_uri, tmp_path):
    with pytest.warns(TrackingWarning, match="could not be delivered"):
        with ResilientRun.start(sqlite_uri, "cm", run_name="lost") as run:
            with pytest.warns(TrackingWarning, match="queued"):
                run.log_artifact(tmp_path / "never.txt")
    summary = run.summary()
    assert summary["lost_logging"] == 2 and summary["logging_failures"] == 2
    assert summary["lost_calls"][0].startswith("log_artifact(never.txt → .): ")
    assert summary["lost_calls"][1].startswith("end_run(FINISHED): queued behind earlier failures")
    assert MlflowClient(sqlite_uri).get_run(run.run_id).info.status == "RUNNING"  # its end was lost too


@pytest.mark.slow
def test_http_retries_are_shortened_while_a_run_is_open_and_restored_after(sqlite_uri, monkeypatch):
    """MLflow's retry variables are set where the user did not set them, for as long as the run is open,
    and put back exactly when it closes (the user's value untouched throughout)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(key, raising=False)
    with ResilientRun.start(sqlite_uri, "cm", run_name="env") as run:
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert run._closed
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def _mlflow_state() -> tuple:
    import mlflow

    return (
        mlflow.get_tracking_uri(),
        mlflow.get_registry_uri(),
        mlflow.tracking.is_tracking_uri_set(),
        os.environ.get("MLFLOW_TRACKING_URI"),
        os.environ.get("MLFLOW_REGISTRY_URI"),
    )


@pytest.mark.parametrize("before", ["nothing", "variables", "set_in_process", "set_then_variable_removed"])
@pytest.mark.parametrize("raised", [False, True])
def test_scoped_tracking_uri_restores_mlflow_exactly(before, raised, tmp_path, monkeypatch):
    """Inside the block MLflow's fluent API (and a subprocess, through the variables) uses the URI given;
    afterwards — also after an exception — what MLflow answers and the variables are as before, however
    the URI had been chosen: not at all, by the variables, by ``mlflow.set_tracking_uri``/``set_registry_uri``
    (which also set the variables), or by those calls with the variables removed since."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    try:
        if before == "variables":
            monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env/tracking.db")
            monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:////env/registry.db")
        elif before.startswith("set_"):
            mlflow.set_tracking_uri("sqlite:////set/tracking.db")
            mlflow.set_registry_uri("sqlite:////set/registry.db")
            if before == "set_then_variable_removed":  # not monkeypatch: it would put them back afterwards
                del os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_REGISTRY_URI"]
        expected = _mlflow_state()
        inside = "sqlite:////scoped/mlflow.db"
        with pytest.raises(ValueError) if raised else contextlib.nullcontext():
            with scoped_tracking_uri(inside):
                assert mlflow.get_tracking_uri() == inside and mlflow.get_registry_uri() == inside
                assert os.environ["MLFLOW_TRACKING_URI"] == inside
                if raised:
                    raise ValueError("inside the block")
        assert _mlflow_state() == expected
    finally:  # as the test found it: no globals, no variables (monkeypatch puts back the caller's values)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)


def test_a_queued_experiments_paths_are_recorded_as_in_its_own_tree(tmp_path, monkeypatch):
    """A queued DVC experiment's run carried data_dir=.dvc/tmp/exps/tmp…/data/processed/medseg, a folder DVC deletes."""
    from lungseg.tracking import portable_path

    (tmp_path / ".git").mkdir()
    (tmp_path / ".dvc").mkdir()
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12"
    (workspace / "data" / "processed" / "medseg").mkdir(parents=True)
    monkeypatch.chdir(workspace)
    assert portable_path(workspace / "data" / "processed" / "medseg") == "data/processed/medseg"
    temp = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "tmptu_j0f_f"  # dvc exp run --temp
    (temp / "data").mkdir(parents=True)
    monkeypatch.chdir(temp)
    assert portable_path(temp / "data" / "processed") == "data/processed"
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "data") == "data"
