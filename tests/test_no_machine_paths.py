"""No committed file names a path of the machine that wrote it (#23): records, bench results, docs and
docstrings say ``../shared/data``, ``sqlite:///.results-work/mlflow.db`` or ``<elsewhere>/…``
(:func:`lungseg.experiments.records.portable_record`), never ``/work/…``, ``/root/…`` or ``/tmp/…``.

A path counts when one of :data:`MACHINE_ROOTS` starts it: at the start of a line, after a space, a
quote, ``=``, a bracket or punctuation, or right after ``sqlite:///`` / ``file://`` — not inside
another path (``<repo>/.dvc/tmp/exps`` is repository-relative). :data:`ALLOWED` lists the few that
must be there, each with its reason.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from lungseg.experiments.records import ELSEWHERE, portable_command, portable_uri_text

REPO = Path(__file__).resolve().parents[1]

#: folders that only exist on one machine (home folders, scratch, this project's work folder)
MACHINE_ROOTS = ("work", "root", "home", "tmp", "Users", "mnt", "var/folders", "private/var", "dev/shm")
PATTERN = re.compile(
    r"(?:^|(?<=[\s\"'`=(\[{,;:|>])|(?<=sqlite:///)|(?<=file://))/(?:" + "|".join(MACHINE_ROOTS) + r")/[^\s\"'`)\]]*",
    re.MULTILINE,
)

#: (file, path it may name, why)
ALLOWED = [
    ("Dockerfile", "/tmp/build", "the image build's staging folder inside the build container, not a host path"),
    ("Dockerfile", "/home/lungseg", "the home folder of the image's own user (useradd --home-dir)"),
    ("tests/components/test_dockerfile.py", "/tmp/build/", "asserts the Dockerfile's build-container folder"),
    ("docs/pipeline.md", "/tmp/p", "example commands writing a compiled pipeline to a scratch file of the reader's"),
    ("docs/inference.md", "/tmp/lgnet", "an example command downloading a model to a scratch folder of the reader's"),
    (
        "docs/results/gpu_sweep.sh",
        "/dev/shm/lungseg-w",
        "the sweep script's scratch folder on its GPU machine",
    ),
    ("docs/results/gpu_sweep.sh", "/tmp/", "the sweep script's scratch folders where /dev/shm is missing"),
    ("tests/test_no_machine_paths.py", "/", "this file spells out the allowed paths"),
]


def _allowed(file: str, path: str) -> bool:
    return any(file == f and path.startswith(prefix) for f, prefix, _ in ALLOWED)


def machine_paths(file: str, text: str) -> list[str]:
    """``file:line: path`` for each machine path in ``text`` not in :data:`ALLOWED`."""
    found = []
    for m in PATTERN.finditer(text):
        if not _allowed(file, m.group()):
            found.append(f"{file}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}")
    return found


def test_no_committed_file_names_a_path_of_a_machine():
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    )
    found = []
    for name in files:
        path = REPO / name
        if not name or not path.is_file():  # deleted in the working tree (a rename in progress)
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # images, arrays: no text
            continue
        found += machine_paths(name, data.decode("utf-8", errors="replace"))
    assert not found, "absolute paths of a machine in committed files:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ('"tracking_uri": "sqlite:////work/main/.results-work/mlflow.db"', ["/work/main/.results-work/mlflow.db"]),
        ("--data-root /work/shared/data", ["/work/shared/data"]),
        ("`/root/out/results`", ["/root/out/results"]),
        ("file:///dev/shm/w/mlruns", ["/dev/shm/w/mlruns"]),
        ("W=/tmp/x y", ["/tmp/x"]),
        ("in ``<repo>/.dvc/tmp/exps/…``", []),  # repository-relative
        ("--data-root ../shared/data, sqlite:///.results-work/mlflow.db", []),
        ("/usr/bin/env python; /etc/ssl/certs; /dev/null; /app", []),  # system and container paths
    ],
)
def test_what_counts_as_a_machine_path(text, hits):
    assert [h.split(": ", 1)[1] for h in machine_paths("x.md", text)] == hits


def test_records_write_paths_relative_to_the_repository(tmp_path):
    repo = tmp_path / "clone"
    assert portable_uri_text(f"sqlite:///{repo}/.results-work/mlflow.db", repo) == "sqlite:///.results-work/mlflow.db"
    assert portable_uri_text(f"file://{repo}/mlruns", repo) == "file://mlruns"
    assert portable_uri_text("sqlite:////elsewhere/w/mlflow.db", repo) == f"sqlite:///{ELSEWHERE}/mlflow.db"
    assert portable_uri_text("http://127.0.0.1:5000", repo) == "http://127.0.0.1:5000"
    assert portable_uri_text("sqlite:///mlflow.db", repo) == "sqlite:///mlflow.db"  # relative already
    command = f"lungseg results run --table t --profile cpu --data-root {tmp_path}/shared/data --results-dir={repo}/out"
    assert portable_command(command, repo) == (
        "lungseg results run --table t --profile cpu --data-root ../shared/data --results-dir=out"
    )
    assert portable_command("lungseg results run --table t", repo) == "lungseg results run --table t"
    assert machine_paths("x", portable_command(f"x --data-root {tmp_path}/elsewhere", None)) == []
