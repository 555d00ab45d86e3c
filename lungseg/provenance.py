"""Provenance: what identifies the code, the data and a run — each defined once, here.

Every record lungseg writes (MLflow tags, ``checkpoint.pt``, ``metrics.json``, model-version tags,
experiment records) names its code and data with these functions, so two records of the same
thing always agree and a reader (``lungseg lineage``, ``lungseg register``) can compare them.

Code
    * :func:`git_rev` — the commit a revision resolves to in a git checkout (None outside git).
    * :func:`code_version` — ``{commit, dirty, source}``: HEAD and whether ``lungseg/`` has
      uncommitted changes; ``LUNGSEG_GIT_COMMIT`` (:data:`GIT_COMMIT_ENV`) overrides it where there
      is no ``.git`` (an installed image, a copied tree).
    * :func:`git_commit` — just the commit, ``"unknown"`` when there is none (the MLflow tag).

Files and folders
    * :func:`file_sha256` — hex sha256 of a file's bytes (:func:`lungseg.io.sha256_file` is the
      ``sha256:``-prefixed form written into ``mlflow_run.json``/``metrics.json``).
    * :func:`dvc_folder_hash` — DVC's md5 of a folder (what ``dvc add`` writes, ``<md5>.dir``): the
      *raw data version* of :mod:`lungseg.lineage`.
    * :func:`folder_digest` — sha256 over ``path<TAB>sha256`` lines of a folder's files: the raw-data
      digest of the experiment records (:mod:`lungseg.experiments.runner`), which need no DVC.

Processed data and evaluation sets
    * :func:`data_hash` — ``(hash, source)`` of a processed dataset folder (the ``data_hash`` tag and
      checkpoint field): DVC's md5 of the folder from the nearest ``dvc.lock`` listing it as a stage
      output, verified against the folder as it is (:func:`dvc_folder_hash`; source ``"dvc.lock"``) —
      when the folder was rewritten since (``dvc status``: modified) DVC's md5 of what it holds now
      (source ``"computed (dvc.lock is stale)"``), never dvc.lock's value — else a sha256 over the manifest's
      ``id, split, image_sha256, mask_sha256`` rows in row order (source ``"manifest"``; the split
      assignment is part of what was trained on).
    * :func:`manifest_fingerprint` — ``sha256:…`` of an *evaluation set*: its rows'
      ``id,image_sha256,mask_sha256`` sorted by id (order-free, independent of the folder it lives in).
    * :func:`evaluation_fingerprint` — the evaluation set a ``metrics.json`` was computed on: its
      recorded fingerprint, else (older reports) ``ids-sha256:`` over the split and the sorted image ids
      of ``per_image.csv`` (weaker: ids, not pixels), with where it came from.

Run identity
    * :func:`run_identity` — the code commit, the processed data's hash and the image/KFP run a stage
      runs in (set by the pipeline through :data:`IMAGE_ENV` / :data:`KFP_RUN_ENV`), as MLflow tags
      under the names :mod:`lungseg.lineage` reads back (:data:`CODE_COMMIT_TAG` …).

A low-level module: it imports :mod:`lungseg.errors` only (heavy libraries inside the functions).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lungseg.errors import DataError

#: environment variable naming the code's commit where there is no git checkout (an image)
GIT_COMMIT_ENV = "LUNGSEG_GIT_COMMIT"
#: MLflow run/model-version tags of a run's identity (read back by :mod:`lungseg.lineage`)
CODE_COMMIT_TAG = "git_commit"
PROCESSED_HASH_TAG = "data_hash"
PROCESSED_HASH_SOURCE_TAG = "data_hash_source"
#: ``data_hash_source`` values: dvc.lock's md5 of the folder, verified against the folder as it is
DVC_LOCK_SOURCE = "dvc.lock"
#: … and DVC's md5 of the folder as it is, when dvc.lock records another content (stale: `dvc status` says modified)
STALE_LOCK_SOURCE = "computed (dvc.lock is stale)"
IMAGE_TAG = "lungseg.image"
KFP_RUN_TAG = "lungseg.kfp_run_id"
#: environment variables through which a pipeline run hands its image and run id to the stages
IMAGE_ENV = "LUNGSEG_IMAGE"
KFP_RUN_ENV = "LUNGSEG_KFP_RUN_ID"


# ------------------------------------------------------------------------------------------ code
def _git(repo: str | Path | None, *args: str) -> subprocess.CompletedProcess | None:
    """``git -C repo args…`` (stdout text), or None when git cannot be run at all."""
    cmd = ["git", *(("-C", str(repo)) if repo is not None else ()), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False, encoding="utf-8")
    except (OSError, subprocess.SubprocessError):
        return None


def git_rev(repo: str | Path | None = None, rev: str = "HEAD") -> str | None:
    """The 40-hex commit ``rev`` resolves to in the git checkout ``repo`` (default: the working
    directory); None outside git or for a revision that names no commit."""
    out = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    sha = out.stdout.strip() if out is not None and out.returncode == 0 else ""
    return sha if len(sha) == 40 else None


def code_version(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"commit", "dirty", "source"}`` of the code in ``repo`` (default: the working directory).

    ``source`` is ``"git"`` (``dirty``: ``lungseg/`` has uncommitted changes), ``"LUNGSEG_GIT_COMMIT"``
    (the environment names it; ``dirty`` unknown: None) or ``"unavailable"`` (``commit`` None).
    """
    env = os.environ.get(GIT_COMMIT_ENV)
    if env:
        return {"commit": env, "dirty": None, "source": GIT_COMMIT_ENV}
    head = git_rev(repo)
    status = _git(repo, "status", "--porcelain", "--", ":(top)lungseg") if head else None
    if head is None or status is None or status.returncode != 0:
        return {"commit": None, "dirty": None, "source": "unavailable"}
    return {"commit": head, "dirty": bool(status.stdout.strip()), "source": "git"}


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the code in ``cwd`` (see :func:`code_version`), ``"unknown"`` when there is none."""
    env = os.environ.get(GIT_COMMIT_ENV)
    return env or git_rev(cwd) or "unknown"


# ------------------------------------------------------------------------------ files and folders
def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the bytes of ``path`` (read in ``chunk``-byte blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_digest(folder: str | Path) -> dict[str, Any]:
    """``{"sha256", "n_files"}``: sha256 over ``relative/path<TAB>sha256(file)`` lines of every file
    under ``folder``, sorted by path (renaming a file changes it, as does any byte)."""
    folder = Path(folder)
    lines = [
        f"{p.relative_to(folder).as_posix()}\t{file_sha256(p)}\n"
        for p in sorted(p for p in folder.rglob("*") if p.is_file())
    ]
    return {"sha256": hashlib.sha256("".join(lines).encode()).hexdigest(), "n_files": len(lines)}


class FolderHash(NamedTuple):
    """DVC's hash of a folder: ``md5`` (``<hex>.dir``), file count and total size in bytes."""

    md5: str
    nfiles: int | None
    size: int | None


def dvc_folder_hash(folder: str | Path) -> FolderHash:
    """DVC's md5 of a local folder, exactly what ``dvc add`` would record (computed with DVC's own
    hashing library, dvc-data, into a throw-away object database); :class:`DataError` when
    ``folder`` is not a folder."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "input folder not found")
    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory(prefix="lungseg-hash-") as odb_dir:
        _, meta, obj = build(HashFileDB(fs, odb_dir), str(folder), fs, "md5", ignore=None)
    return FolderHash(str(obj.hash_info.value), meta.nfiles, meta.size)


# ------------------------------------------------------------------------------ processed data
def dvc_lock_md5(data_dir: str | Path, start: str | Path | None = None) -> str | None:
    """The md5 the nearest ``dvc.lock`` at or above ``start`` (default: the working directory)
    records for ``data_dir`` as a stage output; None when that file does not list it (or is not YAML)."""
    import yaml

    target = Path(data_dir).resolve()
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        lock = folder / "dvc.lock"
        if not lock.is_file():
            continue
        try:
            data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            return None
        for stage in (data.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if isinstance(out, dict) and out.get("md5") and (folder / str(out.get("path"))).resolve() == target:
                    return str(out["md5"])
        return None
    return None


def _rows_sha256(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update((line + "\n").encode())
    return h.hexdigest()


def data_hash(data_dir: str | Path) -> tuple[str, str]:
    """``(hash, source)`` identifying a processed dataset folder (see the module docstring)."""
    import pandas as pd

    data_dir = Path(data_dir)
    md5 = dvc_lock_md5(data_dir)
    if md5 and data_dir.is_dir():
        # dvc.lock records what the folder held when the stage last ran: a folder rewritten since (another
        # `lungseg preprocess`, `dvc status` says modified) is identified by what it holds now
        actual = dvc_folder_hash(data_dir).md5
        return (md5, DVC_LOCK_SOURCE) if actual == md5 else (actual, STALE_LOCK_SOURCE)
    manifest_path = data_dir / "manifest.csv"
    if not manifest_path.is_file():
        raise DataError(manifest_path, "not found: cannot identify the processed data")
    manifest = pd.read_csv(manifest_path, dtype=str)
    cols = [c for c in ("id", "split", "image_sha256", "mask_sha256") if c in manifest.columns]
    return _rows_sha256("\t".join(map(str, row)) for row in manifest[cols].itertuples(index=False)), "manifest"


def manifest_fingerprint(rows: Iterable[dict[str, Any]]) -> str:
    """``sha256:…`` of an evaluation set: its rows' ``id,image_sha256,mask_sha256``, sorted by id.

    Same processed pixels and labels ⇒ same fingerprint, whatever the folder or the row order;
    a different ``image_size`` or a different split gives a different one.
    """
    lines = sorted(f"{r['id']},{r['image_sha256']},{r['mask_sha256']}" for r in rows)
    if not lines:
        raise DataError(None, "cannot fingerprint an empty evaluation set")
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def evaluation_fingerprint(metrics: dict[str, Any], evaluation_dir: str | Path) -> tuple[str | None, str]:
    """``(fingerprint, source)`` of the set that ``metrics.json`` (``metrics``, in ``evaluation_dir``)
    was computed on: its recorded fingerprint (``source`` ``metrics.json:<key>``), else ``ids-sha256:``
    over ``split=<split>`` and the sorted ids of ``per_image.csv`` (``per_image.csv:ids``), else
    ``(None, "none")``."""
    for key in ("data_fingerprint", "eval_fingerprint", "dataset_fingerprint"):
        if metrics.get(key):
            return str(metrics[key]), f"metrics.json:{key}"
    per_image = Path(evaluation_dir) / "per_image.csv"
    if per_image.is_file():
        import csv

        with per_image.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            id_col = next((c for c in ("id", "image_id", "ids") if c in (reader.fieldnames or [])), None)
            ids = sorted(row[id_col] for row in reader) if id_col else []
        if ids:
            text = f"split={metrics.get('split')}\n" + "\n".join(ids)
            return "ids-sha256:" + hashlib.sha256(text.encode()).hexdigest(), "per_image.csv:ids"
    return None, "none"


# ---------------------------------------------------------------------------------- run identity
def run_context_tags() -> dict[str, str]:
    """Tags of where a stage runs: the container image and the KFP run id, when a pipeline set them."""
    tags = {}
    if os.environ.get(IMAGE_ENV):
        tags[IMAGE_TAG] = os.environ[IMAGE_ENV]
    if os.environ.get(KFP_RUN_ENV):
        tags[KFP_RUN_TAG] = os.environ[KFP_RUN_ENV]
    return tags


@dataclass(frozen=True)
class RunIdentity:
    """What a training run is made of: code commit, processed data (hash and where the hash came
    from) and the image/KFP run it runs in (empty outside a pipeline)."""

    code_commit: str
    data_hash: str
    data_hash_source: str
    context: dict[str, str]

    def tags(self) -> dict[str, str]:
        """The MLflow tags :mod:`lungseg.lineage` reads back."""
        return {
            CODE_COMMIT_TAG: self.code_commit,
            PROCESSED_HASH_TAG: self.data_hash,
            PROCESSED_HASH_SOURCE_TAG: self.data_hash_source,
            **self.context,
        }


def run_identity(data_dir: str | Path, repo: str | Path | None = None) -> RunIdentity:
    """The identity of a run on the processed data ``data_dir`` with the code in ``repo`` (default: the
    working directory), in the current environment (:func:`run_context_tags`)."""
    dhash, source = data_hash(data_dir)
    return RunIdentity(git_commit(repo), dhash, source, run_context_tags())


__all__ = [
    "CODE_COMMIT_TAG",
    "DVC_LOCK_SOURCE",
    "GIT_COMMIT_ENV",
    "IMAGE_ENV",
    "IMAGE_TAG",
    "KFP_RUN_ENV",
    "KFP_RUN_TAG",
    "PROCESSED_HASH_SOURCE_TAG",
    "PROCESSED_HASH_TAG",
    "STALE_LOCK_SOURCE",
    "FolderHash",
    "RunIdentity",
    "code_version",
    "data_hash",
    "dvc_folder_hash",
    "dvc_lock_md5",
    "evaluation_fingerprint",
    "file_sha256",
    "folder_digest",
    "git_commit",
    "git_rev",
    "manifest_fingerprint",
    "run_context_tags",
    "run_identity",
]
