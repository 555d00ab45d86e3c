#!/usr/bin/env python
"""Real local servers for lungseg: an S3-compatible store (SeaweedFS) and an MLflow tracking server.

Both bind to loopback only, on ports checked to be free beforehand and verified to be listening
afterwards (``weed mini`` silently moves to another port when one is busy, so we never trust it).
Credentials are never in code: they come from the environment (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``) or, when unset, are generated at random for this server.

Library use (what ``tests/servers.py`` does)::

    with S3Server(workdir / "s3") as s3, MlflowServer(workdir / "mlflow", s3=s3) as mlf:
        os.environ.update(s3.client_env()); mlflow.set_tracking_uri(mlf.uri)

Command line (see docs/pipeline.md)::

    python scripts/servers.py start [--dir .servers]   # detached; writes .servers/env.sh (mode 0600)
    source .servers/env.sh                              # MLFLOW_TRACKING_URI, AWS_*, endpoint
    python scripts/servers.py status
    python scripts/servers.py stop

Each server runs in its own session (``start_new_session=True``) and is stopped by signalling its
process group, then waiting for it to exit: SeaweedFS cannot restart on the same data folder until
the previous process has gone.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_BUCKET = "lungseg"


class ServerError(RuntimeError):
    """A server could not be started (the message names the log file)."""


# ----------------------------------------------------------------------------------------- ports
def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_is_listening(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_ports(n: int, *, also_free_offset: int | None = None, exclude: Iterable[int] = ()) -> list[int]:
    """``n`` distinct ports that are free now (and, with ``also_free_offset``, so is port+offset)."""
    taken = set(exclude)
    out: list[int] = []
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port in taken or port in out:
            continue
        if also_free_offset is not None:
            other = port + also_free_offset
            if other > 65535 or other in taken or not port_is_free(other):
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise ServerError(f"could not find {n} free ports on {HOST}")


def _wait(predicate, timeout: float, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode} while starting; see {log}:\n{_tail(log)}")
        if predicate():
            return
        time.sleep(0.25)
    raise ServerError(f"{what} did not become ready within {timeout:.0f}s; see {log}:\n{_tail(log)}")


def _tail(log: Path, n: int = 15) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen | None, pid: int | None = None, timeout: float = 20.0) -> None:
    """SIGTERM the process group, wait for the leader to exit, SIGKILL the group if it does not."""
    pid = proc.pid if proc is not None else pid
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                break
        elif not _pid_alive(pid):
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc is not None:
            proc.wait(timeout=10)
    # the group may still hold children for an instant (uvicorn workers): wait until it is empty
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _find_executable(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise ServerError(f"`{name}` not found (install the pinned requirements.txt)")
    return found


# -------------------------------------------------------------------------------------------- S3
@dataclass
class S3Server:
    """SeaweedFS (``weed mini``) serving S3 on loopback, with one bucket created through boto3."""

    workdir: Path
    bucket: str = DEFAULT_BUCKET
    access_key: str | None = None
    secret_key: str | None = None
    port: int | None = None
    startup_timeout: float = 60.0
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    ports: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        # credentials: explicit > environment > random for this server (never hard-coded)
        self.access_key = self.access_key or os.environ.get("AWS_ACCESS_KEY_ID") or "lsg" + secrets.token_hex(8)
        self.secret_key = self.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or secrets.token_urlsafe(24)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def log(self) -> Path:
        return self.workdir / "weed.log"

    def client_env(self) -> dict[str, str]:
        """Environment for any S3 client (boto3, DVC, MLflow) to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def start(self) -> S3Server:
        if self.proc is not None:
            raise ServerError("S3 server already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        lock_holder = self.workdir / "weed.pid"
        if lock_holder.exists():
            old = int(lock_holder.read_text(encoding="utf-8").strip() or 0)
            if old and _pid_alive(old):
                raise ServerError(f"{data} is still used by weed pid {old}; stop it first")
        # the admin worker always dials admin.port + 10000, so keep that one free as well
        (admin,) = free_ports(1, also_free_offset=10000, exclude=[self.port or 0])
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc"]
        picked = free_ports(len(names), exclude=[admin, admin + 10000, self.port or 0])
        self.ports = dict(zip(names, picked))
        self.ports["admin"], self.ports["admin_grpc"] = admin, admin + 10000
        self.ports["s3"] = self.port or free_ports(1, exclude=list(self.ports.values()))[0]
        busy = [f"{k}={p}" for k, p in self.ports.items() if not port_is_free(p)]
        if busy:
            raise ServerError(f"ports already in use on {HOST}: {', '.join(busy)}")
        config = self.workdir / "s3-identities.json"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "lungseg",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                },
                fh,
            )
        p = self.ports
        cmd = [
            _find_executable("weed"),
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            f"-s3.config={config}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        lock_holder.write_text(str(self.proc.pid), encoding="utf-8")
        try:
            _wait(lambda: port_is_listening(p["s3"]), self.startup_timeout, self.proc, "weed mini", self.log)
            self._verify_listener()
            self._create_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def _verify_listener(self) -> None:
        """The S3 port must be held by *our* process (weed moves silently when a port is busy)."""
        try:
            out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10, encoding="utf-8").stdout
        except (OSError, subprocess.SubprocessError):
            return  # no ss here: the ready check below (bucket creation with our keys) still holds
        for line in out.splitlines():
            if f"{HOST}:{self.ports['s3']} " in line and "pid=" in line and f"pid={self.proc.pid}," not in line:
                raise ServerError(f"port {self.ports['s3']} is served by another process: {line.strip()}")

    def _create_bucket(self) -> None:
        from botocore.exceptions import ClientError, EndpointConnectionError

        s3 = self.client()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                s3.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("404", "NoSuchBucket", "NotFound"):
                    try:
                        s3.create_bucket(Bucket=self.bucket)
                        return
                    except ClientError as exc2:
                        last = exc2
                        if exc2.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou",):
                            return
                else:
                    last = exc
            except EndpointConnectionError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise ServerError(f"could not create bucket {self.bucket}: {last}; see {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        _stop_group(self.proc)
        self.proc = None
        (self.workdir / "weed.pid").unlink(missing_ok=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------- MLflow
@dataclass
class MlflowServer:
    """``mlflow server`` (one worker) with a sqlite backend and artifacts proxied to S3."""

    workdir: Path
    s3: S3Server | None = None
    artifacts_prefix: str = "mlflow"
    port: int | None = None
    startup_timeout: float = 120.0
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "mlflow-server.log"

    def start(self) -> MlflowServer:
        if self.proc is not None:
            raise ServerError("MLflow server already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_ports(1)[0]
        if not port_is_free(self.port):
            raise ServerError(f"port {self.port} is already in use on {HOST}")
        env = dict(os.environ)
        env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
        env.pop("MLFLOW_TRACKING_URI", None)
        if self.s3 is not None:
            env.update(self.s3.client_env())
            artifacts = ["--artifacts-destination", f"s3://{self.s3.bucket}/{self.artifacts_prefix}"]
        else:
            artifacts = ["--artifacts-destination", str(self.workdir / "artifacts")]
        cmd = [
            _find_executable("mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}",
            *artifacts,
            "--serve-artifacts",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        try:
            _wait(self._healthy, self.startup_timeout, self.proc, "mlflow server", self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        _stop_group(self.proc)
        self.proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------- CLI
def _env_lines(s3: S3Server, mlf: MlflowServer) -> list[str]:
    env = {**s3.client_env(), "MLFLOW_TRACKING_URI": mlf.uri, "LUNGSEG_S3_BUCKET": s3.bucket}
    return [f"export {k}={v}" for k, v in env.items()]


def _cmd_start(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    state_file = root / "state.json"
    if state_file.exists():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if any(_pid_alive(pid) for pid in state["pids"].values()):
            print(f"servers already running (see {state_file}); `stop` them first", file=sys.stderr)
            return 1
    s3 = S3Server(root / "s3", bucket=args.bucket, port=args.s3_port).start()
    try:
        mlf = MlflowServer(root / "mlflow", s3=s3, port=args.mlflow_port).start()
    except BaseException:
        s3.stop()
        raise
    env_file = root / "env.sh"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(_env_lines(s3, mlf)) + "\n")
    state = {
        "pids": {"s3": s3.proc.pid, "mlflow": mlf.proc.pid},
        "s3": s3.endpoint,
        "mlflow": mlf.uri,
        "bucket": s3.bucket,
    }
    state_file.write_text(json.dumps(state, indent=2), encoding="utf-8")
    # detach: the servers live in their own sessions; forget the Popen objects without killing them
    s3.proc = mlf.proc = None
    print(f"S3 (SeaweedFS) {state['s3']}  bucket {args.bucket}\nMLflow         {state['mlflow']}")
    print(f"credentials and URLs: source {env_file}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    state_file = Path(args.dir).resolve() / "state.json"
    if not state_file.exists():
        print("no servers recorded", file=sys.stderr)
        return 0
    state = json.loads(state_file.read_text(encoding="utf-8"))
    for name in ("mlflow", "s3"):  # MLflow first: it writes to S3
        _stop_group(None, pid=state["pids"][name])
        print(f"stopped {name}")
    state_file.unlink()
    (Path(args.dir).resolve() / "s3" / "weed.pid").unlink(missing_ok=True)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state_file = Path(args.dir).resolve() / "state.json"
    if not state_file.exists():
        print("not running")
        return 1
    state = json.loads(state_file.read_text(encoding="utf-8"))
    ok = True
    for name, pid in state["pids"].items():
        alive = _pid_alive(pid)
        ok &= alive
        print(f"{name:7s} pid {pid} {'running' if alive else 'GONE'}  {state[name]}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".servers", help="state, data and logs (default .servers)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start SeaweedFS S3 + MLflow (detached)")
    start.add_argument("--bucket", default=os.environ.get("LUNGSEG_S3_BUCKET", DEFAULT_BUCKET))
    start.add_argument("--s3-port", type=int, default=None, help="S3 port (default: a free one)")
    start.add_argument("--mlflow-port", type=int, default=None, help="MLflow port (default: a free one)")
    sub.add_parser("stop", help="stop the servers started by `start`")
    sub.add_parser("status", help="are they running?")
    args = parser.parse_args(argv)
    try:
        return {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}[args.cmd](args)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
