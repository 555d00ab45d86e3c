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
  ``source``): the folder's hash, plus the path/rev/commit when a pipeline handed it a DVC version
  or the folder is ``dvc add``-ed, or the path and commit when git itself versions it (``tracked_by:
  git``, :func:`git_version`: the bundled sample), ``versioned: false`` for anything else (a plain
  ``s3://`` prefix, a folder of unknown origin, uncommitted changes).

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
#: ``DataVersion.tracked_by`` of a folder versioned by git itself
GIT = "git"


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
    """False for input whose origin is not a version (a plain folder or ``s3://`` prefix, uncommitted changes)."""
    tracked_by: str | None = None
    """``"git"`` for a folder versioned by git itself (``rev`` is then the commit); DVC otherwise (None:
    records made before git versions existed)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_git(self) -> bool:
        """A folder committed to git (not ``dvc add``-ed): fetched back with git, not from a DVC remote."""
        return self.versioned and self.tracked_by == GIT

    @property
    def key(self) -> str:
        """The content address used for staged copies: the hash without DVC's ``.dir`` suffix."""
        return self.md5.removesuffix(".dir")

    def spec(self) -> str:
        return f"{self.path}@{self.rev}" if self.path else self.md5

    def where(self) -> str:
        """How the version is named in a lineage record (one line)."""
        if not self.path:
            return "unversioned input"
        if self.in_git:
            return f"{self.path} at commit {self.commit} (tracked by git)"
        return f"{self.path}@{self.rev} (commit {self.commit})"

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
    unchanged since) is recorded as that path at the checked-out commit; a folder committed to git
    itself (every file tracked, none changed, its committed tree hashing to the folder's content; the
    bundled ``data/sample``) as that path at the last commit that changed it (:func:`git_version`);
    anything else is ``versioned: false``."""
    actual = folder_hash(input_dir)
    if not declared:
        return _workspace_version(Path(input_dir), actual) or _git_workspace_version(Path(input_dir), actual) or actual
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


def _git_out(folder: Path, *args: str) -> str | None:
    """``git -C folder ARGS`` stdout, or None when git fails (not a checkout, no such revision)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False, encoding="utf-8"
        )
    except OSError:  # no git on this machine
        return None
    return out.stdout if out.returncode == 0 else None


def _git_workspace_version(folder: Path, actual: DataVersion) -> DataVersion | None:
    """``folder`` as a git version: every file in it tracked and unchanged (nothing untracked or ignored
    either), recorded at the last commit that changed it, whose tree must hash to ``actual``."""
    top = _git_out(folder, "rev-parse", "--show-toplevel")
    if top is None or _git_out(folder, "ls-files", "--", ".") in (None, ""):
        return None
    status = _git_out(folder, "status", "--porcelain", "--ignored", "--untracked-files=all", "--", ".")
    if status is None or status.strip():
        return None  # uncommitted, untracked or ignored files: the folder is not what a commit holds
    commit = (_git_out(folder, "log", "-1", "--format=%H", "HEAD", "--", ".") or "").strip()
    if len(commit) != 40:
        return None
    path = folder.resolve().relative_to(Path(top.strip()).resolve()).as_posix()
    try:
        committed = git_version(top.strip(), path, commit)
    except DataError:
        return None
    if committed.md5 != actual.md5:
        return None  # a filter (line endings, LFS) makes the checkout differ from the commit's content
    return committed


def _extract_files(tar, dest: Path) -> None:
    """The regular files and folders of ``tar`` (``git archive``'s) into ``dest``, none outside it. Python's
    ``filter="data"`` does this from 3.11.4 (Debian 12's python3 is 3.11.2): members are checked here."""
    import tarfile

    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    members = []
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if not (m.isfile() or m.isdir()) or (target != root and root not in target.parents):
            continue  # git archive of a data folder: links or paths outside are not data files
        members.append(m)
    tar.extractall(dest, members=members)  # noqa: S202 - members checked above


def git_version(repo: str | Path, path: str, commit: str) -> DataVersion:
    """The folder ``path`` as committed at ``commit`` in the git repository ``repo``: its files taken from
    git (``git archive``, never the working tree) and hashed as DVC hashes a folder. A
    :class:`DataError` when the commit is not in ``repo`` (another repository, a shallow clone) or
    holds no such folder."""
    import io
    import subprocess
    import tarfile

    repo = Path(repo)
    if _git_out(repo, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        raise DataError(repo, f"commit {commit} is not in this git repository (another repository or a shallow clone?)")
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", commit, "--", path], capture_output=True, check=False
        )
    except OSError as exc:
        raise DataError(repo, f"cannot run git: {exc}") from exc
    if out.returncode:
        first = out.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise DataError(path, f"not found at commit {commit} ({first[0] if first else 'git archive failed'})")
    with tempfile.TemporaryDirectory(prefix="lungseg-git-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
            _extract_files(tar, Path(tmp))
        if not (Path(tmp) / path).is_dir():
            raise DataError(path, f"is not a folder at commit {commit}: a dataset version must be a folder")
        got = folder_hash(Path(tmp) / path)
    return DataVersion(
        md5=got.md5, nfiles=got.nfiles, size=got.size, path=path, rev=commit, commit=commit, repo=".", tracked_by=GIT
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
            lines.append(f"  data:      {d.where()}, DVC hash {d.md5}" + (f", {d.nfiles} files" if d.nfiles else ""))
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
            if e.get("decision_pending"):
                lines.append(f"  pending:   {e['decision_pending']}")
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
    if name and version:  # a decision an interrupted `lungseg register` left pending (lungseg/registry/decision.py)
        evaluation.update(_pending_decision(client, name, version))
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


def _pending_decision(client, name: str, version: str) -> dict[str, str]:
    """``{"decision_pending": line}`` when the registered model holds a decision of ``version`` that an
    interrupted ``lungseg register`` left pending (its tag ``lungseg.pending_decision``), else ``{}``."""
    raw = (client.get_registered_model(name).tags or {}).get("lungseg.pending_decision")
    if not raw:
        return {}
    try:
        record = json.loads(raw)
        if str(record["move"]["version"]) != version:
            return {}
        what = f"{record['describe']} (decided {record.get('decided_at')})"
    except (ValueError, TypeError, KeyError):
        what = "a record lungseg cannot read"
    return {"decision_pending": f"{what}; a `lungseg register` was interrupted: the next one finishes it"}


def decision_target(record: str | Path, tracking_uri: str) -> tuple[str, dict[str, Any]]:
    """The registry URI (``models:/NAME/VERSION``) a decision record of ``lungseg register --output``
    names, and the record — only when the record was made in the store in use, ``tracking_uri``: a
    decision is valid for the store it names, never for another (a :class:`DataError` then, naming
    both stores and the fix)."""
    from lungseg.io import read_json_object
    from lungseg.tracking import redact_uri, resolve_recorded_uri, same_store

    path = Path(record)
    data = read_json_object(path, "not found (a decision record is what `lungseg register --output` writes)")
    missing = [k for k in ("model_name", "version", "tracking_uri") if not data.get(k)]
    if missing:
        raise DataError(path, f"not a decision record of `lungseg register`: no {', '.join(missing)}")
    made_in = resolve_recorded_uri(str(data["tracking_uri"]), path)
    if not same_store(made_in, tracking_uri):  # one comparison with register/evaluate's (tracking)
        raise DataError(
            path,
            f"a decision made in the tracking store {redact_uri(made_in)}, not in the store in use "
            f"({redact_uri(tracking_uri)}): it is not valid there — `dvc repro` trains, evaluates and "
            "registers into the store in use (or set MLFLOW_TRACKING_URI to the record's store)",
        )
    return f"models:/{data['model_name']}/{data['version']}", data


def check_decision(lineage: Lineage, record: dict[str, Any], path: str | Path, tracking_uri: str) -> None:
    """The version a decision record names still is that decision in the store: its run is the record's
    run. A :class:`DataError` otherwise (the store was wiped or rebuilt at the same address since)."""
    run_id = record.get("run_id")
    if run_id and run_id != lineage.run_id:
        raise DataError(
            path,
            f"{record['model_name']} v{record['version']} in {tracking_uri} is run {lineage.run_id}, not the "
            f"record's run {run_id}: the store was wiped or rebuilt since the decision — `dvc repro --force` "
            "trains, evaluates and registers into it again",
        )


def check(lineage: Lineage, repo: str | Path = ".", *, remote: str | None = None) -> DataVersion:
    """``lungseg lineage --check``: the data behind the recorded hash can still be got back and hashes to
    the same value — a DVC version fetched from the DVC remote (:func:`check_remote`), a folder tracked
    by git taken from the recorded commit of ``repo`` (:func:`git_version`); a :class:`DataError` otherwise."""
    d = lineage.data
    if d is None:
        raise DataError(None, f"run {lineage.run_id}: no data version recorded: nothing to check")
    if not d.versioned or not d.path or not d.commit:
        raise DataError(
            None,
            f"run {lineage.run_id}: its data ({d.md5}) was not a version (a plain folder, an s3:// prefix, "
            "or a git-tracked folder with uncommitted changes): it cannot be fetched back",
        )
    if not d.in_git:
        return check_remote(d, repo, remote=remote)
    got = git_version(repo, d.path, d.commit)
    if got.md5 != d.md5:
        raise DataError(
            d.path, f"at commit {d.commit} hashes to {got.md5}, not to the recorded {d.md5}: not the data of this model"
        )
    return got


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
    "check_decision",
    "check_remote",
    "decision_target",
    "describe",
    "fetch",
    "folder_hash",
    "git_version",
    "input_version",
    "parse_data_spec",
    "resolve",
    "run_context_tags",
    "source_tags",
    "split_s3",
    "stage",
]
