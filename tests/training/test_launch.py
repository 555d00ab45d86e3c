"""``lungseg train --nproc-per-node N`` (:mod:`lungseg.training.launch`): lungseg starts the torchrun group
itself, so a rank killed with SIGKILL ends the command with one ``error:`` line (not torchrun's
``ChildFailedError`` traceback), a non-zero exit, the MLflow run FAILED and ``<output>.partial``
resumable; a normal run trains exactly as plain ``torchrun`` does. CPU (gloo), 2 ranks of one thread,
U-Net base 4 on the 32² sample."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.cli import main
from lungseg.errors import ConfigError
from lungseg.training.distributed import Distributed
from lungseg.training.launch import (
    BROKEN,
    Failure,
    Group,
    RankOutput,
    describe_failure,
    finished_output,
    launch,
    log_dir,
    mark_run,
    outcome_message,
    root_cause,
)
from train_helpers import cli_env, lungseg_cmd, write_params


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# ------------------------------------------------------------------------------------------ the options
def test_bad_group_options_are_one_line_errors(tmp_path, capsys, monkeypatch):
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path))
    (tmp_path / "data").mkdir()
    base = ["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--params", str(params)]
    assert main([*base, "--nproc-per-node", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --nproc-per-node 0: expected a positive number of processes on this node (one per GPU)\n"
    assert main([*base, "--nnodes", "2"]) == 2  # a group option alone: plain training would ignore it
    assert capsys.readouterr().err == "error: --nnodes: only with --nproc-per-node (lungseg starts the group)\n"
    assert not (tmp_path / "out").exists() and not log_dir(tmp_path / "out").exists()

    for group, match in [
        (Group(2, nnodes=0), r"--nnodes 0: expected a positive number"),
        (Group(2, nnodes=2, node_rank=2, master_addr="h"), r"--node-rank 2: expected 0 … 1 \(--nnodes 2\)"),
        (Group(2, nnodes=2), r"--nnodes 2: name node 0's address with --master-addr"),
        (Group(2, master_port=0), r"--master-port 0: expected a TCP port"),
    ]:
        with pytest.raises(ConfigError, match=match):
            group.check()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="already one of a torchrun group"):
        Group(2).check()  # a rank must not start a group of its own


def test_torchrun_options():
    ranks = Path("/o.torchrun/ranks")
    assert Group(2).torchrun_args(ranks) == [
        "--nproc-per-node=2",
        "--redirects=3",
        "--log-dir=/o.torchrun/ranks",
        "--standalone",
    ]
    assert Group(4, nnodes=2, node_rank=1, master_addr="10.0.0.1").torchrun_args(ranks)[3:] == [
        "--nnodes=2",
        "--node-rank=1",
        "--master-addr=10.0.0.1",
        "--master-port=29500",
    ]
    assert Group(4, nnodes=2).world_size == 8
    assert log_dir(Path("models/m")) == Path("models/m.torchrun")  # beside <output> and <output>.partial


# ------------------------------------------------------------------------------------- the one line
def test_the_rank_that_failed_first_is_named_not_its_consequences():
    """torchrun lists the failures it saw first (before it stopped the others with SIGTERM) first; a
    rank whose error says the group broke, or one stopped by SIGTERM after another failed, is a consequence."""
    broke = {0: [f"rank 0/2: {BROKEN} — another process failed or was killed …"]}
    # rank 1 SIGKILLed; rank 0 had already exited with the broken-group error (listed first, same poll)
    failures = [Failure(0, 0, 2), Failure(1, 1, -9, "SIGKILL")]
    assert root_cause(failures, broke) == failures[1]
    assert describe_failure(failures[1], 2, broke) == ("rank 1/2: killed by SIGKILL (exit -9)", 137)
    # rank 0 SIGKILLed; torchrun then stopped rank 1 with SIGTERM (lungseg's handler: exit 143)
    failures = [Failure(0, 0, -9, "SIGKILL"), Failure(1, 1, 143)]
    assert root_cause(failures, {}) == failures[0]
    failures = [Failure(1, 1, -9, "SIGKILL"), Failure(0, 0, -15, "SIGTERM")]
    assert root_cause(failures, {}) == failures[0]
    # a SIGTERM from outside (the first failure) is the cause
    failures = [Failure(1, 1, -15, "SIGTERM"), Failure(0, 0, 2)]
    assert root_cause(failures, broke) == failures[0]
    assert describe_failure(failures[0], 2, broke) == ("rank 1/2: killed by SIGTERM (exit -15)", 143)
    # an ordinary lungseg error of one rank: its own line and exit code, once
    own = {1: ["data/processed: missing (run lungseg preprocess)"], 0: ["rank 0/2: " + BROKEN + " …"]}
    failures = [Failure(0, 0, 2), Failure(1, 1, 2)]
    assert root_cause(failures, own) == failures[1]
    assert describe_failure(failures[1], 2, own) == ("rank 1/2: data/processed: missing (run lungseg preprocess)", 2)
    # every rank a consequence (the peer that died is on another node): the first, its prefix not doubled
    failures = [Failure(4, 0, 2), Failure(5, 1, -15, "SIGTERM")]
    text, code = describe_failure(
        root_cause(failures, {0: [f"rank 4/8: {BROKEN} …"]}), 8, {0: [f"rank 4/8: {BROKEN} …"]}
    )
    assert (text, code) == (f"rank 4/8: {BROKEN} …", 2)
    # a bug (a traceback, no error line)
    assert describe_failure(Failure(0, 0, 1), 2, {}) == (
        "rank 0/2: exited with code 1 without an error line (its output is above)",
        1,
    )
    assert root_cause([], {}) is None


def test_the_broken_group_message_is_what_the_launcher_recognises():
    """:data:`BROKEN` must stay a part of ``Distributed.broken``'s message, or a consequence would be
    reported as the cause."""
    exc = Distributed(rank=1, world_size=2, backend="gloo").broken(RuntimeError("Connection reset by peer"))
    assert str(exc).startswith(f"rank 1/2: {BROKEN}")


def test_how_the_group_ended_without_a_rank_to_blame():
    group = Group(2)
    assert outcome_message({}, -15, signal.SIGINT, group, {}) == (
        "interrupted (SIGINT): the 2 process(es) on this node were stopped",
        130,
        "KILLED",
    )
    rdzv = {"error": "RendezvousTimeoutError: timed out"}
    assert outcome_message(rdzv, 1, None, group, {}) == ("torchrun: RendezvousTimeoutError: timed out", 2, "FAILED")
    assert (
        outcome_message({}, -9, None, group, {})[0]
        == "torchrun was killed by SIGKILL before reporting how the group ended"
    )
    failures = {"failures": [{"rank": 0, "local_rank": 0, "exitcode": -9, "signal": "SIGKILL"}]}
    assert outcome_message(failures, 1, None, group, {}) == ("rank 0/2: killed by SIGKILL (exit -9)", 137, "FAILED")


def test_rank_output_is_printed_line_by_line_and_error_lines_held_back(tmp_path):
    """The ranks' files under torchrun's --log-dir are printed as they grow (a line is printed once it is
    complete); ``error:`` lines on stderr are kept for the one line the launcher prints."""
    root = tmp_path / "ranks"
    files = {(r, s): root / "run_x" / "attempt_0" / str(r) / f"{s}.log" for r in (0, 1) for s in ("stdout", "stderr")}
    for f in files.values():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    ranks = RankOutput(root, out, err)
    files[0, "stderr"].write_text("epoch 1/3  loss 1.0\nepoch 2/3", encoding="utf-8")
    files[1, "stderr"].write_text("error: rank 1/2: the process group broke …\n", encoding="utf-8")
    ranks.poll()
    assert err.getvalue() == "epoch 1/3  loss 1.0\n" and out.getvalue() == ""
    with open(files[0, "stderr"], "a", encoding="utf-8") as fh:
        fh.write("  loss 0.9\nerror: loss became nan\n")
    files[0, "stdout"].write_text("trained 3 epoch(s)\n  MLflow run abc", encoding="utf-8")
    ranks.poll(final=True)  # the last, unterminated line too
    assert err.getvalue() == "epoch 1/3  loss 1.0\nepoch 2/3  loss 0.9\n"
    assert out.getvalue() == "trained 3 epoch(s)\n  MLflow run abc\n"
    assert ranks.errors == {0: ["loss became nan"], 1: ["rank 1/2: the process group broke …"]}


@pytest.mark.slow  # an MLflow sqlite store: seconds to create
def test_the_run_left_running_is_marked(tmp_path):
    from lungseg.artifacts.run_file import RunFile

    uri = _uri(tmp_path)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "mlruns").as_uri())
    runs = [client.create_run(exp).info.run_id for _ in range(2)]
    out = tmp_path / "m"
    assert mark_run(out, time.time(), "FAILED") == "no MLflow run was started"
    (tmp_path / "m.partial").mkdir()
    RunFile(run_id=runs[0], tracking_uri=uri, status="running").to_file(tmp_path / "m.partial" / "mlflow_run.json")
    started = time.time() - 60
    assert mark_run(out, started, "FAILED") == f"MLflow run {runs[0]} marked FAILED"
    assert client.get_run(runs[0]).info.status == "FAILED"
    assert mark_run(out, started, "FAILED") == f"MLflow run {runs[0]} was already FAILED"
    # a run file older than this launch names an earlier start's run, killed: KILLED
    RunFile(run_id=runs[1], tracking_uri=uri, status="running").to_file(tmp_path / "m.partial" / "mlflow_run.json")
    assert mark_run(out, time.time() + 60, "FAILED") == f"MLflow run {runs[1]} marked KILLED"


def _finished_output(tmp_path: Path, uri: str, *, run_status: str = "FINISHED", final: bool = True) -> str:
    """What rank 0's :meth:`Writer.finish` leaves: ``<tmp>/m`` with lungseg's marker and its final run file;
    the run's id."""
    from lungseg.artifacts.run_file import RunFile
    from lungseg.io import MARKER, marker_text

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("t") or client.get_experiment(
        client.create_experiment("t", artifact_location=(tmp_path / "mlruns").as_uri())
    )
    run_id = client.create_run(exp.experiment_id).info.run_id
    if run_status != "RUNNING":
        client.set_terminated(run_id, status=run_status)
    out = tmp_path / "m"
    out.mkdir(exist_ok=True)
    (out / MARKER).write_text(marker_text(), encoding="utf-8")
    RunFile(run_id=run_id, tracking_uri=uri, status=None if final else "running").to_file(out / "mlflow_run.json")
    return run_id


def _fake_group(monkeypatch, failures: list[dict], during=None) -> None:
    """The agent replaced: ``during()`` runs while "the group runs" (after the launch started), then the
    agent reports ``failures`` as torchrun's ChildFailedError would."""
    import lungseg.training.launch as launch_module

    def supervise(cmd, log_path, ranks):
        if during is not None:
            during()
        (log_path.parent / "result.json").write_text(json.dumps({"failures": failures}), encoding="utf-8")
        return 1, None

    monkeypatch.setattr(launch_module, "supervise", supervise)


KILLED_1 = [{"rank": 1, "local_rank": 1, "exitcode": -9, "signal": "SIGKILL"}]


@pytest.mark.slow  # an MLflow sqlite store: seconds to create
def test_a_rank_killed_after_rank_0_finished_is_a_warning_and_a_success(tmp_path, monkeypatch, caplog):
    """#20 F6: rank 1 killed during its shutdown, after rank 0 had put the output in place and ended its
    run FINISHED: the training is complete, so exit 0 with one warning naming the output and the run (not
    "no MLflow run was started"), and ``<output>.torchrun`` removed as on any success."""
    uri, out = _uri(tmp_path), tmp_path / "m"
    ids: list[str] = []
    _fake_group(monkeypatch, KILLED_1, during=lambda: ids.append(_finished_output(tmp_path, uri)))
    with caplog.at_level("WARNING", logger="lungseg.training.launch"):
        assert launch(Group(2), ["--output", str(out)], out) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "lungseg: warning: rank 1/2: killed by SIGKILL (exit -9) — after rank 0 had finished: "
        f"{out} is complete and MLflow run {ids[0]} FINISHED (the workers write nothing; nothing was lost)"
    ]
    assert not log_dir(out).exists()
    assert finished_output(out, time.time() - 60) == ids[0]
    assert finished_output(out, time.time() + 60) is None  # an output older than the launch is not its result


@pytest.mark.slow
def test_an_incomplete_output_is_still_an_error_naming_the_run_it_marked(tmp_path, monkeypatch):
    """#20 F6, the other cases: the output's run file is an earlier run's (older than this launch), or this
    launch's but its run is not FINISHED: an error, the log folder kept; the run marked is this launch's —
    the output's when ``.partial`` has none — and "no MLflow run was started" only when there is none."""
    from lungseg.errors import TrainingError

    uri, out = _uri(tmp_path), tmp_path / "m"
    earlier = _finished_output(tmp_path, uri)
    past = time.time() - 3600
    os.utime(out / "mlflow_run.json", (past, past))
    _fake_group(monkeypatch, KILLED_1)
    with pytest.raises(TrainingError) as caught:
        launch(Group(2), ["--output", str(out)], out)
    assert str(caught.value) == (
        "rank 1/2: killed by SIGKILL (exit -9); no MLflow run was started; "
        f"torchrun's log: {log_dir(out) / 'torchrun.log'}"
    )
    assert caught.value.exit_code == 137 and log_dir(out).is_dir()
    assert mlflow.MlflowClient(uri).get_run(earlier).info.status == "FINISHED"  # an earlier run: untouched

    ids: list[str] = []  # rank 0 put the output in place but its run stayed RUNNING (it was killed then)
    _fake_group(monkeypatch, KILLED_1, during=lambda: ids.append(_finished_output(tmp_path, uri, run_status="RUNNING")))
    with pytest.raises(TrainingError) as caught:
        launch(Group(2), ["--output", str(out)], out)
    assert str(caught.value) == (
        f"rank 1/2: killed by SIGKILL (exit -9); MLflow run {ids[0]} of {out} marked FAILED; "
        f"torchrun's log: {log_dir(out) / 'torchrun.log'}"
    )
    assert mlflow.MlflowClient(uri).get_run(ids[0]).info.status == "FAILED"


def test_under_torchrun_sigterm_ends_a_rank_through_systemexit(monkeypatch):
    """torchrun stops the other processes with SIGTERM when one fails: a rank turns it into SystemExit(143),
    so rank 0's ``with run:`` block ends its MLflow run KILLED instead of leaving it RUNNING."""
    from lungseg.cli import train as cli_train

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.delenv("RANK", raising=False)
    assert cli_train._stop_on_sigterm() is False and signal.getsignal(signal.SIGTERM) == previous
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    try:
        assert cli_train._stop_on_sigterm() is True and signal.getsignal(signal.SIGTERM) != previous
        with pytest.raises(SystemExit) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode
        assert stopped.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second SIGTERM ends the process at once
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------ real groups
def _launcher(params: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = lungseg_cmd("train", "--data", str(data), "--output", str(out), "--params", str(params))
    return subprocess.Popen(
        [*cmd, "--nproc-per-node", "2", *extra],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text(encoding="utf-8").split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _wait_for_epoch(proc: subprocess.Popen, ckpt: Path, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= 1:
            return
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    pytest.fail(f"no checkpoint of epoch 1 while the group ran (exit {proc.returncode}): {out}\n{err}")


def _status(tmp_path: Path, run_file: Path) -> tuple[str, str]:
    run_id = json.loads(run_file.read_text(encoding="utf-8"))["run_id"]
    return run_id, mlflow.MlflowClient(_uri(tmp_path)).get_run(run_id).info.status


@pytest.mark.slow
@pytest.mark.integration
def test_the_launcher_trains_as_plain_torchrun(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=2, batch_size=4)
    plain = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        + ["-m", "lungseg.cli", "train", "--data", str(tiny_data), "--output", str(tmp_path / "plain")]
        + ["--params", str(params)],
        env=cli_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
    )
    assert plain.returncode == 0, plain.stderr
    ours = _launcher(params, tiny_data, tmp_path / "ours")
    out, err = ours.communicate(timeout=600)
    assert ours.returncode == 0, err
    assert "rank 1: trained 2 epoch(s) as a DDP worker" in out and "trained 2 epoch(s) in" in out
    assert err.count("epoch 2/2") == 1 and "error:" not in err and "Traceback" not in err
    assert not log_dir(tmp_path / "ours").exists()  # the same files as plain torchrun leaves
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain").iterdir()
    )
    a, b = load_checkpoint(tmp_path / "ours" / "checkpoint.pt"), load_checkpoint(tmp_path / "plain" / "checkpoint.pt")
    assert a["distributed"] == b["distributed"] == {"world_size": 2, "sync_batchnorm": False}
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in b["history"]
    ]
    for key, value in b["model_state"].items():
        assert torch.equal(a["model_state"][key], value), key
    assert _status(tmp_path, tmp_path / "ours" / "mlflow_run.json")[1] == "FINISHED"


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_of_a_rank_is_one_line_the_run_failed_and_resumable(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=8, batch_size=4)
    out_dir, partial = tmp_path / "m", tmp_path / "m.partial"
    proc = _launcher(params, tiny_data, out_dir)
    _wait_for_epoch(proc, partial / "checkpoint.pt")
    group = _descendants(proc.pid)
    rank0 = _rank_pid(proc.pid, 0)
    assert rank0 is not None, group
    os.kill(rank0, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    run_id, status = _status(tmp_path, partial / "mlflow_run.json")
    log_path = log_dir(out_dir) / "torchrun.log"
    assert errors[0] == (
        f"error: rank 0/2: killed by SIGKILL (exit -9); MLflow run {run_id} marked FAILED; "
        f"--resume continues {partial}; torchrun's log: {log_path}"
    )
    assert err.rstrip().endswith(errors[0])  # the last line
    assert "Traceback" not in err + out and "ChildFailedError" not in err + out
    assert "ChildFailedError" in log_path.read_text(encoding="utf-8") or "exitcode: -9" in log_path.read_text(
        encoding="utf-8"
    )  # torchrun's own report is kept in its log
    assert status == "FAILED"
    assert not _alive(group)  # no rank left training
    stopped_at = load_checkpoint(partial / "checkpoint.pt")["epoch"]
    assert 1 <= stopped_at < 8 and not out_dir.exists()

    resumed = _launcher(params, tiny_data, out_dir, "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"resuming {partial / 'checkpoint.pt'} after epoch {stopped_at}" in err and "error:" not in err
    assert load_checkpoint(out_dir / "checkpoint.pt")["epoch"] == 8
    assert _status(tmp_path, out_dir / "mlflow_run.json") == (run_id, "FINISHED")  # the same run, finished


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_of_a_worker_after_rank_0_finished_is_a_success_with_a_warning(tmp_path, tiny_data):
    """#20 F6 with a real group: rank 1 is stopped (SIGSTOP) as soon as rank 0 has put the output in place,
    then killed (SIGKILL) — it dies during its shutdown, as a ``kill -9`` after "rank 0 wrote …" does."""
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1, batch_size=4)
    out_dir = tmp_path / "m"
    proc = _launcher(params, tiny_data, out_dir)
    rank1, deadline = None, time.time() + 400
    while time.time() < deadline and proc.poll() is None and not (out_dir / "mlflow_run.json").is_file():
        rank1 = rank1 or _rank_pid(proc.pid, 1)
        time.sleep(0.002)
    assert rank1 is not None and (out_dir / "mlflow_run.json").is_file(), proc.communicate(timeout=60)
    if not _alive([rank1]):
        proc.communicate(timeout=120)
        pytest.skip("rank 1 had already exited when rank 0's output appeared (nothing left to kill)")
    os.kill(rank1, signal.SIGSTOP)
    os.kill(rank1, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    run_id, status = _status(tmp_path, out_dir / "mlflow_run.json")
    assert status == "FINISHED" and "error:" not in err and "Traceback" not in err + out
    warnings = [line for line in err.splitlines() if "warning:" in line and "after rank 0 had finished" in line]
    assert warnings == [
        "lungseg: warning: rank 1/2: killed by SIGKILL (exit -9) — after rank 0 had finished: "
        f"{out_dir} is complete and MLflow run {run_id} FINISHED (the workers write nothing; nothing was lost)"
    ], err
    assert not log_dir(out_dir).exists() and not (tmp_path / "m.partial").exists()
    assert load_checkpoint(out_dir / "checkpoint.pt")["epoch"] == 1


@pytest.mark.slow
@pytest.mark.integration
def test_a_rank_error_is_that_rank_line_not_a_traceback(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=1, batch_size=3)  # does not split over 2
    proc = _launcher(params, tiny_data, tmp_path / "m")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    rank = errors[0][len("error: rank ") : len("error: rank ") + 1]  # both ranks refuse it: the first torchrun saw
    assert rank in ("0", "1") and errors[0] == (
        f"error: rank {rank}/2: train.batch_size: 3 does not split over 2 processes (WORLD_SIZE): it is the global "
        "batch, each process takes batch_size / WORLD_SIZE; use a multiple of 2; no MLflow run was started; "
        f"torchrun's log: {log_dir(tmp_path / 'm') / 'torchrun.log'}"
    )
    assert "Traceback" not in err + out


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_of_the_launcher_stops_the_group_and_the_run_is_killed(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=30, batch_size=4)
    partial = tmp_path / "m.partial"
    proc = _launcher(params, tiny_data, tmp_path / "m")
    _wait_for_epoch(proc, partial / "checkpoint.pt")
    group = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: interrupted (SIGTERM): the 2 process(es) on this node were stopped; MLflow run "
    ), err
    assert "Traceback" not in err + out
    assert _status(tmp_path, partial / "mlflow_run.json")[1] == "KILLED"  # rank 0 ended it so (SIGTERM → SystemExit)
    assert not _alive(group)
