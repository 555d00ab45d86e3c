"""Atomic outputs: write into a temporary sibling, rename into place only on success.

A step that fails part-way leaves the previous output (if any) untouched and no half-written
folder or file behind. An output folder never replaces a *file* of the same name (nor an output
file a folder): that is a :class:`~lungseg.errors.DataError` naming the path, raised before any
work (:func:`check_output_dir`, :func:`check_output_file`).

Never delete what lungseg did not write
    Every folder lungseg puts in place carries a marker file, :data:`MARKER`. An existing output folder
    is replaced only when it is empty or holds that marker (a previous lungseg output); any other
    non-empty folder is a :class:`~lungseg.errors.DataError` raised before any work, unless the caller
    allows it (``--overwrite`` on the command line: :func:`overwrite_allowed`). Whatever the setting, an
    output folder that is the current folder or holds it, or that holds one of the command's inputs
    (``keep``), is refused: replacing it would delete the work folder or the input itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lungseg.provenance import file_sha256

#: the file every lungseg output folder carries (JSON: which command wrote it); such a folder may be
#: replaced as a whole by the same command
MARKER = ".lungseg-output"

_OVERWRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("lungseg_overwrite", default=False)
_WRITER: contextvars.ContextVar[str] = contextvars.ContextVar("lungseg_writer", default="lungseg")


@contextlib.contextmanager
def overwrite_allowed(allowed: bool = True) -> Iterator[None]:
    """Within the block, output folders that lungseg did not write may be replaced (``--overwrite``)."""
    token = _OVERWRITE.set(bool(allowed))
    try:
        yield
    finally:
        _OVERWRITE.reset(token)


@contextlib.contextmanager
def written_by(command: str) -> Iterator[None]:
    """Within the block, output folders are marked as written by ``command`` (``lungseg predict`` …),
    and only a folder of that command is replaced without ``--overwrite`` (the CLI sets it)."""
    token = _WRITER.set(command)
    try:
        yield
    finally:
        _WRITER.reset(token)


def marker_text() -> str:
    return json.dumps({"written_by": _WRITER.get(), "replaced_as_a_whole_by": _WRITER.get()}) + "\n"


def _writer_of(folder: Path) -> str | None:
    """Which command wrote ``folder`` (its :data:`MARKER`), ``None`` when it has none."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        return str(json.loads(marker.read_text(encoding="utf-8"))["written_by"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "lungseg"


#: the outputs this process (or a lungseg process above it: a launcher, ``torchrun``'s parent) holds the
#: lock of, ``os.pathsep``-joined resolved paths; a child writing the same output does not lock it again
LOCKS_ENV = "LUNGSEG_OUTPUT_LOCKS"


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold the one-writer lock of output ``path`` for the block: a second lungseg command writing the
    same output while this one runs is a :class:`~lungseg.errors.DataError` naming the path and the
    other command (two writers would swap the folder under each other: a traceback, or one's cases in
    the other's table). An advisory ``flock`` on a file named by the resolved path in a per-user folder
    of the temporary directory (nothing is written beside the output); the lock ends with the process,
    so a killed command leaves none behind. The ranks of a ``torchrun`` group other than 0 (``RANK``),
    which write nothing, and children of the holder (:data:`LOCKS_ENV`) do not take it."""
    import fcntl
    import hashlib
    import time

    from lungseg.errors import DataError

    key = str(Path(path).resolve())
    held = os.environ.get(LOCKS_ENV, "")
    if key in held.split(os.pathsep) or os.environ.get("RANK", "0") != "0":
        yield
        return
    folder = Path(tempfile.gettempdir()) / f"lungseg-{os.getuid()}-locks"
    folder.mkdir(mode=0o700, exist_ok=True)
    lock = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"
    with open(lock, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DataError(
                path,
                f"is being written by another lungseg command ({holder}): wait for it to end or name another folder",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{_WRITER.get()}, pid {os.getpid()}, since {time.strftime('%H:%M:%S')}")
        f.flush()
        os.environ[LOCKS_ENV] = os.pathsep.join(x for x in (held, key) if x)
        try:
            yield
        finally:
            os.environ[LOCKS_ENV] = held
            if not held:
                del os.environ[LOCKS_ENV]
            f.seek(0)
            f.truncate()


def _fresh_dir(parent: Path, name: str) -> Path:
    """A new private temporary folder ``.<name>.tmp-<pid>-…`` in ``parent``; temporaries of this
    name left by a process that no longer runs (a kill) are removed first."""
    for old in parent.glob(f".{name}.tmp-*"):
        pid = old.name[len(f".{name}.tmp-") :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _public(path: Path) -> None:
    """Give a finished temporary file or folder the permissions of a normally created one (mkdtemp and
    mkstemp make them private: 0700 / 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, keep: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    The swap is two renames (old → backup, tmp → target) on the same filesystem; the backup is
    removed afterwards. On any exception the temporary folder is deleted and ``target`` is kept.
    ``target`` is checked (:func:`check_output_dir`) before the block runs and again before the swap.
    """
    target = Path(target)
    check_output_dir(target, keep=keep)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_dir(target.parent, target.name)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        replace_dir(tmp, target, keep=keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(
    src: str | Path,
    target: str | Path,
    *,
    keep: tuple[str | Path, ...] = (),
    mark: bool = True,
    overwrite: bool | None = None,
) -> None:
    """Move the finished folder ``src`` to ``target`` by renames (same filesystem).

    ``target`` must pass :func:`check_output_dir` (``keep``, ``overwrite``). ``src`` gets :data:`MARKER`
    unless ``mark`` is false (a copy of a data version, whose content must hash to that version). A
    previous ``target`` is renamed aside first and deleted only once ``src`` is in place; if the second
    rename fails, the previous ``target`` is put back.
    """
    src, target = Path(src), Path(target)
    check_output_dir(target, keep=keep, overwrite=overwrite)
    if mark:
        (src / MARKER).write_text(marker_text(), encoding="utf-8")
    _public(src)
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{os.getpid()}"
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(target, backup)
    try:
        os.replace(src, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def check_output_dir(path: str | Path, *, keep: tuple[str | Path, ...] = (), overwrite: bool | None = None) -> Path:
    """``path`` as an output *folder*, checked before any work (module docstring): absent, empty, or a
    previous output of the same command (its :data:`MARKER`); another non-empty folder — a user's, or
    another command's output such as a trained model — only when ``overwrite`` (default:
    :func:`overwrite_allowed`'s setting). Never a file or a symbolic link, the current folder or a
    folder that holds it, a folder holding one of the paths in ``keep`` (the command's inputs) or one
    inside an input folder. Each refusal is a :class:`~lungseg.errors.DataError` naming the path."""
    from lungseg.errors import DataError

    path = Path(path)
    if path.is_symlink():
        raise DataError(path, "is a symbolic link: name the folder itself (the output is replaced as a whole)")
    if path.exists() and not path.is_dir():
        raise DataError(
            path, "exists and is not a folder: the output is a folder; name another path or move the file away"
        )
    if path.parent.exists() and not path.parent.is_dir():
        raise DataError(path.parent, "is a file, not a folder: cannot write an output inside it")
    resolved = path.resolve()
    for item in keep:
        item_path = Path(item).resolve()
        if item_path.is_dir() and _inside(resolved, item_path) and resolved != item_path:
            raise DataError(path, f"is inside the input {item}: write outputs beside an input, not into it")
    if not path.is_dir():
        return path
    if _inside(Path.cwd().resolve(), resolved):
        raise DataError(
            path, "is the current folder or holds it: the output folder is replaced as a whole; name a new sub-folder"
        )
    for item in keep:
        if _inside(Path(item).resolve(), resolved):
            raise DataError(
                path, f"holds the input {item}: the output folder is replaced as a whole; name another folder"
            )
    if overwrite is None:
        overwrite = _OVERWRITE.get()
    writer = _writer_of(path)
    if overwrite or writer == _WRITER.get() or not any(path.iterdir()):
        return path
    if writer is None:
        raise DataError(
            path,
            "exists, is not empty and was not written by lungseg: it would be replaced as a whole; "
            "name a new folder, or pass --overwrite to replace it",
        )
    raise DataError(
        path,
        f"holds the output of `{writer}`, not of `{_WRITER.get()}`: it would be replaced as a whole; "
        "name a new folder, or pass --overwrite to replace it",
    )


def _inside(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies inside it (both resolved)."""
    return inner == outer or outer in inner.parents


def check_output_file(path: str | Path) -> Path:
    """``path`` as an output *file*: absent or a file. A folder there is a :class:`~lungseg.errors.DataError`."""
    from lungseg.errors import DataError

    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder: the output is a file; name a file path (e.g. …/registration.json)")
    if path.parent.exists() and not path.parent.is_dir():
        raise DataError(path.parent, "is a file, not a folder: cannot write an output inside it")
    return path


def sha256_file(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes (:func:`lungseg.provenance.file_sha256`, prefixed): how
    ``mlflow_run.json`` and ``metrics.json`` name a checkpoint's weights."""
    return "sha256:" + file_sha256(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _public(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json_object(path: str | Path, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`~lungseg.errors.DataError` naming the file when it is
    missing (``missing`` says what should have written it), not valid JSON, or not an object."""
    from lungseg.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object, found {type(data).__name__}")
    return data
