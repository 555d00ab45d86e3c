"""One writer per output (:func:`lungseg.io.output_lock`): a second lungseg command writing an output that
another one is writing is refused in one line before any work, and a killed holder leaves no lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from lungseg.errors import DataError
from lungseg.io import LOCKS_ENV, output_lock, written_by

HOLD = textwrap.dedent(
    """
    import sys, time
    from lungseg.io import output_lock, written_by
    with written_by("lungseg predict"), output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (LOCKS_ENV, "RANK")}


@pytest.fixture
def holder(tmp_path):
    """A lungseg process writing ``tmp_path/out``, killed at the end."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=_env(),
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_second_command_on_the_same_output_is_refused_in_one_line(tmp_path, holder):
    out, proc = holder
    raw = tmp_path / "raw"
    raw.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "lungseg",
        "preprocess",
        "--dataset",
        "medseg",
        "--input",
        str(raw),
        "--output",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=_env(), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith(
        f"error: {out}: is being written by another lungseg command (lungseg predict, pid {proc.pid}"
    )
    assert not out.exists()  # nothing written
    # the holder killed (no clean-up ran): the lock is gone with it, the command now fails on its input instead
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    res = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=_env(), cwd=tmp_path)
    assert res.returncode != 0 and "being written" not in res.stderr


def test_the_same_path_written_another_way_is_the_same_lock(tmp_path, holder, monkeypatch):
    out, _ = holder
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(LOCKS_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DataError, match="is being written by another lungseg command"):
        with output_lock("./sub/../out"):
            pass


def test_a_child_of_the_holder_and_other_ranks_do_not_lock_again(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCKS_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "model"
    child = textwrap.dedent(
        """
        import sys
        from lungseg.io import output_lock
        with output_lock(sys.argv[1]):
            print("child wrote", flush=True)
        """
    )
    with written_by("lungseg train"), output_lock(out):
        assert os.environ[LOCKS_ENV] == str(out.resolve())
        env = dict(os.environ)
        res = subprocess.run(
            [sys.executable, "-c", child, str(out)], capture_output=True, text=True, encoding="utf-8", env=env
        )
        assert res.returncode == 0 and res.stdout.strip() == "child wrote", res.stderr
        env = {**_env(), "RANK": "1"}  # a torchrun worker: writes nothing, takes no lock
        res = subprocess.run(
            [sys.executable, "-c", child, str(out)], capture_output=True, text=True, encoding="utf-8", env=env
        )
        assert res.returncode == 0, res.stderr
        env = _env()  # an unrelated command on the same output
        res = subprocess.run(
            [sys.executable, "-c", child, str(out)], capture_output=True, text=True, encoding="utf-8", env=env
        )
        assert res.returncode != 0 and "is being written by another lungseg command (lungseg train" in res.stderr
    assert LOCKS_ENV not in os.environ
    with output_lock(out):  # released
        pass
