"""lungseg.lineage on a real git + DVC repository (real sample slices, a local DVC remote)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from lungseg import lineage as L
from lungseg.errors import DataError

GIT = ["git", "-c", "user.email=test@lungseg", "-c", "user.name=lungseg-test"]


def sh(*cmd, cwd):
    subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, text=True, encoding="utf-8")


@pytest.fixture(scope="module")
def _dvc_repo_built(tmp_path_factory, sample_dir):
    """:func:`dvc_repo` built once for the module (three ``dvc`` commands: ~9 s on 2 busy cores); its
    remote is named relative to the repository (``../remote``, which DVC keeps relative in
    .dvc/config), so every copy has a remote of its own beside it."""
    repo = tmp_path_factory.mktemp("dvc-repo") / "repo"
    (repo / "data" / "raw" / "medseg" / "tr_im").mkdir(parents=True)
    for src in sorted((sample_dir / "tr_im").glob("*.png"))[:4]:
        shutil.copy(src, repo / "data" / "raw" / "medseg" / "tr_im" / src.name)
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "remote", "add", "-d", "store", "../remote", cwd=repo)
    sh("dvc", "add", "-q", "data/raw/medseg", cwd=repo)
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "v1", cwd=repo)
    sh(*GIT, "tag", "v1", cwd=repo)
    return repo


@pytest.fixture
def dvc_repo(tmp_path, _dvc_repo_built):
    """A git + DVC repo holding 4 real MedSeg slices under data/raw/medseg (dvc add-ed, committed),
    with a local-folder DVC remote (``tmp_path / "remote"``) that has not been pushed to yet: a copy of
    :func:`_dvc_repo_built` of the test's own, which it may change."""
    repo = tmp_path / "repo"
    shutil.copytree(_dvc_repo_built, repo, symlinks=True)
    assert not (_dvc_repo_built.parent / "remote").exists()  # no test pushed into the original's remote
    return repo


def dvc_file_md5(repo, path="data/raw/medseg"):
    import yaml

    return yaml.safe_load((repo / f"{path}.dvc").read_text(encoding="utf-8"))["outs"][0]["md5"]


def test_parse_data_spec():
    assert L.parse_data_spec("data/raw/medseg@v1") == ("data/raw/medseg", "v1")
    assert L.parse_data_spec("data/raw/medseg/") == ("data/raw/medseg", "HEAD")
    with pytest.raises(DataError, match="PATH@REV"):
        L.parse_data_spec("@v1")


@pytest.mark.slow
def test_resolve_gives_dvcs_own_hash(dvc_repo):
    v = L.resolve("data/raw/medseg@v1", dvc_repo)
    assert v.md5 == dvc_file_md5(dvc_repo) and v.md5.endswith(".dir")
    assert v.nfiles == 4 and v.path == "data/raw/medseg" and v.rev == "v1" and len(v.commit) == 40
    assert v.versioned
    # the workspace folder hashes to the same content address (what preprocess records)
    assert L.folder_hash(dvc_repo / "data" / "raw" / "medseg").md5 == v.md5


@pytest.mark.slow
def test_resolve_bad_input(dvc_repo):
    (dvc_repo / "notes").mkdir()
    (dvc_repo / "notes" / "a.txt").write_text("git only\n", encoding="utf-8")
    sh(*GIT, "add", "notes", cwd=dvc_repo)
    sh(*GIT, "commit", "-qm", "notes", cwd=dvc_repo)
    with pytest.raises(DataError, match="not tracked by DVC"):
        L.resolve("notes@HEAD", dvc_repo)
    with pytest.raises(DataError, match="revision 'no-such-rev' does not exist"):
        L.resolve("data/raw/medseg@no-such-rev", dvc_repo)
    with pytest.raises(DataError, match="not found at revision"):
        L.resolve("data/raw/other@HEAD", dvc_repo)


@pytest.mark.slow
def test_a_changed_file_is_a_new_version_and_the_old_one_stays(dvc_repo, sample_dir):
    old = L.resolve("data/raw/medseg@v1", dvc_repo)
    victim = sorted((dvc_repo / "data" / "raw" / "medseg" / "tr_im").glob("*.png"))[0]
    replacement = sorted((sample_dir / "tr_im").glob("*.png"))[5]
    shutil.copy(replacement, victim)
    sh("dvc", "add", "-q", "data/raw/medseg", cwd=dvc_repo)
    sh(*GIT, "commit", "-qam", "v2", cwd=dvc_repo)
    new = L.resolve("data/raw/medseg@HEAD", dvc_repo)
    assert new.md5 != old.md5 and new.md5 == dvc_file_md5(dvc_repo)
    assert L.resolve("data/raw/medseg@v1", dvc_repo).md5 == old.md5


@pytest.mark.slow
def test_check_remote_needs_the_pushed_data(dvc_repo, tmp_path):
    v = L.resolve("data/raw/medseg@v1", dvc_repo)
    with pytest.raises(DataError, match="cannot fetch"):  # only in the local cache: the remote lacks it
        L.check_remote(v, dvc_repo)
    sh("dvc", "push", "-q", cwd=dvc_repo)
    assert L.check_remote(v, dvc_repo).md5 == v.md5
    # a damaged object on the remote is found, whatever the local cache holds
    obj = next(p for p in (tmp_path / "remote").rglob("*") if p.is_file() and not p.name.endswith(".dir"))
    obj.chmod(0o644)
    obj.write_bytes(b"not the image any more")
    with pytest.raises(DataError):
        L.check_remote(v, dvc_repo)


@pytest.mark.slow
def test_stage_local_is_content_addressed_complete_and_reused(dvc_repo, tmp_path):
    v = L.resolve("data/raw/medseg@v1", dvc_repo)
    target = tmp_path / "staged"
    staged = L.stage(v, target, dvc_repo)
    dest = target / v.key
    assert staged.staged_uri == str(dest)
    assert L.folder_hash(dest).md5 == v.md5  # the marker sits beside the copy, not in it
    marker = json.loads((target / f"{v.key}.json").read_text(encoding="utf-8"))
    assert marker["md5"] == v.md5 and marker["path"] == "data/raw/medseg"
    stamp = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert L.stage(v, target, dvc_repo).staged_uri == str(dest)
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == stamp  # reused, not rewritten
    # an interrupted copy (no marker) is replaced as a whole
    (target / f"{v.key}.json").unlink()
    (dest / "half-written.tmp").write_text("x", encoding="utf-8")
    L.stage(v, target, dvc_repo)
    assert not (dest / "half-written.tmp").exists() and L.folder_hash(dest).md5 == v.md5


@pytest.mark.slow
def test_input_version_checks_the_declared_version(dvc_repo, tmp_path):
    v = L.resolve("data/raw/medseg@v1", dvc_repo)
    folder = dvc_repo / "data" / "raw" / "medseg"
    got = L.input_version(folder, v.to_dict())
    assert got.md5 == v.md5 and got.rev == "v1" and got.versioned
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    plain = L.input_version(other)  # same content, but no DVC version says so
    assert plain.md5 == v.md5 and not plain.versioned and plain.path is None
    next(other.rglob("*.png")).write_bytes(b"changed")
    with pytest.raises(DataError, match="not that version"):
        L.input_version(other, v.to_dict())


def test_tags_round_trip():
    v = L.DataVersion(md5="abc.dir", nfiles=3, size=10, path="data/raw/x", rev="v1", commit="f" * 40, repo=".")
    tags = v.tags()
    assert tags["lungseg.data.md5"] == "abc.dir" and tags["lungseg.data.versioned"] == "True"
    assert L.DataVersion.from_dict(v.to_dict()) == v


@pytest.mark.slow
def test_input_version_of_a_committed_dvc_add(dvc_repo):
    folder = dvc_repo / "data" / "raw" / "medseg"
    got = L.input_version(folder)
    assert got.versioned and got.path == "data/raw/medseg" and got.rev == "HEAD"
    assert got.md5 == dvc_file_md5(dvc_repo) and got.commit == L.resolve("data/raw/medseg@v1", dvc_repo).commit
    next(folder.rglob("*.png")).write_bytes(b"edited after dvc add")
    assert not L.input_version(folder).versioned  # the workspace no longer holds the committed version


@pytest.mark.slow
def test_describe_reads_a_registered_versions_lineage(tmp_path, dvc_repo):
    """The reading side on a real MLflow store: the tags training and the registry write."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    v = L.resolve("data/raw/medseg@v1", dvc_repo)
    exp = client.create_experiment("lineage")
    run = client.create_run(exp, tags={**v.tags(), "git_commit": "c" * 40, "data_hash": "processed-md5"})
    client.log_param(run.info.run_id, "train.model", "lgnet")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("lungseg-lgnet")
    mv = client.create_model_version(
        "lungseg-lgnet",
        f"runs:/{run.info.run_id}/model",
        run.info.run_id,
        tags={
            "lungseg.metric": "dice_mean",
            "lungseg.metric_value": "0.61",
            "lungseg.decision": "champion",
            **v.tags(),
        },
    )
    client.set_registered_model_alias("lungseg-lgnet", "champion", mv.version)

    lin = L.describe("models:/lungseg-lgnet@champion", uri)
    assert lin.run_id == run.info.run_id and lin.model_version == str(mv.version)
    assert lin.data == v and lin.code_commit == "c" * 40 and lin.processed_data_hash == "processed-md5"
    assert lin.params == {"train.model": "lgnet"} and lin.evaluation["metric_value"] == "0.61"
    assert "data/raw/medseg@v1" in lin.describe() and v.md5 in lin.describe()
    assert L.describe(run.info.run_id, uri).data == v
    with pytest.raises(DataError, match="not found"):
        L.describe("models:/lungseg-lgnet@nope", uri)
    with pytest.raises(DataError, match="cannot fetch"):  # never pushed: the remote cannot give it back
        L.check(lin, dvc_repo)
    sh("dvc", "push", "-q", cwd=dvc_repo)
    assert L.check(lin, dvc_repo).md5 == v.md5


# ------------------------------------------------------------------------ data versioned by git itself
@pytest.fixture
def git_repo(tmp_path, sample_dir):
    """A plain git repository (no DVC) holding 4 real MedSeg slices under data/sample/medseg, committed,
    then a later commit that does not touch them — as the project versions its bundled sample."""
    repo = tmp_path / "repo"
    (repo / "data" / "sample" / "medseg" / "tr_im").mkdir(parents=True)
    for src in sorted((sample_dir / "tr_im").glob("*.png"))[:4]:
        shutil.copy(src, repo / "data" / "sample" / "medseg" / "tr_im" / src.name)
    sh("git", "init", "-q", cwd=repo)
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "sample", cwd=repo)
    (repo / "README.md").write_text("later\n", encoding="utf-8")
    sh(*GIT, "add", "README.md", cwd=repo)
    sh(*GIT, "commit", "-qm", "later", cwd=repo)
    return repo


def _rev(repo, rev):
    out = subprocess.run(["git", "rev-parse", rev], cwd=repo, capture_output=True, text=True, encoding="utf-8")
    return out.stdout.strip()


@pytest.mark.slow
def test_a_folder_committed_to_git_is_a_version_checked_on_a_fresh_clone(git_repo, tmp_path):
    """`--check` exited 2 for the README's champion: data/sample is versioned by git, not DVC. It is a
    version too (path + commit + content hash), checked from git on a clone, and a changed file is not it."""
    folder = git_repo / "data" / "sample" / "medseg"
    got = L.input_version(folder)
    assert got.versioned and got.in_git and got.tracked_by == "git" and got.path == "data/sample/medseg"
    assert got.commit == _rev(git_repo, "HEAD~1")  # the last commit that changed the folder, not HEAD
    assert got.md5 == L.folder_hash(folder).md5 and got.nfiles == 4
    assert "data/sample/medseg at commit" in got.where() and "tracked by git" in got.where()
    assert L.DataVersion.from_dict(got.to_dict()) == got and got.tags()["lungseg.data.tracked_by"] == "git"

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(git_repo), str(clone), cwd=tmp_path)
    record = L.Lineage(run_id="r1", data=got)
    assert L.check(record, clone) == got  # from the commit, not from a workspace or a DVC remote
    # a file changed in the workspace does not change the committed version, but is not that version
    victim = sorted(folder.rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    dirty = L.input_version(folder)
    assert not dirty.versioned and dirty.md5 != got.md5
    with pytest.raises(DataError, match="was not a version.*cannot be fetched back"):
        L.check(L.Lineage(run_id="r2", data=dirty), clone)
    # committed, it is a new version at a new commit; the old record still checks out at its own commit
    sh(*GIT, "commit", "-qam", "one sample file changed", cwd=git_repo)
    new = L.input_version(folder)
    assert new.in_git and new.commit == _rev(git_repo, "HEAD") and new.md5 == dirty.md5
    assert L.check(record, git_repo) == got
    # a record whose hash is not what its commit holds fails, naming both hashes
    forged = L.DataVersion(**{**new.to_dict(), "md5": got.md5})
    with pytest.raises(DataError, match=f"hashes to {new.md5}, not to the recorded {got.md5}"):
        L.check(L.Lineage(run_id="r3", data=forged), git_repo)
    with pytest.raises(DataError, match="is not in this git repository"):  # the clone predates that commit
        L.check(L.Lineage(run_id="r3", data=new), clone)


@pytest.mark.slow
def test_untracked_or_ignored_files_make_a_git_folder_unversioned(git_repo):
    folder = git_repo / "data" / "sample" / "medseg"
    (folder / "extra.txt").write_text("not committed\n", encoding="utf-8")
    assert not L.input_version(folder).versioned
    (git_repo / ".gitignore").write_text("extra.txt\n", encoding="utf-8")  # ignored: still not in the commit
    assert not L.input_version(folder).versioned
    (folder / "extra.txt").unlink()
    assert L.input_version(folder).in_git
    outside = git_repo.parent / "plain"
    shutil.copytree(folder, outside)
    assert not L.input_version(outside).versioned  # not in any git repository


def _decision(path, **fields):
    record = {
        "model_name": "lungseg-lgnet",
        "version": "1",
        "decision": "champion",
        "run_id": "run-a",
        "tracking_uri": "sqlite:///mlflow.db",
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_a_decision_record_is_valid_only_in_the_store_it_names(tmp_path):
    """With MLFLOW_TRACKING_URI at another store the decision record still said "champion": a record is
    read only in the store it was made in (repository-relative: the record's own repository's)."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    path = _decision(repo / "reports" / "medseg-registration.json")
    own = f"sqlite:///{repo.resolve()}/mlflow.db"
    target, record = L.decision_target(path, own)
    assert target == "models:/lungseg-lgnet/1" and record["decision"] == "champion"
    other = f"sqlite:///{tmp_path.resolve()}/other.db"
    with pytest.raises(DataError, match=r"a decision made in the tracking store .*repo/mlflow.db, not in the store in"):
        L.decision_target(path, other)
    with pytest.raises(DataError, match="not valid there"):
        L.decision_target(path, "http://127.0.0.1:5000")
    server = _decision(tmp_path / "server.json", tracking_uri="http://u:pw@127.0.0.1:5000")
    assert L.decision_target(server, "http://u:pw@127.0.0.1:5000")[0] == "models:/lungseg-lgnet/1"
    assert L.decision_target(server, "http://u:pw@127.0.0.1:5000/")[0] == "models:/lungseg-lgnet/1"  # the same server
    with pytest.raises(DataError, match="not a decision record.*tracking_uri"):
        L.decision_target(_decision(tmp_path / "old.json", tracking_uri=None), own)
    # the store at that address was wiped and rebuilt: its version 1 is another run
    L.check_decision(L.Lineage(run_id="run-a"), record, path, own)
    with pytest.raises(DataError, match=r"is run run-b, not the record's run run-a.*dvc repro --force"):
        L.check_decision(L.Lineage(run_id="run-b"), record, path, own)


def test_a_git_archive_is_extracted_safely_without_tarfiles_data_filter(tmp_path, monkeypatch):
    """Debian 12's python3 (3.11.2) has no extractall(filter="data"): a fresh clone's `make repro` under
    `env -i` stopped with a TypeError in preprocess. The members are checked by hand there."""
    import io
    import tarfile

    from lungseg.lineage import _extract_files

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("data/a.png", "../outside.png"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    buf.seek(0)
    dest = tmp_path / "x"
    dest.mkdir()
    with tarfile.open(fileobj=buf) as tar:
        _extract_files(tar, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["data", "data/a.png"]
    assert not (tmp_path / "outside.png").exists()
