"""``lungseg train --nproc-per-node N``: lungseg starts the DDP group itself, so that a process that
fails or is killed ends the command with one ``error:`` line, the MLflow run marked and
``<output>.partial`` kept for ``--resume`` (see ``docs/training.md``, "Multi-GPU and multi-node").

The processes::

    lungseg train --nproc-per-node N …    the launcher (:func:`launch`)
      └─ the agent: torchrun's own code    (:func:`agent_main`: :func:`torch.distributed.run.run`, the same
         │                                  options and rendezvous as ``torchrun``), in a session of its own;
         │                                  its output → ``<output>.torchrun/torchrun.log``
         └─ N ranks: python -u -m lungseg.cli train …   their stdout/stderr → files under
                                            ``<output>.torchrun/ranks/`` (torchrun's ``--redirects 3``)

The launcher prints the ranks' lines as they come (it tails their files) except their ``error:``
lines, which it holds back. When the group ends badly it prints one line for the rank that failed
first — its own error line, or ``killed by SIGKILL (exit -9)``, or its exit code — never torchrun's
traceback; a rank whose error says the process group broke, or that torchrun stopped with SIGTERM
after another failed, is a consequence, not the cause (:func:`root_cause`). It marks the MLflow run of
``<output>.partial/mlflow_run.json`` FAILED (KILLED when the launcher itself was interrupted), names
torchrun's log and exits non-zero. Ctrl-C or SIGTERM of the launcher is forwarded to the agent, which
stops the ranks as torchrun does (the same signal, SIGKILL after 30 s). The agent dies with the launcher
(``PR_SET_PDEATHSIG``), so a killed launcher leaves no group training on. On success the log folder is
removed: the files are those of a plain ``torchrun`` run.

A rank that fails only after rank 0 finished — the output in place with its final ``mlflow_run.json`` of
this launch, its MLflow run FINISHED (:func:`finished_output`), e.g. a worker killed during its shutdown —
has cost nothing: that is a success, with one ``lungseg: warning:`` line naming the rank, the output and
the run, exit 0, the log folder removed as on any success. When the output is not complete, the run
marked is the one of this launch: ``.partial``'s, else the output's (rank 0 got that far), and "no MLflow
run was started" is said only when neither exists.

Module-level imports are the standard library only: the agent runs this file by path
(:data:`AGENT_CODE`) without importing :mod:`lungseg.training`, whose import (torch, MLflow,
matplotlib) the launcher has already paid.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

#: what a rank's error says when a peer vanished (``Distributed.broken``): a consequence, not a cause
BROKEN = "the process group broke"
#: how often the launcher reads the ranks' files, seconds
POLL_S = 0.1
#: the agent's command: this file run by path (no import of the ``lungseg.training`` package)
AGENT_CODE = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
#: exit codes of the launcher itself: a rank's own (a lungseg error: 2), else these
EXIT_AGENT = 2


@dataclass(frozen=True)
class Group:
    """Where the processes run: ``nproc_per_node`` on each of ``nnodes`` nodes (this one ``node_rank``);
    one node without ``master_addr`` is torchrun's ``--standalone``."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def check(self) -> None:
        """Bad values as one-line :class:`~lungseg.errors.ConfigError` naming the option, before any work."""
        from lungseg.errors import ConfigError

        if os.environ.get("RANK") is not None and os.environ.get("WORLD_SIZE") is not None:
            raise ConfigError(
                "--nproc-per-node: this process is already one of a torchrun group (RANK and WORLD_SIZE are set); "
                "start the group either with torchrun or with lungseg train --nproc-per-node, not both"
            )
        if self.nproc_per_node < 1:
            raise ConfigError(
                f"--nproc-per-node {self.nproc_per_node}: expected a positive number of processes on this node "
                "(one per GPU)"
            )
        if self.nnodes < 1:
            raise ConfigError(f"--nnodes {self.nnodes}: expected a positive number of nodes")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank {self.node_rank}: expected 0 … {self.nnodes - 1} (--nnodes {self.nnodes})")
        if self.nnodes > 1 and not self.master_addr:
            raise ConfigError(f"--nnodes {self.nnodes}: name node 0's address with --master-addr")
        if not 0 < self.master_port < 65536:
            raise ConfigError(f"--master-port {self.master_port}: expected a TCP port (1 … 65535)")

    def torchrun_args(self, ranks_dir: Path) -> list[str]:
        """torchrun's options for this group, the ranks' output redirected into ``ranks_dir``."""
        args = [f"--nproc-per-node={self.nproc_per_node}", "--redirects=3", f"--log-dir={ranks_dir}"]
        if self.nnodes == 1 and not self.master_addr:
            return [*args, "--standalone"]
        return [
            *args,
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
        ]


@dataclass(frozen=True)
class Failure:
    """One rank that ended badly, as torchrun observed it (``signal``: ``SIGKILL``…, None for an exit code)."""

    rank: int
    local_rank: int
    exitcode: int
    signal: str | None = None

    @property
    def sigterm(self) -> bool:
        """Stopped by SIGTERM — what torchrun sends the others once one failed (143: lungseg's handler's exit)."""
        return self.signal == "SIGTERM" or self.exitcode == 128 + signal.SIGTERM


def log_dir(output_dir: Path) -> Path:
    """``<output>.torchrun``: torchrun's log and the ranks' output, beside ``<output>`` and ``<output>.partial``
    (never inside ``.partial``, which a fresh start discards and a finished run renames)."""
    return output_dir.parent / f"{output_dir.name}.torchrun"


class RankOutput:
    """The ranks' ``stdout.log``/``stderr.log`` under torchrun's ``--log-dir`` (``<run>/attempt_<n>/<local
    rank>/``), printed line by line as they grow; a rank's ``error: …`` lines on stderr are held back in
    :attr:`errors` (local rank → messages) for the one line the launcher prints."""

    def __init__(self, root: Path, out: TextIO | None = None, err: TextIO | None = None):
        self.root, self.out, self.err = root, out, err
        self.offsets: dict[Path, int] = {}
        self.pending: dict[Path, bytes] = {}
        self.errors: dict[int, list[str]] = {}

    def poll(self, final: bool = False) -> None:
        """Print what the files gained since the last call (``final``: also an unterminated last line)."""
        for path in sorted(self.root.glob("*/attempt_*/*/std*.log")):
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets.get(path, 0))
                    data = fh.read()
            except OSError:
                continue
            self.offsets[path] = self.offsets.get(path, 0) + len(data)
            *lines, rest = (self.pending.pop(path, b"") + data).split(b"\n")
            if final and rest:
                lines, rest = [*lines, rest], b""
            if rest:
                self.pending[path] = rest
            for raw in lines:
                self._emit(int(path.parent.name), path.stem, raw.decode("utf-8", "replace").rstrip("\r"))

    def _emit(self, local_rank: int, stream: str, line: str) -> None:
        if stream == "stderr" and line.startswith("error: "):
            self.errors.setdefault(local_rank, []).append(line[len("error: ") :])
            return
        target = (self.err or sys.stderr) if stream == "stderr" else (self.out or sys.stdout)
        print(line, file=target, flush=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The agent gets SIGTERM when the launcher dies (Linux ``prctl(PR_SET_PDEATHSIG)``): it then stops
    the ranks as torchrun does on SIGTERM."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def supervise(cmd: list[str], log_path: Path, ranks: RankOutput) -> tuple[int, int | None]:
    """Run the agent ``cmd`` (output to ``log_path``), print the ranks' lines until it ends; SIGINT and
    SIGTERM of this process are forwarded to it. ``(its exit code, the signal this process got or None)``."""
    received: list[int] = []
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches the launcher only; it forwards it once
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def forward(signum, _frame) -> None:
        received.append(signum)
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None:
            ranks.poll()
            time.sleep(POLL_S)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    ranks.poll(final=True)
    return proc.returncode, (received[0] if received else None)


def root_cause(failures: list[Failure], errors: dict[int, list[str]]) -> Failure | None:
    """The failure that ended the group: the first (in the order torchrun observed them) that is not a
    consequence of another — a rank whose error says the process group broke, or one stopped by SIGTERM
    after another had failed (torchrun ends the others so). When all are, the first."""
    for i, failure in enumerate(failures):
        broke = any(BROKEN in message for message in errors.get(failure.local_rank, []))
        if not broke and not (i > 0 and failure.sigterm):
            return failure
    return failures[0] if failures else None


def describe_failure(failure: Failure, world_size: int, errors: dict[int, list[str]]) -> tuple[str, int]:
    """``(the message, the exit code)`` for the rank that ended the group: its own error line (exit code
    its own), else the signal that killed it (128 + the signal's number) or its exit code."""
    where = f"rank {failure.rank}/{world_size}"
    own = errors.get(failure.local_rank)
    if own:
        message = own[-1]
        text = message if message.startswith(f"{where}:") else f"{where}: {message}"
        return text, failure.exitcode if failure.exitcode > 0 else EXIT_AGENT
    if failure.signal:
        number = getattr(signal.Signals, failure.signal, None)
        return f"{where}: killed by {failure.signal} (exit {failure.exitcode})", 128 + int(number or 0)
    return f"{where}: exited with code {failure.exitcode} without an error line (its output is above)", (
        failure.exitcode if 0 < failure.exitcode < 256 else EXIT_AGENT
    )


def read_outcome(path: Path) -> dict:
    """The agent's record of how the group ended (``{}`` when it wrote none: it was killed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def outcome_message(
    outcome: dict, returncode: int, received: int | None, group: Group, errors: dict[int, list[str]]
) -> tuple[str, int, str]:
    """``(message, exit code, MLflow status)`` of a group that did not end well."""
    if received is not None:
        name = signal.Signals(received).name
        return (
            f"interrupted ({name}): the {group.nproc_per_node} process(es) on this node were stopped",
            128 + received,
            "KILLED",
        )
    failures = [Failure(**f) for f in outcome.get("failures", [])]
    failure = root_cause(failures, errors)
    if failure is not None:
        text, code = describe_failure(failure, group.world_size, errors)
        return text, code, "FAILED"
    if outcome.get("error"):
        return f"torchrun: {outcome['error']}", EXIT_AGENT, "FAILED"
    if outcome.get("signal"):
        return f"torchrun was stopped by {outcome['signal']}", 128 + int(signal.Signals[outcome["signal"]]), "KILLED"
    how = (
        f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"ended with exit code {returncode}"
    )
    return f"torchrun {how} before reporting how the group ended", EXIT_AGENT, "FAILED"


def _written_since(path: Path, started: float) -> bool:
    """``path`` is a file written by this launch (not one an earlier run left)."""
    return path.is_file() and path.stat().st_mtime >= started


def run_status(tracking_uri: str | None, run_id: str) -> str | None:
    """The MLflow status of ``run_id`` (``FINISHED``…), ``None`` when the store cannot tell (never raises)."""
    if not tracking_uri:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from lungseg.tracking import short_http_retries

    with short_http_retries():
        try:
            return str(MlflowClient(tracking_uri).get_run(run_id).info.status)
        except (MlflowException, OSError):
            return None


def finished_output(output_dir: Path, started: float) -> str | None:
    """The MLflow run id when rank 0 of this launch finished (:meth:`lungseg.training.loop.Writer.finish`):
    ``output_dir`` in place with lungseg's marker and a final ``mlflow_run.json`` (no ``status: running``)
    written since ``started``, whose run is FINISHED; else ``None``. A rank that fails after that (killed
    during its shutdown) has lost nothing: the workers write nothing and rank 0 has written everything."""
    from lungseg.artifacts.run_file import RUN_FILE, RunFile
    from lungseg.errors import DataError
    from lungseg.io import MARKER

    path = output_dir / RUN_FILE
    if not (output_dir / MARKER).is_file() or not _written_since(path, started):
        return None
    try:
        run = RunFile.from_file(path)
    except DataError:
        return None
    if run.status is not None or run_status(run.resolved_tracking_uri(), run.run_id) != "FINISHED":
        return None
    return run.run_id


def mark_run(output_dir: Path, started: float, status: str) -> str:
    """Mark the MLflow run of this launch ``status`` when it is still RUNNING; what was done, for the
    message. The run is that of ``<output>.partial/mlflow_run.json`` (one older than this launch names an
    earlier, killed run: KILLED), else — rank 0 got as far as putting the output in place — that of
    ``<output>/mlflow_run.json`` written by this launch; with neither, no run was started."""
    from lungseg.artifacts.run_file import RUN_FILE, RunFile
    from lungseg.errors import DataError
    from lungseg.tracking import mark_stale_run
    from lungseg.training.rundir import work_dir

    path, where = work_dir(output_dir) / RUN_FILE, ""
    if not path.is_file() and _written_since(output_dir / RUN_FILE, started):
        path, where = output_dir / RUN_FILE, f" of {output_dir}"
    try:
        run = RunFile.find(path)
    except DataError as exc:
        return f"the MLflow run could not be marked ({exc})"
    if run is None:
        return "no MLflow run was started"
    if not run.tracking_uri:
        return f"MLflow run {run.run_id}{where} not marked ({path} names no tracking store)"
    if path.stat().st_mtime < started:
        status = "KILLED"  # not this launch's run: one a killed earlier start left
    return f"MLflow run {run.run_id}{where} {mark_stale_run(run.resolved_tracking_uri(), run.run_id, status)}"


def _prepare_log_dir(folder: Path) -> None:
    """A fresh ``<output>.torchrun``: an earlier launch's replaced; a folder lungseg did not write refused
    (unless ``--overwrite``), in one line."""
    from lungseg.io import MARKER, check_output_dir, marker_text

    check_output_dir(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(marker_text(), encoding="utf-8")


def launch(group: Group, train_args: list[str], output_dir: Path) -> int:
    """Start the group (``train_args``: the ``lungseg train`` arguments every rank gets), print its
    lines, and return 0 when every rank succeeded; else raise one :class:`~lungseg.errors.TrainingError`
    (its ``exit_code`` the rank's own, ``128 + signal`` for a signal) after marking the MLflow run."""
    from lungseg.errors import TrainingError
    from lungseg.training.rundir import work_dir

    group.check()
    folder = log_dir(output_dir)
    _prepare_log_dir(folder)
    log_path, result = folder / "torchrun.log", folder / "result.json"
    cmd = [sys.executable, "-c", AGENT_CODE, str(Path(__file__).resolve()), "--result", str(result), "--"]
    cmd += [*group.torchrun_args(folder / "ranks"), "-m", "lungseg.cli", "train", *train_args]
    log.info(f"lungseg: starting {group.nproc_per_node} process(es) on this node with torchrun (log: {log_path})")
    started = time.time()
    ranks = RankOutput(folder / "ranks")
    returncode, received = supervise(cmd, log_path, ranks)
    outcome = read_outcome(result)
    if returncode == 0 and received is None and outcome.get("ok"):
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    message, code, status = outcome_message(outcome, returncode, received, group, ranks.errors)
    run_id = finished_output(output_dir, started)
    if run_id is not None:  # the training is complete: a success, with one warning line (exit 0)
        shutil.rmtree(folder, ignore_errors=True)
        log.warning(
            f"lungseg: warning: {message} — after rank 0 had finished: {output_dir} is complete and "
            f"MLflow run {run_id} FINISHED (the workers write nothing; nothing was lost)"
        )
        return 0
    parts = [message, mark_run(output_dir, started, status)]
    if (work_dir(output_dir) / "checkpoint.pt").is_file():
        parts.append(f"--resume continues {work_dir(output_dir)}")
    parts.append(f"torchrun's log: {log_path}")
    error = TrainingError("; ".join(parts))
    error.exit_code = code
    raise error


# ---------------------------------------------------------------------------------------------- the agent
def _failure_record(rank: int, failure) -> dict:
    """One ``ProcessFailure`` of torchrun as a JSON object (:class:`Failure`'s fields)."""
    return {
        "rank": int(rank),
        "local_rank": int(failure.local_rank),
        "exitcode": int(failure.exitcode),
        "signal": failure.signal_name() if failure.exitcode < 0 else None,
    }


def agent_main(argv: list[str]) -> int:
    """The agent: ``--result FILE -- <torchrun's arguments>``. Runs torchrun's own launcher
    (:func:`torch.distributed.run.run`: rendezvous, the ranks, their monitoring and shutdown) and writes
    how the group ended to ``FILE``: ``{"ok": true}``, ``{"failures": [...]}`` in the order torchrun
    observed them, ``{"signal": "SIGTERM"}`` when it was stopped, or ``{"error": "..."}``. Its own
    output (torchrun's log lines, a traceback) goes to its stderr: the launcher's log file."""
    if len(argv) < 3 or argv[0] != "--result" or argv[2] != "--":
        print("usage: launch.py --result FILE -- <torchrun arguments>", file=sys.stderr)
        return 2
    result, torchrun_argv = Path(argv[1]), argv[3:]
    import traceback

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(torchrun_argv))
        outcome: dict = {"ok": True}
    except ChildFailedError as exc:
        outcome = {"failures": [_failure_record(rank, f) for rank, f in exc.failures.items()]}
    except SignalException as exc:
        outcome = {"signal": signal.Signals(exc.sigval).name}
    except KeyboardInterrupt:  # SIGINT before torchrun installed its handlers
        outcome = {"signal": "SIGINT"}
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - rendezvous and argument errors come as many types
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        outcome = {"error": f"{type(exc).__name__}: {first}" if first else type(exc).__name__}
    tmp = result.with_name(f".{result.name}.tmp")
    tmp.write_text(json.dumps(outcome), encoding="utf-8")
    os.replace(tmp, result)
    return 0 if outcome.get("ok") else 1


__all__ = [
    "BROKEN",
    "Failure",
    "Group",
    "RankOutput",
    "agent_main",
    "describe_failure",
    "finished_output",
    "launch",
    "log_dir",
    "mark_run",
    "root_cause",
    "run_status",
]

if __name__ == "__main__":
    sys.exit(agent_main(sys.argv[1:]))
