#!/usr/bin/env python3
"""Build the lungseg component image, on a machine with a Docker daemon or without one.

Two flavours of one ``Dockerfile``:

* ``cpu``  — torch's CPU wheel (the wheel this machine's pip finds for ``torch==2.13.0+cpu``, staged
  into the build context; the PyTorch CPU index otherwise). For tests, laptops, CPU nodes.
* ``cuda`` — torch ``2.13.0`` from the package index (PyPI serves the CUDA build for Linux). For GPU nodes.

What ``build`` does, each step only when needed:

1. **Base image.** ``BASE_IMAGE`` (default ``python:3.11-slim``) is used when the daemon has it or
   can pull it. When it cannot be pulled (no registry reachable), a base is *bootstrapped from
   Debian packages*: ``mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates
   bookworm`` (this machine's apt sources) → ``docker import`` as ``lungseg-base:bookworm``. Both
   bases have Python 3.11; the Dockerfile installs into a venv, which works on either.
2. **Build context extras** in ``.image/context/`` (git-ignored): this machine's CA bundle (pip in
   the build reaches the registries through it; a public bundle, used only in the build stage) and,
   for ``cpu``, the torch wheel.
3. **Reuse.** A sha256 over every input of the build (the Dockerfile, the files it copies, the
   build arguments, the base image's id) is stored as the image label ``org.lungseg.context``; an
   image with the same tag and label is reused without calling ``docker build``.
4. ``docker build`` with the classic builder (``DOCKER_BUILDKIT=0``: BuildKit would pull its
   frontend image) and ``--network host``; then a smoke check runs ``lungseg --version`` in it as uid 1000.
5. A **build record** ``.image/<flavour>.json``: tag, image id, size, base, context hash, build
   seconds and, after ``push``, the registry digest (``repo_digest``) that
   ``lungseg pipeline compile --image-record .image/<flavour>.json`` pins the pipeline to.

A private Docker daemon (for CI, or a machine whose docker is not running) — its own data root,
exec root and socket under ``--dir`` (default ``.docker/``, git- and docker-ignored), in its own
process group, with no bridge network and no iptables changes (builds and containers use the host
network), so it never touches a system daemon::

    python scripts/image.py daemon start      # prints and writes DIR/env.sh: export DOCKER_HOST=unix://…
    source .docker/env.sh
    python scripts/image.py build --flavour cpu
    python scripts/image.py daemon stop       # SIGTERM to its process group, waits until it is gone

Only the standard library is used: ``make image`` runs this before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / ".image"
CONTEXT_EXTRA = STAGE / "context"

DEFAULT_BASE = "python:3.11-slim"
BOOTSTRAP_BASE = "lungseg-base:bookworm"
BOOTSTRAP_SUITE = "bookworm"
BOOTSTRAP_PACKAGES = ("python3", "python3-venv", "ca-certificates")

TORCH_VERSION = "2.13.0"
REPOSITORY = "ghcr.io/lungseg/lungseg"
#: flavour → (tag suffix, TORCH_INDEX_URL build argument, staged wheel requirement or None)
FLAVOURS = {
    "cpu": ("-cpu", "https://download.pytorch.org/whl/cpu", f"torch=={TORCH_VERSION}+cpu"),
    "cuda": ("", "https://pypi.org/simple", None),
}
#: what the Dockerfile copies from the build context (tests/components checks this list against it)
CONTEXT_INPUTS = (
    "requirements.txt",
    "pyproject.toml",
    "README.md",
    "lungseg",
    "components",
    "pipelines",
    ".image/context",
)
LABEL = "org.lungseg.context"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(RuntimeError):
    """A build step failed; the message says which and why."""


# ----------------------------------------------------------------------------------- utilities
def package_version() -> str:
    text = (REPO / "lungseg" / "__init__.py").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise ImageError("lungseg/__init__.py has no __version__")


def default_tag(flavour: str) -> str:
    return f"{REPOSITORY}:{package_version()}{FLAVOURS[flavour][0]}"


def docker(
    *args: str,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    exe = shutil.which("docker")
    if exe is None:
        raise ImageError("`docker` (the client) is not installed (Debian: apt-get install docker.io)")
    proc = subprocess.run(
        [exe, *args],
        capture_output=capture,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        encoding="utf-8",
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:] if capture else []
        raise ImageError(f"docker {' '.join(args[:3])} … failed (exit {proc.returncode}): " + " | ".join(detail))
    return proc


def daemon_reachable(timeout: float = 20) -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", check=False, timeout=timeout).returncode == 0
    except (ImageError, subprocess.TimeoutExpired):
        return False


def image_inspect(ref: str) -> dict | None:
    proc = docker("image", "inspect", ref, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


# -------------------------------------------------------------------------------------- daemon
def _ping(sock: Path, timeout: float = 2.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in s.recv(256)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Daemon:
    """A private ``dockerd`` under ``root``: ``data/``, ``exec/``, ``docker.sock``, ``dockerd.log``,
    ``dockerd.pid`` (the process-group leader we started) and ``env.sh``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.sock = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.log = self.root / "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None and _ping(self.sock)

    def start(self, timeout: float = 60) -> Daemon:
        if self.running():
            return self
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise ImageError("`dockerd` is not installed (Debian: apt-get install docker.io)")
        if os.geteuid() != 0:
            raise ImageError("a private dockerd needs root (rootless Docker is not set up by this script)")
        # containerd's socket lives under exec/: keep the path below the unix-socket limit (108 bytes)
        if len(str(self.root / "exec" / "containerd" / "containerd-debug.sock")) > 100:
            raise ImageError(f"{self.root}: path too long for the daemon's unix sockets; use a shorter --dir")
        for sub in ("data", "exec"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.sock.unlink(missing_ok=True)
        cmd = [
            dockerd,
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--host",
            self.host,
            "--pidfile",
            str(self.root / "dockerd.own.pid"),
            "--bridge",
            "none",
            "--iptables=false",
            "--ip-masq=false",
        ]
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pidfile.write_text(str(proc.pid), encoding="utf-8")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ImageError(f"dockerd exited with code {proc.returncode}; see {self.log}:\n{_tail(self.log)}")
            if _ping(self.sock):
                break
            time.sleep(0.5)
        else:
            self.stop()
            raise ImageError(f"dockerd did not answer within {timeout:.0f}s; see {self.log}:\n{_tail(self.log)}")
        env_file = self.root / "env.sh"
        env_file.write_text(f"export DOCKER_HOST={self.host}\n", encoding="utf-8")
        return self

    def stop(self, timeout: float = 60) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.3)
        try:
            os.killpg(pid, signal.SIGKILL if _alive(pid) else 0)
        except ProcessLookupError:
            pass
        while time.monotonic() < deadline + 10:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.3)
        self._unmount_leftovers()
        self.pidfile.unlink(missing_ok=True)
        return True

    def _unmount_leftovers(self) -> None:
        """dockerd leaves its network namespace (``exec/netns/default``, an nsfs mount) mounted
        after it exits; unmount whatever is still mounted under our folder, deepest first."""
        try:
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()]
        except OSError:
            return
        ours = [m for m in mounts if m.startswith(f"{self.root}/")]
        for mount in sorted(ours, key=len, reverse=True):
            subprocess.run(["umount", mount], capture_output=True, check=False)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------- base
def ensure_base(base: str = DEFAULT_BASE, *, pull_timeout: float = 180) -> str:
    """The base image to build on: ``base`` if present or pullable, else the Debian bootstrap."""
    if image_inspect(base) is not None:
        return base
    try:
        pulled = docker("pull", base, check=False, timeout=pull_timeout)
        if pulled.returncode == 0:
            return base
        reason = (pulled.stderr or "").strip().splitlines()[-1:] or ["(no message)"]
    except subprocess.TimeoutExpired:
        reason = [f"no answer within {pull_timeout:.0f}s"]
    print(
        f"base image {base} cannot be pulled ({reason[0]}); using the Debian bootstrap {BOOTSTRAP_BASE}",
        file=sys.stderr,
    )
    return bootstrap_base()


def bootstrap_base(name: str = BOOTSTRAP_BASE, suite: str = BOOTSTRAP_SUITE) -> str:
    """``name`` made from Debian packages with mmdebstrap (reused when the daemon already has it)."""
    if image_inspect(name) is not None:
        return name
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageError(
            "the base image cannot be pulled and `mmdebstrap` is not installed to make one "
            "(Debian: apt-get install mmdebstrap)"
        )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lungseg-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        proc = subprocess.run(
            [mmdebstrap, "--variant=minbase", "--include=" + ",".join(BOOTSTRAP_PACKAGES), "--quiet", suite, str(tar)],
            capture_output=True,
            text=True,
            encoding="utf-8",
        )
        if proc.returncode != 0:
            raise ImageError(f"mmdebstrap {suite} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        docker(
            "import",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["/bin/bash"]',
            "--message",
            f"mmdebstrap --variant=minbase --include={','.join(BOOTSTRAP_PACKAGES)} {suite}",
            str(tar),
            name,
        )
    print(f"bootstrapped {name} from Debian {suite} packages in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return name


# ------------------------------------------------------------------------------------- context
def stage_context(flavour: str) -> Path:
    """``.image/context/``: the CA bundle and, for ``cpu``, the torch CPU wheel (replaced as a whole)."""
    wheel_req = FLAVOURS[flavour][2]
    tmp = Path(tempfile.mkdtemp(prefix=".context-", dir=_mkdir(STAGE)))
    try:
        (tmp / "wheels").mkdir()
        (tmp / "certs").mkdir()
        if HOST_CA_BUNDLE.is_file():
            shutil.copy2(HOST_CA_BUNDLE, tmp / "certs" / "ca-certificates.crt")
        if wheel_req:
            _stage_wheel(wheel_req, tmp / "wheels")
        if CONTEXT_EXTRA.exists():
            shutil.rmtree(CONTEXT_EXTRA)
        tmp.rename(CONTEXT_EXTRA)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CONTEXT_EXTRA


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stage_wheel(requirement: str, dest: Path) -> None:
    """``pip download`` the wheel: first with this machine's pip configuration (a local wheel
    folder or mirror), then from the PyTorch CPU index."""
    cached = sorted(CONTEXT_EXTRA.glob("wheels/torch-*.whl")) if CONTEXT_EXTRA.exists() else []
    version = requirement.split("==", 1)[1]
    for wheel in cached:
        if wheel.name.startswith(f"torch-{version}-"):
            shutil.copy2(wheel, dest / wheel.name)
            return
    base = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_28_x86_64",
        "--dest",
        str(dest),
        requirement,
    ]
    attempts = [base, base + ["--index-url", FLAVOURS["cpu"][1]]]
    errors = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
        if proc.returncode == 0 and list(dest.glob("torch-*.whl")):
            return
        errors.append(proc.stderr.strip().splitlines()[-1:] or ["(no message)"])
    raise ImageError(f"cannot download {requirement} for the CPU image: {errors}")


def context_hash(flavour: str, base_id: str, build_args: dict[str, str]) -> str:
    """sha256 over the Dockerfile, every file it copies, the build arguments and the base's id."""
    h = hashlib.sha256()
    h.update(f"flavour={flavour}\nbase={base_id}\n".encode())
    for key in sorted(build_args):
        h.update(f"arg {key}={build_args[key]}\n".encode())
    files = [REPO / "Dockerfile", REPO / ".dockerignore"]
    for item in CONTEXT_INPUTS:
        path = REPO / item
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            )
        elif path.is_file():
            files.append(path)
    for path in files:
        h.update(f"file {path.relative_to(REPO).as_posix()}\n".encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------- build
def record_path(flavour: str) -> Path:
    return STAGE / f"{flavour}.json"


def build(
    flavour: str = "cpu",
    *,
    tag: str | None = None,
    base: str = DEFAULT_BASE,
    force: bool = False,
    torch_index_url: str | None = None,
) -> dict:
    """Build (or reuse) the image of ``flavour``; returns and writes its build record.
    ``torch_index_url``: where torch comes from when no wheel is staged (the ``cuda`` flavour;
    e.g. ``https://download.pytorch.org/whl/cu126`` for a CUDA 12.6 build instead of PyPI's)."""
    if flavour not in FLAVOURS:
        raise ImageError(f"unknown flavour {flavour!r} (expected one of {', '.join(FLAVOURS)})")
    if not daemon_reachable():
        raise ImageError(
            f"no Docker daemon answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'default')}); start one: "
            "python scripts/image.py daemon start && source .docker/env.sh"
        )
    tag = tag or default_tag(flavour)
    t0 = time.monotonic()
    base_ref = ensure_base(base)
    base_id = image_inspect(base_ref)["Id"]
    stage_context(flavour)
    build_args = {
        "BASE_IMAGE": base_ref,
        "TORCH_VERSION": TORCH_VERSION,
        "TORCH_INDEX_URL": torch_index_url or FLAVOURS[flavour][1],
    }
    digest = context_hash(flavour, base_id, build_args)
    existing = image_inspect(tag)
    reused = bool(existing and (existing["Config"].get("Labels") or {}).get(LABEL) == digest and not force)
    if not reused:
        cmd = [
            "build",
            "--network",
            "host",
            "--file",
            str(REPO / "Dockerfile"),
            "--tag",
            tag,
            "--label",
            f"{LABEL}={digest}",
            "--label",
            f"org.lungseg.flavour={flavour}",
        ]
        for key, value in build_args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        proc = docker(*cmd, str(REPO), check=False, capture=False, env={"DOCKER_BUILDKIT": "0"})
        if proc.returncode != 0:
            raise ImageError(f"docker build of {tag} failed (exit {proc.returncode}); the build log is above")
    info = image_inspect(tag)
    if existing and existing["Id"] != info["Id"] and not image_inspect(existing["Id"]).get("RepoTags"):
        docker("image", "rm", existing["Id"], check=False)  # our previous build of this tag, now untagged
    smoke = docker("run", "--rm", "--network", "none", "--user", "1000:1000", tag, "lungseg", "--version", check=False)
    if smoke.returncode != 0:
        raise ImageError(f"{tag}: `lungseg --version` failed in the image: {smoke.stderr.strip()[-1000:]}")
    old = read_record(flavour)
    record = {
        "flavour": flavour,
        "tag": tag,
        "image_id": info["Id"],
        "size_bytes": info["Size"],
        "size_gb": round(info["Size"] / 1e9, 2),
        "base": base_ref,
        "base_id": base_id,
        "context_sha256": digest,
        "torch": f"{TORCH_VERSION}" + ("+cpu" if flavour == "cpu" else ""),
        "reused": reused,
        "seconds": round(time.monotonic() - t0, 1),
        "repo_digest": None,
    }
    if old and old.get("image_id") == info["Id"]:
        record["repo_digest"] = old.get("repo_digest")  # still the same image: its pushed digest holds
        if reused:
            record["build_seconds"] = old.get("build_seconds")
    if not reused:
        record["build_seconds"] = record["seconds"]
    _write_record(flavour, record)
    return record


def read_record(flavour: str) -> dict | None:
    path = record_path(flavour)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_record(flavour: str, record: dict) -> None:
    path = record_path(flavour)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def push(flavour: str, repository: str | None = None) -> dict:
    """Push the built image (re-tagged under ``repository`` if given) and record its registry digest."""
    record = read_record(flavour)
    if not record:
        raise ImageError(f"no build record {record_path(flavour)}: run `build --flavour {flavour}` first")
    ref = record["tag"]
    if repository:
        ref = f"{repository}:{ref.rsplit(':', 1)[1]}"
        docker("tag", record["image_id"], ref)
    docker("push", ref, capture=False)
    digests = [d for d in image_inspect(ref).get("RepoDigests", []) if d.startswith(ref.rsplit(":", 1)[0] + "@")]
    if not digests:
        raise ImageError(f"{ref}: pushed, but the daemon reports no registry digest")
    record["repo_digest"] = digests[0]
    _write_record(flavour, record)
    return record


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("daemon", help="a private dockerd: start | stop | status")
    d.add_argument("action", choices=("start", "stop", "status"))
    d.add_argument(
        "--dir",
        default=os.environ.get("LUNGSEG_DOCKER_DIR", str(REPO / ".docker")),
        help="data root, exec root, socket and log (default .docker/ or $LUNGSEG_DOCKER_DIR)",
    )
    b = sub.add_parser("build", help="build (or reuse) the image; writes .image/<flavour>.json")
    b.add_argument("--flavour", choices=tuple(FLAVOURS), default="cpu")
    b.add_argument("--tag", default=None, help="image tag (default ghcr.io/lungseg/lungseg:<version>[-cpu])")
    b.add_argument(
        "--base",
        default=os.environ.get("BASE_IMAGE", DEFAULT_BASE),
        help=f"base image (default {DEFAULT_BASE}; bootstrapped from Debian when it cannot be pulled)",
    )
    b.add_argument("--force", action="store_true", help="build even when an image of the same inputs exists")
    b.add_argument(
        "--torch-index-url",
        default=os.environ.get("TORCH_INDEX_URL") or None,
        help="cuda: the index torch comes from (default PyPI, whose Linux torch 2.13.0 is built "
        "for CUDA 13; https://download.pytorch.org/whl/cu126 for CUDA 12.6)",
    )
    s = sub.add_parser("base", help="make sure the base image exists (pull, else bootstrap); print it")
    s.add_argument("--base", default=os.environ.get("BASE_IMAGE", DEFAULT_BASE))
    p = sub.add_parser("push", help="push the built image and record its registry digest")
    p.add_argument("--flavour", choices=tuple(FLAVOURS), default="cuda")
    p.add_argument("--repository", default=None, help="push under this name instead (e.g. registry.example/lungseg)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "daemon":
            daemon = Daemon(args.dir)
            if args.action == "start":
                daemon.start()
                print(
                    f"dockerd pid {daemon.pid()}: export DOCKER_HOST={daemon.host}   (or: source {daemon.root}/env.sh)"
                )
            elif args.action == "stop":
                print("stopped dockerd" if daemon.stop() else "no dockerd of ours is running")
            else:
                print(f"running: DOCKER_HOST={daemon.host}" if daemon.running() else "not running")
                return 0 if daemon.running() else 1
        elif args.cmd == "build":
            print(
                json.dumps(
                    build(
                        args.flavour,
                        tag=args.tag,
                        base=args.base,
                        force=args.force,
                        torch_index_url=args.torch_index_url,
                    ),
                    indent=2,
                )
            )
        elif args.cmd == "base":
            print(ensure_base(args.base))
        elif args.cmd == "push":
            print(json.dumps(push(args.flavour, args.repository), indent=2))
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
