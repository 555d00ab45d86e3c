"""Data versions and lineage: which data, code and parameters made a model.

A *data version* names raw data by content, the way DVC does: the md5 of a folder as ``dvc add``
computes it (``<md5>.dir``, :func:`folder_hash`). The same content has the same hash wherever it
comes from — a ``dvc add``-ed folder in the workspace, a DVC-tracked path at a git revision
resolved with DVC's API, a copy staged on S3 for a cluster run — so every stage can check what it
got instead of trusting a folder name.

* :func:`parse_data_spec` — ``"data/raw/medseg@v1"`` → ``("data/raw/medseg", "v1")`` (no ``@``: ``HEAD``).
* :func:`resolve` — a DVC-tracked path at a git revision → :class:`DataVersion` (path, rev, the
  commit it resolved to, DVC hash, size, file count) through :class:`dvc.api.DVCFileSystem`;
  a path that is not DVC-tracked or a revision that does not exist is a :class:`DataError`.
* :func:`fetch` — the version's files into a local folder (from the DVC cache or the remote),
  re-hashed before the folder is renamed into place: nothing half-fetched is left behind.
* :func:`stage` — an immutable, content-addressed copy for a pipeline run: ``<target>/<md5>/`` (a
  local folder or ``s3://bucket/prefix``), reused when a complete copy is already there. The copy is
  marked complete only after every file is in place, by ``<target>/<md5>.json`` beside it (beside,
  not inside: the folder then hashes to the version's own hash).
* :func:`check_remote` — can the version still be fetched from the DVC remote, and does it hash to
  the same value? (fetches into a throw-away cache, so a local cache cannot mask a missing remote).
* :func:`input_version` — what ``lungseg preprocess`` records of its input folder (``meta.json``
  ``source``): the folder's hash, plus the path/rev/commit when a pipeline handed it a DVC version,
  ``versioned: false`` for anything else (a plain ``s3://`` prefix, a folder of unknown origin).

Why a staged copy rather than DVC inside the pipeline: the cluster's tasks then need only S3
read access (no git checkout, no DVC credentials or remote config in the image), KFP's importer
and cache see an immutable URI whose name *is* the hash, and re-runs on the same version reuse it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lungseg.errors import DataError
from lungseg.provenance import (
    CODE_COMMIT_TAG,
    IMAGE_ENV,
    IMAGE_TAG,
    KFP_RUN_ENV,
    KFP_RUN_TAG,
    PROCESSED_HASH_TAG,
    dvc_folder_hash,
    git_rev,
    run_context_tags,
)

#: ``<target>/<hash><STAGED_MARKER>`` is written last beside a staged copy: it means the copy is complete
STAGED_MARKER = ".json"
#: MLflow tag prefix of everything lineage records on runs and model versions
TAG = "lungseg.data."


@dataclass(frozen=True)
class DataVersion:
    """One version of a raw dataset. ``md5`` is DVC's folder hash (``….dir``)."""

    md5: str
    nfiles: int | None = None
    size: int | None = None
    path: str | None = None
    """The DVC-tracked path inside its repository (``data/raw/medseg``); None when unknown."""
    rev: str | None = None
    """The git revision as given (``HEAD``, a tag, a branch, a sha)."""
    commit: str | None = None
    """The commit ``rev`` resolved to."""
    repo: str | None = None
    """Where the git/DVC repository is (a URL, or ``.`` for the project itself)."""
    staged_uri: str | None = None
    versioned: bool = True
    """False for input whose origin is not a DVC version (a plain folder or ``s3://`` prefix)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The content address used for staged copies: the hash without DVC's ``.dir`` suffix."""
        return self.md5.removesuffix(".dir")

    def spec(self) -> str:
        return f"{self.path}@{self.rev}" if self.path else self.md5

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataVersion:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def tags(self) -> dict[str, str]:
        """MLflow tags (``lungseg.data.md5`` …): what a run or a model version records of its data."""
        return {TAG + k: str(v) for k, v in self.to_dict().items() if k != "extra"}


# ------------------------------------------------------------------------------------- hashing
def folder_hash(folder: str | Path) -> DataVersion:
    """DVC's hash of a local folder (what ``dvc add`` would write, :func:`lungseg.provenance.dvc_folder_hash`),
    as an unversioned DataVersion."""
    h = dvc_folder_hash(folder)
    return DataVersion(md5=h.md5, nfiles=h.nfiles, size=h.size, versioned=False)


def input_version(input_dir: str | Path, declared: dict[str, Any] | None = None) -> DataVersion:
    """What preprocessing records about its input: the folder's hash; with ``declared`` (the
    version a pipeline resolved and staged), its path/rev/commit too — after checking the folder
    really holds that version (a :class:`DataError` otherwise). Without ``declared``, a folder that
    is ``dvc add``-ed in a git checkout (``<folder>.dvc`` beside it, committed, and the folder
    unchanged since) is recorded as that path at the checked-out commit; anything else is
    ``versioned: false``."""
    actual = folder_hash(input_dir)
    if not declared:
        return _workspace_version(Path(input_dir), actual) or actual
    want = DataVersion.from_dict(declared)
    if want.md5 != actual.md5:
        raise DataError(
            input_dir,
            f"holds data with DVC hash {actual.md5}, but the run was started for "
            f"{want.spec()} = {want.md5}: the staged copy is not that version",
        )
    return DataVersion(**{**want.to_dict(), "nfiles": actual.nfiles, "size": actual.size})


def _workspace_version(folder: Path, actual: DataVersion) -> DataVersion | None:
    """``folder`` as a DVC version of the checked-out commit, when ``<folder>.dvc`` is committed,
    unmodified, and records exactly the folder's content."""
    import subprocess

    import yaml

    dvc_file = folder.parent / f"{folder.name}.dvc"
    if not dvc_file.is_file():
        return None
    try:
        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []
    except yaml.YAMLError as exc:
        raise DataError(dvc_file, f"not a valid .dvc file: {exc}") from exc
    if not outs or outs[0].get("md5") != actual.md5:
        return None  # the folder changed since `dvc add`: its content is not that version
    git = ["git", "-C", str(dvc_file.parent)]
    top = subprocess.run(
        [*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False, encoding="utf-8"
    )
    head = git_rev(dvc_file.parent)
    clean = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", dvc_file.name], check=False)
    tracked = subprocess.run([*git, "ls-files", "--error-unmatch", dvc_file.name], capture_output=True, check=False)
    if top.returncode or head is None or clean.returncode or tracked.returncode:
        return None  # not in git, or the .dvc file is not committed as it is
    path = folder.resolve().relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    return DataVersion(
        md5=actual.md5, nfiles=actual.nfiles, size=actual.size, path=path, rev="HEAD", commit=head, repo="."
    )


# ------------------------------------------------------------------------------------ resolving
def parse_data_spec(spec: str) -> tuple[str, str]:
    """``"path@rev"`` → ``(path, rev)``; without ``@`` the revision is ``HEAD``."""
    path, sep, rev = spec.rpartition("@")
    if not sep:
        path, rev = spec, "HEAD"
    path = path.strip().rstrip("/")
    if not path or not rev.strip():
        raise DataError(None, f"--data {spec!r}: expected PATH@REV (e.g. data/raw/medseg@HEAD)")
    return path, rev.strip()


def _filesystem(repo: str | Path, rev: str, *, remote: str | None = None, cache_dir: str | None = None):
    from dvc.api import DVCFileSystem
    from dvc.scm import RevError

    config = {"cache": {"dir": cache_dir}} if cache_dir else None
    try:
        return DVCFileSystem(str(repo), rev=rev, remote=remote, config=config)
    except RevError as exc:
        raise DataError(repo, f"revision {rev!r} does not exist ({exc})") from exc
    except Exception as exc:  # NotDvcRepoError, SCMError …: say which repository and why
        raise DataError(
            repo, f"cannot open the DVC repository at revision {rev!r}: {type(exc).__name__}: {exc}"
        ) from exc


def resolve(spec: str, repo: str | Path = ".") -> DataVersion:
    """The DVC version of ``spec`` (``path@rev``) in the git/DVC repository ``repo``."""
    path, rev = parse_data_spec(spec)
    repo = Path(repo)
    commit = git_rev(repo, rev)
    if commit is None:
        raise DataError(repo, f"revision {rev!r} does not exist (git rev-parse found no commit)")
    fs = _filesystem(repo, commit)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise DataError(path, f"not found at revision {rev} ({commit[:12]})") from None
    dvc_info = info.get("dvc_info") or {}
    md5 = dvc_info.get("md5") or info.get("md5")
    if not dvc_info or not md5:
        raise DataError(
            path,
            f"is not tracked by DVC at revision {rev} (run `dvc add {path}`, commit the "
            f"{path}.dvc file and `dvc push`)",
        )
    if info.get("type") != "directory":
        raise DataError(path, "is a single file: a dataset version must be a folder")
    meta = getattr(dvc_info.get("entry"), "meta", None)
    return DataVersion(
        md5=str(md5),
        nfiles=getattr(meta, "nfiles", None),
        size=info.get("size"),
        path=path,
        rev=rev,
        commit=commit,
        repo=".",
    )


# ------------------------------------------------------------------------------------- fetching
def fetch(
    version: DataVersion,
    dest: str | Path,
    repo: str | Path = ".",
    *,
    remote: str | None = None,
    cache_dir: str | None = None,
) -> Path:
    """The files of ``version`` into ``dest`` (replaced atomically), verified against its hash.

    ``cache_dir`` = a throw-away DVC cache: everything then comes from the remote."""
    from lungseg.io import replace_dir

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs = _filesystem(repo, version.commit or version.rev or "HEAD", remote=remote, cache_dir=cache_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    try:
        try:
            fs.get(version.path, str(tmp / "data"), recursive=True)
        except Exception as exc:  # missing in cache and remote, remote unreachable …
            raise DataError(
                version.path,
                f"cannot fetch {version.spec()} ({version.md5}) from the DVC cache or "
                f"remote: {type(exc).__name__}: {exc}",
            ) from exc
        got = folder_hash(tmp / "data")
        if got.md5 != version.md5:
            raise DataError(version.path, f"fetched data hashes to {got.md5}, not {version.md5}")
        # dest is a staging path of lungseg's own (content-addressed): an interrupted copy there is
        # replaced; no marker, the copy must hash to the version
        replace_dir(tmp / "data", dest, mark=False, overwrite=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def check_remote(version: DataVersion, repo: str | Path = ".", *, remote: str | None = None) -> DataVersion:
    """Fetch ``version`` from the DVC remote alone (empty temporary cache) and re-hash it;
    :class:`DataError` when it is missing there or hashes to another value."""
    with tempfile.TemporaryDirectory(prefix="lungseg-check-") as tmp:
        fetch(version, Path(tmp) / "data", repo, remote=remote, cache_dir=str(Path(tmp) / "cache"))
        return folder_hash(Path(tmp) / "data")


# -------------------------------------------------------------------------------------- staging
def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` → ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://"):
        raise DataError(None, f"{uri}: not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise DataError(None, f"{uri}: expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def stage(
    version: DataVersion, target: str | Path, repo: str | Path = ".", *, remote: str | None = None
) -> DataVersion:
    """An immutable copy of ``version`` at ``<target>/<hash>/`` (local folder or ``s3://``); returns the
    version with ``staged_uri`` set. A complete copy already there is reused, never rewritten."""
    target = str(target).rstrip("/")
    key = version.key
    if target.startswith("s3://"):
        return _stage_s3(version, target, key, repo, remote)
    from lungseg.io import atomic_write_json

    dest = Path(target) / key
    marker = Path(target) / f"{key}{STAGED_MARKER}"
    staged = DataVersion(**{**version.to_dict(), "staged_uri": str(dest)})
    if marker.is_file() and dest.is_dir() and json.loads(marker.read_text(encoding="utf-8")).get("md5") == version.md5:
        return staged
    fetch(version, dest, repo, remote=remote)  # replaces an incomplete copy of an interrupted run as a whole
    atomic_write_json(marker, staged.to_dict())
    return staged


def _stage_s3(version: DataVersion, target: str, key: str, repo, remote) -> DataVersion:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(target)
    base = f"{prefix}/{key}" if prefix else key
    uri = f"s3://{bucket}/{base}"
    staged = DataVersion(**{**version.to_dict(), "staged_uri": uri})
    s3 = boto3.client("s3")
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{base}{STAGED_MARKER}")["Body"].read()
        if json.loads(body).get("md5") == version.md5:
            return staged
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise DataError(None, f"{uri}: cannot read the staging area: {exc}") from exc
    except BotoCoreError as exc:
        raise DataError(None, f"{uri}: cannot reach S3: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="lungseg-stage-") as tmp:
        data = fetch(version, Path(tmp) / "copy", repo, remote=remote)
        try:
            for file in sorted(p for p in data.rglob("*") if p.is_file()):
                s3.upload_file(str(file), bucket, f"{base}/{file.relative_to(data).as_posix()}")
            s3.put_object(
                Bucket=bucket,
                Key=f"{base}{STAGED_MARKER}",  # last: the copy is complete
                Body=(json.dumps(staged.to_dict(), indent=2, sort_keys=True) + "\n").encode(),
            )
        except (BotoCoreError, ClientError) as exc:
            raise DataError(
                None,
                f"{uri}: staging failed part-way ({exc}); the copy is not marked complete "
                "and will be replaced by the next run",
            ) from exc
    return staged


# ------------------------------------------------------------------------------- lineage records
# The run/model-version tags (besides ``lungseg.data.*``) that a lineage record reads, the environment
# variables a pipeline hands its image and run id through, and run_context_tags are defined with the
# rest of a run's identity in lungseg.provenance (imported above, importable from here).


def source_tags(meta: dict[str, Any]) -> dict[str, str]:
    """``lungseg.data.*`` tags from a processed set's ``meta.json`` (its ``source`` record)."""
    source = meta.get("source")
    if not source:
        return {TAG + "versioned": "unknown (processed before lineage was recorded)"}
    return DataVersion.from_dict(source).tags()


@dataclass
class Lineage:
    """Everything recorded about how a model (or one training run) was made."""

    run_id: str
    model_name: str | None = None
    model_version: str | None = None
    data: DataVersion | None = None
    processed_data_hash: str | None = None
    code_commit: str | None = None
    image: str | None = None
    kfp_run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    evaluation: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"] = self.data.to_dict() if self.data else None
        return out

    def describe(self) -> str:
        d = self.data
        what = (
            f"{self.model_name} v{self.model_version} (run {self.run_id})" if self.model_name else f"run {self.run_id}"
        )
        lines = [what]
        if d is None:
            lines.append("  data:      not recorded")
        else:
            where = f"{d.path}@{d.rev} (commit {d.commit})" if d.path else "unversioned input"
            lines.append(f"  data:      {where}, DVC hash {d.md5}" + (f", {d.nfiles} files" if d.nfiles else ""))
            if d.staged_uri:
                lines.append(f"  staged:    {d.staged_uri}")
        lines += [
            f"  processed: {self.processed_data_hash or 'not recorded'}",
            f"  code:      commit {self.code_commit or 'not recorded'}",
            f"  image:     {self.image or 'none (not a container run)'}",
        ]
        if self.kfp_run_id:
            lines.append(f"  KFP run:   {self.kfp_run_id}")
        if self.evaluation:
            e = self.evaluation
            lines.append(
                f"  promoted on: {e.get('metric')} = {e.get('metric_value')} ({e.get('decision')}: "
                f"{e.get('decision_reason')}), evaluation set {e.get('eval_fingerprint')}"
            )
        if self.params:
            lines.append("  params:    " + ", ".join(f"{k}={v}" for k, v in sorted(self.params.items())))
        return "\n".join(lines)


def _parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` → (name, alias, None); ``models:/name/3`` → (name, None, "3")."""
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise DataError(None, f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION (or a run id)")
    return name, None, version


def describe(target: str, tracking_uri: str) -> Lineage:
    """The lineage of ``target``: a registry URI (``models:/name@alias``, ``models:/name/3``) or a run id."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = version = None
    version_tags: dict[str, str] = {}
    try:
        if target.startswith("models:/"):
            name, alias, number = _parse_model_uri(target)
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
            version, run_id, version_tags = str(mv.version), mv.run_id, dict(mv.tags or {})
        else:
            run_id = target
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise DataError(None, f"{target}: not found in the MLflow store at {tracking_uri} ({exc.message})") from exc
    # the version's copy wins: it is what the registry promoted, and the register step adds the KFP run
    copied = (CODE_COMMIT_TAG, PROCESSED_HASH_TAG, IMAGE_TAG, KFP_RUN_TAG)
    tags = {**run.data.tags, **{k: v for k, v in version_tags.items() if k.startswith(TAG) or k in copied}}
    data_fields = {k[len(TAG) :]: v for k, v in tags.items() if k.startswith(TAG)}
    data = None
    if data_fields.get("md5"):
        for key in ("nfiles", "size"):
            if data_fields.get(key, "").isdigit():
                data_fields[key] = int(data_fields[key])
        data_fields["versioned"] = data_fields.get("versioned") == "True"
        data = DataVersion.from_dict(data_fields)
    prefix = "lungseg."
    evaluation = {
        k[len(prefix) :]: v
        for k, v in version_tags.items()
        if k.startswith(prefix) and not k.startswith(TAG) and k not in copied
    }
    return Lineage(
        run_id=run_id,
        model_name=name,
        model_version=version,
        data=data,
        processed_data_hash=tags.get(PROCESSED_HASH_TAG),
        code_commit=tags.get(CODE_COMMIT_TAG),
        image=tags.get(IMAGE_TAG),
        kfp_run_id=tags.get(KFP_RUN_TAG),
        params=dict(run.data.params),
        evaluation=evaluation,
    )


def check(lineage: Lineage, repo: str | Path = ".", *, remote: str | None = None) -> DataVersion:
    """``lungseg lineage --check``: the data behind the recorded hash can still be fetched from the
    DVC remote and hashes to the same value (:func:`check_remote`); a :class:`DataError` otherwise."""
    d = lineage.data
    if d is None:
        raise DataError(None, f"run {lineage.run_id}: no data version recorded: nothing to check")
    if not d.versioned or not d.path or not d.commit:
        raise DataError(
            None,
            f"run {lineage.run_id}: its data ({d.md5}) was not a DVC version (a plain folder or "
            "s3:// prefix): it cannot be fetched back from a DVC remote",
        )
    return check_remote(d, repo, remote=remote)


__all__ = [
    "CODE_COMMIT_TAG",
    "IMAGE_ENV",
    "IMAGE_TAG",
    "KFP_RUN_ENV",
    "KFP_RUN_TAG",
    "PROCESSED_HASH_TAG",
    "STAGED_MARKER",
    "TAG",
    "DataVersion",
    "Lineage",
    "check",
    "check_remote",
    "describe",
    "fetch",
    "folder_hash",
    "input_version",
    "parse_data_spec",
    "resolve",
    "run_context_tags",
    "source_tags",
    "split_s3",
    "stage",
]
